"""``spinalcordseg segment`` and ``spinalcordseg demo`` end to end, in process."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.imaging.binarization import parse_thresholds
from SpinalCordSegLib.cli import main
from SpinalCordSegLib.errors import SpinalCordSegError
from SpinalCordSegLib.inference.engine import STAGES
from SpinalCordSegLib.imaging.fileutil import owner_tag

pytestmark = pytest.mark.slow


def test_parse_thresholds():
    assert parse_thresholds(None, ["sc", "lesion"]) == {"sc": 0.5, "lesion": 0.5}
    assert parse_thresholds("0.3", ["sc", "lesion"]) == {"sc": 0.3, "lesion": 0.3}
    assert parse_thresholds("sc=0.4,lesion=0.2", ["sc", "lesion"]) == {"sc": 0.4, "lesion": 0.2}
    with pytest.raises(SpinalCordSegError, match="unknown structure 'csf'"):
        parse_thresholds("csf=0.5", ["sc"])
    with pytest.raises(SpinalCordSegError, match="between 0 and 1"):
        parse_thresholds("sc=1.5", ["sc"])


def two_scans(sample_data, folder):
    """The bundled sample (PSR) and a copy of it stored in RAS order (``sample_RAS``)."""
    from SpinalCordSegLib.imaging.image_io import reorient

    copy = folder / "sample_RAS.nii.gz"
    sitk.WriteImage(reorient(sitk.ReadImage(str(sample_data.scan)), "RAS"), str(copy))
    return [sample_data.scan, copy]


def test_segment_writes_maps_masks_and_sidecars(tiny_region_model, sample_data, tmp_path):
    scans = two_scans(sample_data, tmp_path)
    missing = tmp_path / "missing_T2w.nii.gz"
    out = tmp_path / "out"
    code = main(["segment", "-i", str(scans[0]), str(missing), str(scans[1]), "-m", str(tiny_region_model),
                 "-o", str(out), "--device", "cpu", "--no-tta", "--threshold", "lesion=0.7", "--trust",
                 "--no-largest-cord", "--overlay"])
    assert code == 1  # one input failed; the others were still segmented
    for source, scan in (("sample_T2w", scans[0]), ("sample_RAS", scans[1])):
        reference = sitk.ReadImage(str(scan))
        for label in ("SC", "lesion"):
            soft = sitk.ReadImage(str(out / f"{source}_label-{label}_probseg.nii.gz"))
            mask = sitk.ReadImage(str(out / f"{source}_label-{label}_seg.nii.gz"))
            for image in (soft, mask):
                assert image.GetSize() == reference.GetSize()
                assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
                assert np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
            threshold = 0.7 if label == "lesion" else 0.5
            expected = sitk.GetArrayFromImage(soft) >= threshold
            np.testing.assert_array_equal(sitk.GetArrayFromImage(mask).astype(bool), expected)
            sidecar = json.loads((out / f"{source}_label-{label}_seg.json").read_text())
            step = sidecar["GeneratedBy"][0]
            assert step["Name"] == "SpinalCordSeg" and step["Thresholds"] == {"sc": 0.5, "lesion": 0.7}
            assert len(step["ModelSha256"]["0"]) == 64 and step["Device"] == "cpu"
        assert (out / f"{source}_overlay.png").stat().st_size > 1000
    assert not list(out.glob("missing*")) and not list(out.glob(".*part*"))


def test_segment_refuses_an_untrusted_folder(tiny_model, sample_data, tmp_path):
    code = main(["segment", "-i", str(sample_data.scan), "-m", str(tiny_model),
                 "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 1
    assert not (tmp_path / "out").exists()


def test_demo_runs_end_to_end(tmp_path, capsys, sample_data):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [
        "sample_T2w_label-SC_probseg.nii.gz", "sample_T2w_label-SC_seg.nii.gz",
        "sample_T2w_label-lesion_probseg.nii.gz", "sample_T2w_label-lesion_seg.nii.gz",
    ]
    assert (out / "sample_T2w_overlay.png").is_file()
    # The bundled sample is SCT's t2_fake_lesion (held out from the embedded model's training): the
    # model finds its cord, and marks its lesion (roughly: Dice 0.50, see the README).
    from SpinalCordSegLib.rounds.correction import correction_stats

    masks = {}
    for structure, truth in (("SC", sample_data.cord), ("lesion", sample_data.lesion)):
        found = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"sample_T2w_label-{structure}_seg.nii.gz")))
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(truth)))
        masks[structure] = found, expected
    assert correction_stats(*masks["SC"]).dice >= 0.8
    found, expected = masks["lesion"]
    assert (found & expected).sum() >= 0.5 * expected.sum()  # most of the true lesion is marked


def test_crop_with_a_first_cord_model(tiny_region_model, sample_data, tmp_path):
    """The embedded cord model finds the cord; the main model predicts only around it."""
    from SpinalCordSegLib.cli.segment import segment_files
    from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
    from SpinalCordSegLib.imaging.image_io import read_scan
    from SpinalCordSegLib.models.model_store import resolve_model

    scan = sample_data.scan  # 0.8 mm isotropic: the 3 mm margin is ceil(3 / 0.8) = 4 voxels
    options = InferenceOptions(device="cpu", use_mirroring=False, crop_margin_mm=3.0)
    cord_model = SegmentationEngine(resolve_model("demo-sc", offline=True).folder, options)
    engine = SegmentationEngine(tiny_region_model, options)
    failed = segment_files([str(scan)], tmp_path, engine, crop_engine=cord_model)
    assert failed == []
    cord = sitk.GetArrayFromImage(cord_model.predict(read_scan(scan)).soft_maps["sc"]) >= 0.5
    soft = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sample_T2w_label-SC_probseg.nii.gz")))
    box = np.zeros(cord.shape, bool)
    box[tuple(slice(max(0, int(i.min()) - 4), int(i.max()) + 5) for i in np.nonzero(cord))] = True
    assert (~box).sum() > box.sum()  # the crop box is the smaller part of the scan
    assert soft[~box].max() == 0.0 and soft[box].max() > 0.0


def test_inputs_options_and_output_folder_are_checked_before_the_model_loads(
        tiny_region_model, sample_data, tmp_path, loads, caplog, capsys):
    scan = str(sample_data.scan)
    png = tmp_path / "slice.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.uint8).reshape(8, 8)), str(png))
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    model = ["-m", str(tiny_region_model), "--device", "cpu", "--no-tta", "--trust"]
    cases = [
        (["-i", scan, "-o", str(tmp_path / "o1"), "--threshold", "sc=1.5"], "--threshold: 'sc=1.5'"),
        (["-i", scan, "-o", str(tmp_path / "o2"), "--threshold", "csf=0.5"], "unknown structure 'csf'"),
        (["-i", scan, "-o", str(tmp_path / "o4"), "--orientation", "RAR"], "--orientation 'RAR'"),
        (["-i", str(png), "-o", str(tmp_path / "o5")], f"{png}: image is 2D"),
        (["-i", str(tmp_path / "gone.nii.gz"), "-o", str(tmp_path / "o6")], "gone.nii.gz: file not found"),
        (["-i", scan, "-o", str(a_file)], f"{a_file}: the output folder exists and is not a folder"),
        (["-i", scan, "-o", str(a_file / "out")], f"{a_file / 'out'}: cannot write to the output folder"),
        (["-i", scan, "-o", "/proc/spinalcordseg-out"], "/proc/spinalcordseg-out: cannot write to the output"),
        (["-i", scan, "-o", str(tmp_path / "o7"), "--folds", "3"], "fold(s) ['3'] not found"),
    ]
    for arguments, message in cases:
        caplog.clear()
        assert main(["segment", *arguments, *model]) == 1, arguments
        reported = caplog.text + capsys.readouterr().err
        assert message in reported, (arguments, reported)
        assert loads == [], f"{arguments}: the model was loaded before the check"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("o")]  # no output folder was made


def test_an_os_error_on_one_scan_does_not_stop_the_others(tiny_region_model, sample_data, tmp_path, caplog):
    """The first scan's overlay cannot be written (a folder holds its name): a real IsADirectoryError."""
    scans = two_scans(sample_data, tmp_path)
    out = tmp_path / "out"
    (out / "sample_T2w_overlay.png").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = out / f".sample_RAS_label-SC_seg.nii.gz.{owner_tag(int(dead.stdout))}.ab12cd34.part.nii.gz"
    orphan.write_bytes(b"left by a killed run")
    code = main(["segment", "-i", *map(str, scans), "-o", str(out), "-m", str(tiny_region_model),
                 "--device", "cpu", "--no-tta", "--trust", "--overlay"])
    assert code == 1
    assert "sample_T2w.nii.gz: IsADirectoryError" in caplog.text and "1 of 2 scan(s) failed" in caplog.text
    assert (out / "sample_RAS_label-lesion_seg.nii.gz").is_file() and (out / "sample_RAS_overlay.png").is_file()
    assert not orphan.exists() and f"removed {orphan}" in caplog.text


def test_segment_records_the_time_of_each_stage(tiny_region_model, shared_data, tmp_path, caplog):
    scan = shared_data / "sct_testing_data/t2/t2.nii.gz"
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG, logger="SpinalCordSegLib")  # what --verbose shows
    assert main(["--verbose", "segment", "-i", str(scan), "-m", str(tiny_region_model), "-o", str(out),
                 "--device", "cpu", "--trust", "--no-crop"]) == 0
    timing = json.loads((out / "t2_label-SC_seg.json").read_text())["GeneratedBy"][0]["Timing"]
    assert list(timing) == list(STAGES)  # reading, checks, model load, localizer, ..., writing: in the order they run
    assert all(seconds >= 0 for seconds in timing.values())
    assert timing["ModelLoad"] > 0 and timing["SlidingWindow"] > 0 and timing["Writing"] > 0
    assert timing["Localizer"] < timing["SlidingWindow"]  # --no-crop: no localizer pass
    shown = [r.getMessage() for r in caplog.records if "seconds per stage" in r.getMessage()]
    assert len(shown) == 1 and all(stage in shown[0] for stage in STAGES)
