"""training/make_demo_models.py: the raw datasets it builds pass nnU-Net's own check.

Training itself takes half an hour per model and is not run here; its figures
are in the README and training/demo_models_report.json.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.nnunet_export import verify_dataset

SCRIPT = Path(__file__).resolve().parents[3] / "training" / "make_demo_models.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_demo_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def trainer(script, shared_data, monkeypatch):
    monkeypatch.setattr(script, "DATA", shared_data / "sct_testing_data")
    return script


def test_cord_dataset_holds_out_the_validation_scan(trainer, tmp_path):
    folder = trainer.build_raw_dataset("demo-sc", tmp_path)
    verify_dataset(folder)
    cases = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert len(cases) == len(trainer.CASES) - 1 and not any(c.startswith(trainer.HELD_OUT + "0") for c in cases)
    assert json.loads((folder / "dataset.json").read_text())["image_orientation"] == "LAS"


def test_region_dataset_paints_bright_lesions_inside_the_cord(trainer, tmp_path):
    folder = trainer.build_raw_dataset("demo-sc-lesion", tmp_path)
    verify_dataset(folder)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "sc": [1, 2], "lesion": 2}
    assert dataset["regions_class_order"] == [1, 2]
    painted = 0
    for label_path in sorted((folder / "labelsTr").iterdir()):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "imagesTr" / label_path.name.replace(
            ".nii.gz", "_0000.nii.gz"))))
        assert set(np.unique(labels)) == {0, 1, 2}, label_path.name  # every case has a lesion
        if not label_path.name.startswith("t2fakelesion"):
            painted += 1
            assert image[labels == 2].mean() > image[labels == 1].mean(), label_path.name
    assert painted == 2 * (len(trainer.CASES) - 1)
