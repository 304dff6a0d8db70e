"""training/: the raw dataset make_demo_models.py builds, and the contrast-agnostic augmentation.

Training itself takes about an hour on 2 CPU cores and is not run here; its figures
are in the README and training/demo_models_report.json.
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SpinalCordSegLib.rounds.nnunet_export import verify_dataset

TRAINING = Path(__file__).resolve().parents[3] / "training"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(TRAINING))  # make_demo_models imports its trainer module from its own folder
    spec = importlib.util.spec_from_file_location("make_demo_models", TRAINING / "make_demo_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def augment():
    sys.path.insert(0, str(TRAINING))
    import contrast_agnostic

    return contrast_agnostic


@pytest.fixture
def trainer(script, shared_data, monkeypatch):
    monkeypatch.setattr(script, "DATA", shared_data)
    return script


def test_every_case_is_on_disk_and_validation_is_held_out_by_subject(trainer):
    for case, _subject, _contrast, *paths in trainer.CASES:
        for relative in filter(None, paths):
            assert (trainer.DATA / relative).is_file(), f"{case}: {relative}"
    trained = trainer.training_cases()
    assert {c[0] for c in trained}.isdisjoint(trainer.VALIDATION)
    assert len(trained) + len(trainer.VALIDATION) == len(trainer.CASES) == 17
    # The gm-challenge validation subject is not trained on, in any session.
    held_out_gm = {c[1] for c in trainer.CASES if c[0] in trainer.VALIDATION and c[0].startswith("gm")}
    assert held_out_gm and held_out_gm.isdisjoint({c[1] for c in trained})


def test_sct_subject_split_holds_out_a_whole_subject_and_contrasts_training_never_sees(trainer):
    held_out = trainer.SPLITS["sct-subject"]
    trained = trainer.training_cases(held_out)
    validation = [c for c in trainer.CASES if c[0] in held_out]
    assert len(trained) + len(validation) == len(trainer.CASES)
    assert {c[1] for c in validation}.isdisjoint({c[1] for c in trained})  # by subject
    assert {"T1w", "MTon", "MToff"}.isdisjoint({c[2] for c in trained})
    assert trainer.SPLITS["shipped"] == trainer.VALIDATION


def test_raw_dataset_passes_nnunets_check_and_holds_out_validation(trainer, tmp_path, monkeypatch):
    # A few small cases of each kind (gm-challenge, sct, extra), to keep the test fast.
    keep = ("gm10062Ses2", "gm9709Ses1", "mt0", "t2", "t2fakelesion", "mt1")
    monkeypatch.setattr(trainer, "CASES", [c for c in trainer.CASES if c[0] in keep])
    folder = trainer.build_raw_dataset("demo-sc-lesion", tmp_path)
    verify_dataset(folder)
    names = sorted(p.name[:-len(".nii.gz")] for p in (folder / "labelsTr").iterdir())
    assert names == ["gm9709Ses1", "mt0", "mt1"]
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "sc": [1, 2], "lesion": 2}
    assert dataset["regions_class_order"] == [1, 2] and dataset["image_orientation"] == "LAS"
    assert dataset["numTraining"] == 3
    for name in names:
        labels = sitk.ReadImage(str(folder / "labelsTr" / f"{name}.nii.gz"))
        image = sitk.ReadImage(str(folder / "imagesTr" / f"{name}_0000.nii.gz"))
        assert set(np.unique(sitk.GetArrayFromImage(labels))) == {0, 1}, name  # lesions come in training
        assert image.GetPixelID() == sitk.sitkFloat32 and labels.GetSize() == image.GetSize()
        assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) == "LAS"


def _patch():
    seg = torch.zeros(1, 12, 40, 40)
    seg[0, :, 15:25, 14:26] = 1  # a 9 x 10.8 mm cord at 0.9 mm
    image = torch.randn(1, 12, 40, 40) * 0.1
    image[seg > 0] += 2.0
    return image, seg


def test_painted_lesions_lie_inside_the_cord_and_change_the_image(augment):
    image, seg = _patch()
    cord = seg[0] > 0
    before = image.clone()
    augment.paint_lesions(image, seg, (3.0, 0.9, 0.9), 3, np.random.default_rng(1), bright=True)
    lesion = seg[0] == augment.LESION
    assert lesion.any() and not (lesion & ~cord).any()
    assert (seg[0] > 0).sum() == cord.sum()  # the cord region still includes the lesions
    assert (image - before)[0][lesion].min() > 0 and torch.equal(image[0][~cord], before[0][~cord])


def test_contrast_agnostic_transform_keeps_labels_and_remaps_intensities(augment):
    transform = augment.ContrastAgnosticTransform((3.0, 0.9, 0.9), lesions=False, p_synth=1.0)
    np.random.seed(3)
    contrasts = []
    for _ in range(8):
        image, seg = _patch()
        out = transform(image=image, segmentation=seg.clone())
        assert torch.equal(out["segmentation"], seg) and out["image"].shape == image.shape
        assert abs(float(out["image"].mean())) < 1e-4 and abs(float(out["image"].std()) - 1) < 1e-3
        inside = seg[0] > 0
        contrasts.append(float(out["image"][0][inside].mean() - out["image"][0][~inside].mean()))
    # The cord is sometimes brighter, sometimes darker than its surroundings: no fixed contrast.
    assert min(contrasts) < 0 < max(contrasts)


def test_core_mimic_changes_the_cords_centre_only_and_keeps_the_labels(augment):
    image, seg = _patch()
    before, labels = image.clone(), seg.clone()
    augment.paint_core(image, seg, (3.0, 0.9, 0.9), np.random.default_rng(0))
    change = (image - before)[0]
    cord = seg[0] > 0
    assert torch.equal(seg, labels)  # a mimic is cord, not lesion
    assert torch.equal(change[~cord], torch.zeros_like(change[~cord]))
    centre, edge = change[:, 20, 20], change[:, 15, 20]  # the cord spans rows 15-24 and columns 14-25
    assert (centre.abs() > 0).all()  # along the whole patch
    assert (centre.abs() > 3 * edge.abs()).all()


def test_synthesized_lesions_always_differ_from_their_cord(augment):
    image, seg = _patch()
    seg[0, 4:8, 18:22, 18:22] = augment.LESION
    gaps = []
    for seed in range(30):
        out = augment.synthesize_intensities(image, seg, np.random.default_rng(seed))[0]
        gaps.append(abs(float(out[seg[0] == augment.LESION].mean() - out[seg[0] == augment.CORD].mean())))
    # Means 0.25-0.6 apart, less what the blur mixes in at a 4-voxel lesion's edge.
    assert min(gaps) > 0.1


def test_fine_tuning_starts_from_the_cord_models_weights(augment, script, tmp_path):
    torch.manual_seed(0)

    def network():
        net = torch.nn.Module()
        net.encoder = torch.nn.Conv3d(1, 4, 3)
        net.decoder = torch.nn.Module()
        net.decoder.seg_layers = torch.nn.ModuleList([torch.nn.Conv3d(4, 2, 1)])
        return net

    cord = network()  # demo-sc's heads: (0, cord logits)
    weights = script.as_cord_model(cord.state_dict())
    torch.save({"network_weights": weights}, tmp_path / "checkpoint_final.pth")
    trainer = type("Trainer", (), {"network": network(), "print_to_log_file": lambda self, *a: None})()
    lesion_head = trainer.network.decoder.seg_layers[0].weight[1].clone()
    augment.ContrastAgnosticTrainer.load_initial_weights(trainer, tmp_path / "checkpoint_final.pth")
    loaded = trainer.network.state_dict()
    assert torch.equal(loaded["encoder.weight"], cord.encoder.weight)
    head = loaded["decoder.seg_layers.0.weight"]
    assert torch.equal(head[0], cord.decoder.seg_layers[0].weight[0])  # the sc region: the cord logits
    assert torch.equal(head[1], lesion_head)  # the lesion row keeps its initialisation
    # A region-based checkpoint (demo-sc-lesion) continues as it is, lesion head included.
    region = network()
    torch.save({"network_weights": region.state_dict(),
                "init_args": {"dataset_json": {"regions_class_order": [1, 2]}}}, tmp_path / "region.pth")
    augment.ContrastAgnosticTrainer.load_initial_weights(trainer, tmp_path / "region.pth")
    assert torch.equal(trainer.network.state_dict()["decoder.seg_layers.0.weight"], region.decoder.seg_layers[0].weight)


def test_thick_slices_average_along_one_axis_only(augment):
    image = torch.zeros(1, 8, 6, 6)
    image[0, ::2] = 1.0  # alternating slices along axis 0
    thick = augment.thick_slices(image, 0, 2.0)
    assert torch.allclose(thick, torch.full_like(thick, 0.5), atol=1e-6)
    assert torch.equal(augment.thick_slices(image, 1, 2.0), image)  # constant along axis 1


def test_bias_field_is_smooth_and_positive(augment):
    field = augment.bias_field((10, 20, 20), 0.4, np.random.default_rng(0))
    assert field.shape == (10, 20, 20) and field.min() > 0
    assert float(field.std()) > 0.01
    # Smooth: neighbouring voxels nearly equal (white noise would give a correlation near 0).
    neighbours = torch.corrcoef(torch.stack([field[..., :-1].flatten(), field[..., 1:].flatten()]))[0, 1]
    assert neighbours > 0.95


def test_cord_model_is_the_region_models_cord_output(script):
    torch.manual_seed(0)
    head = torch.nn.Conv3d(4, 2, 1)  # a region head: (sc, lesion) logits read through sigmoids
    weights = {"decoder.seg_layers.0.weight": head.weight.data, "decoder.seg_layers.0.bias": head.bias.data,
               "encoder.stages.0.weight": torch.ones(3)}
    converted = script.as_cord_model(weights)
    cord_head = torch.nn.Conv3d(4, 2, 1)
    cord_head.weight.data, cord_head.bias.data = (converted[f"decoder.seg_layers.0.{k}"] for k in ("weight", "bias"))
    features = torch.randn(1, 4, 3, 3, 3)
    with torch.no_grad():
        expected = torch.sigmoid(head(features))[:, 0]
        softmax = torch.softmax(cord_head(features), 1)[:, 1]
    assert torch.allclose(softmax, expected, atol=1e-6)
    assert torch.equal(converted["encoder.stages.0.weight"], weights["encoder.stages.0.weight"])
