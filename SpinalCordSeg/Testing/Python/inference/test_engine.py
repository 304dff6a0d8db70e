"""The inference engine on real nnU-Net models (random weights) and the shared scans."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine, select_device
from SpinalCordSegLib.errors import DeviceUnavailableError, InputImageError, ModelFolderError
from SpinalCordSegLib.imaging.grid import same_grid
from SpinalCordSegLib.imaging.image_io import orientation_of, read_scan, reorient
from SpinalCordSegLib.models.model_folder import ModelFolder
from SpinalCordSegLib.models.synthetic_model import make_synthetic_model

#: The voxel orders of the shared scans t2, t1w and t2s (see shared/data/README.md).
ORIENTATIONS = ("PSR", "RAS", "LAS")


@pytest.fixture(scope="module")
def region_engine(tiny_region_model):
    return SegmentationEngine(tiny_region_model, InferenceOptions(device="cpu", crop=False))


@pytest.fixture(scope="module")
def oriented_model(tmp_path_factory):
    """A region model that records its orientation (SCT's RPI, LAS in SimpleITK letters)."""
    return make_synthetic_model(tmp_path_factory.mktemp("oriented"), region_based=True, image_orientation="LAS",
                                seed=3)


def test_structures_follow_dataset_json(tiny_model, tiny_region_model):
    assert ModelFolder.open(tiny_model).structures == ["sc"]
    assert ModelFolder.open(tiny_region_model).structures == ["sc", "lesion"]
    assert ModelFolder.open(tiny_region_model.parent.parent).path == tiny_region_model  # found below a root


@pytest.mark.slow
def test_same_probabilities_as_nnunet_own_command(tiny_region_model, sample_data, tmp_path):
    """nnU-Net's command and the engine agree on a scan (no reorientation involved)."""
    command = shutil.which("nnUNetv2_predict_from_modelfolder", path=str(Path(sys.executable).parent))
    assert command, "nnU-Net's command line is not installed next to this Python"
    scan_path = sample_data.scan
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(scan_path, inputs / "case_0000.nii.gz")
    subprocess.run(
        [command, "-i", str(inputs), "-o", str(outputs), "-m", str(tiny_region_model), "-f", "0",
         "--save_probabilities", "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"],
        check=True, capture_output=True,
    )
    reference = np.load(outputs / "case.npz")["probabilities"]
    reference_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs / "case.nii.gz")))

    engine = SegmentationEngine(tiny_region_model, InferenceOptions(device="cpu", crop=False))
    prediction = engine.predict(read_scan(scan_path))
    ours = np.stack([sitk.GetArrayFromImage(prediction.soft_maps[s]) for s in ("sc", "lesion")])
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-4
    # nnU-Net's region label map: 1 where p(sc) > 0.5, then 2 where p(lesion) > 0.5.
    labels = np.where(ours[0] > 0.5, 1, 0)
    labels[ours[1] > 0.5] = 2
    decided = np.all(np.abs(ours - 0.5) > 1e-4, axis=0)  # float noise cannot flip these voxels
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(labels[decided], reference_labels[decided])


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_soft_maps_land_on_the_input_grid(oriented_model, sample_data, tmp_path, orientation):
    """The bundled sample stored in each voxel order of the shared scans (PSR as it is, RAS, LAS)."""
    path = tmp_path / f"sample_{orientation}.nii.gz"
    sitk.WriteImage(reorient(read_scan(sample_data.scan), orientation), str(path))
    scan = read_scan(path)
    assert orientation_of(scan) == orientation
    engine = SegmentationEngine(oriented_model, InferenceOptions(device="cpu", crop=False))
    prediction = engine.predict(scan)
    for soft in prediction.soft_maps.values():
        assert soft.GetSize() == scan.GetSize()
        assert soft.GetSpacing() == scan.GetSpacing()
        assert soft.GetOrigin() == scan.GetOrigin()
        assert soft.GetDirection() == scan.GetDirection()
        values = sitk.GetArrayViewFromImage(soft)
        assert values.dtype == np.float32 and 0.0 <= values.min() and values.max() <= 1.0
    # The same scan handed over already in the model's orientation gives the same maps, voxel for voxel.
    already = reorient(scan, "LAS")
    direct = engine.predict(already)
    for name, soft in prediction.soft_maps.items():
        back = sitk.GetArrayFromImage(reorient(soft, "LAS"))
        np.testing.assert_allclose(back, sitk.GetArrayFromImage(direct.soft_maps[name]), atol=1e-6)


def test_model_without_orientation_is_not_reoriented(tiny_region_model, sample_data):
    """Without a recorded orientation the engine feeds the array as nnU-Net would."""
    scan = read_scan(sample_data.scan)
    flipped = reorient(scan, "LAS")
    engine = SegmentationEngine(tiny_region_model, InferenceOptions(device="cpu", crop=False))
    a = sitk.GetArrayFromImage(reorient(engine.predict(scan).soft_maps["sc"], "LAS"))
    b = sitk.GetArrayFromImage(engine.predict(flipped).soft_maps["sc"])
    assert np.abs(a - b).max() > 1e-3  # different array layouts give a random network different inputs


def test_crop_around_the_cord(region_engine, sample_data):
    scan = read_scan(sample_data.scan)
    mask = sitk.ReadImage(str(sample_data.cord))
    region_engine.options.crop_margin_mm = 5.0
    try:
        prediction = region_engine.predict(scan, crop_mask=mask)
    finally:
        region_engine.options.crop_margin_mm = 20.0
    soft = prediction.soft_maps["sc"]
    assert same_grid(soft, scan)
    values = sitk.GetArrayFromImage(soft)
    inside = np.nonzero(sitk.GetArrayFromImage(mask))
    box = tuple(slice(max(0, int(i.min()) - 7), int(i.max()) + 8) for i in inside)  # 5 mm at 0.8 mm: 7 voxels
    outside = values.copy()
    outside[box] = 0
    assert outside.max() == 0.0 and values[box].max() > 0.0
    # Random weights spread the prediction to the box faces: the user is told.
    assert any("crop box" in w for w in prediction.warnings)


def test_crop_mask_empty_is_refused(region_engine, sample_data):
    scan = read_scan(sample_data.scan)
    empty = sitk.Image(scan.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(scan)
    with pytest.raises(InputImageError, match="crop mask is empty"):
        region_engine.predict(scan, crop_mask=empty, name="t2.nii.gz")


def _write(array, path, spacing=None):
    image = sitk.GetImageFromArray(array, isVector=False)
    if spacing:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("case,expected", [
    ("2d", "2D"),
    ("nan", "NaN"),
    ("all-nan", "4000 of 4000 stored values are NaN"),
    ("constant", "constant"),
    ("slice", "single slice"),
    ("missing", "not found"),
    ("garbage", "cannot be read as an image"),
])
def test_bad_scans_are_refused_with_the_file_name(tmp_path, case, expected):
    # Partial NaN through NRRD (SimpleITK keeps it); a NIfTI full of NaN, which SimpleITK's
    # NIfTI reader would turn into 0 (constant), is found in its raw values (see test_image_files.py).
    path = tmp_path / (f"{case}.nrrd" if case == "nan" else f"{case}.nii.gz")
    if case == "2d":
        _write(np.random.rand(30, 30).astype(np.float32), path)
    elif case == "nan":
        array = np.random.rand(10, 20, 20).astype(np.float32)
        array[3, 4, 5] = np.nan
        _write(array, path)
    elif case == "all-nan":
        _write(np.full((10, 20, 20), np.nan, np.float32), path)
    elif case == "constant":
        _write(np.full((10, 20, 20), 7, np.int16), path)
    elif case == "slice":
        _write(np.random.rand(1, 20, 20).astype(np.float32), path)
    elif case == "garbage":
        path.write_bytes(b"not an image at all")
    with pytest.raises(InputImageError, match=expected) as error:
        read_scan(path)
    assert str(path) in str(error.value)


def test_4d_series_is_refused(sample_data, tmp_path):
    path = tmp_path / "series.nii.gz"  # three volumes in one file, as a dMRI or fMRI series
    sitk.WriteImage(sitk.JoinSeries([sitk.ReadImage(str(sample_data.scan))] * 3), str(path))
    with pytest.raises(InputImageError, match="4D") as error:
        read_scan(path)
    assert str(path) in str(error.value)


def test_an_explicit_missing_device_is_an_error_and_auto_falls_back_with_a_note():
    import torch

    if torch.cuda.is_available():
        assert select_device("cuda") == ("cuda", None)
    else:
        with pytest.raises(DeviceUnavailableError, match="device cuda is not available .*--device auto or cpu"):
            select_device("cuda")
    device, note = select_device("auto")
    assert device in ("cuda", "mps", "cpu")
    assert (note is None) == (device != "cpu")
    if device == "cpu":
        assert note.startswith("device auto: using the CPU")


def test_two_fold_ensemble_uses_both_checkpoints(tmp_path, sample_data):
    model = make_synthetic_model(tmp_path, region_based=False, folds=(0, 1))
    scan = read_scan(sample_data.scan)
    maps = {}
    for folds in (["0"], ["1"], None):
        engine = SegmentationEngine(model, InferenceOptions(device="cpu", crop=False, folds=folds))
        maps[str(folds)] = sitk.GetArrayFromImage(engine.predict(scan).soft_maps["sc"])
    assert engine.folds == ["0", "1"]
    # nnU-Net averages the folds' logits, then applies the softmax (here, with two classes, a sigmoid).
    logit = [np.log(maps[k] / (1 - maps[k])) for k in ("['0']", "['1']")]
    expected = 1 / (1 + np.exp(-(logit[0] + logit[1]) / 2))
    assert np.abs(maps["None"] - expected).max() < 2e-3
    assert np.abs(maps["['0']"] - maps["['1']"]).max() > 1e-3


def _copy_model(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def test_model_folder_errors(tiny_model, tmp_path):
    # No fold folders.
    empty_folds = _copy_model(tiny_model, tmp_path / "a" / tiny_model.name)
    shutil.rmtree(empty_folds / "fold_0")
    with pytest.raises(ModelFolderError, match="no fold_"):
        ModelFolder.open(empty_folds)
    # A fold folder without checkpoint.
    (empty_folds / "fold_0").mkdir()
    with pytest.raises(ModelFolderError, match="hold no checkpoint_final.pth or checkpoint_best.pth"):
        ModelFolder.open(empty_folds)
    # Broken dataset.json.
    broken = _copy_model(tiny_model, tmp_path / "b" / tiny_model.name)
    (broken / "dataset.json").write_text("{ not json")
    with pytest.raises(ModelFolderError, match="dataset.json: cannot read JSON"):
        ModelFolder.open(broken)
    # Two candidate folders below one root.
    _copy_model(tiny_model, tmp_path / "c" / "one" / tiny_model.name)
    _copy_model(tiny_model, tmp_path / "c" / "two" / tiny_model.name)
    with pytest.raises(ModelFolderError, match="several nnU-Net results folders"):
        ModelFolder.open(tmp_path / "c")
    with pytest.raises(ModelFolderError, match="no nnU-Net results folder"):
        ModelFolder.open(tmp_path / "a" / tiny_model.name / "fold_0")


def test_best_checkpoint_is_the_fallback(tiny_model, tmp_path):
    model = _copy_model(tiny_model, tmp_path / tiny_model.name)
    (model / "fold_0" / "checkpoint_final.pth").rename(model / "fold_0" / "checkpoint_best.pth")
    folder = ModelFolder.open(model)
    assert folder.checkpoint_name == "checkpoint_best.pth" and folder.folds == ["0"]


def test_corrupted_checkpoint_is_named(tiny_model, tmp_path):
    model = _copy_model(tiny_model, tmp_path / tiny_model.name)
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])  # truncated download
    with pytest.raises(ModelFolderError) as error:
        SegmentationEngine(model, InferenceOptions(device="cpu"))
    assert str(checkpoint) in str(error.value)


def test_channel_count_mismatch(tiny_model, tmp_path):
    import json

    model = _copy_model(tiny_model, tmp_path / tiny_model.name)
    dataset = json.loads((model / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "T2w", "1": "T1w"}
    (model / "dataset.json").write_text(json.dumps(dataset))
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_fullres"].update(normalization_schemes=["ZScoreNormalization"] * 2,
                                                 use_mask_for_norm=[False] * 2)  # consistent, or plans fail first
    (model / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelFolderError, match="expects 2 input channels"):
        SegmentationEngine(model, InferenceOptions(device="cpu"))


def test_missing_fold_selection(tiny_model):
    with pytest.raises(ModelFolderError, match=r"fold\(s\) \['3'\] not found"):
        SegmentationEngine(tiny_model, InferenceOptions(device="cpu", folds=[3]))
