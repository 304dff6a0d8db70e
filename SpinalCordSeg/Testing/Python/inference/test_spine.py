"""TotalSpineSeg's path: its model folder layout, its call, its disc labels into the level tables.

The totalspineseg package and its weights cannot be installed here (no
network), so these tests use a STAND-IN: a model folder with TotalSpineSeg's
layout (``nnUNet/results/r20250224/...``, empty files) and a stand-in for
``totalspineseg.inference.inference`` that writes disc labels at known
positions into ``step1_levels/`` as TotalSpineSeg does. What is real: the
folder and release lookup, the call's arguments (SCT's), reading the output,
and the levels that follow from it.
"""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib import cli
from SpinalCordSegLib.errors import SpinalCordSegError
from SpinalCordSegLib.inference.spine import (
    INSTALL_HINT,
    SpineNotInstalled,
    newest_release,
    require_spine,
    spine_available,
    spine_disc_labels,
)
from SpinalCordSegLib.measures.levels import LevelSource, levels_per_slice

SHAPE = (30, 20, 20)  # z, y, x; 1 mm voxels
DISCS = {4: 9, 3: 21}  # disc value -> slice


def stand_in_model_folder(root):
    """A folder with TotalSpineSeg's layout: two releases, the newest one used."""
    for release in ("r20240921", "r20250224"):
        trainer = root / "nnUNet" / "results" / release / "Dataset101_TotalSpineSeg_step1" / "nnUNetTrainer__plans__3d"
        (trainer / "fold_0").mkdir(parents=True)
        (trainer / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    return root


def scan_and_cord(tmp_path):
    k, j, i = np.indices(SHAPE)
    cord = ((j - 10) ** 2 + (i - 10) ** 2 <= 9).astype(np.uint8)
    scan = tmp_path / "sub-01_T2w.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray((cord * 100).astype(np.float32)), str(scan))
    return scan, sitk.GetImageFromArray(cord)


def make_stand_in(calls):
    def stand_in_inference(**kwargs):
        calls.append(kwargs)
        image = sitk.ReadImage(kwargs["input_path"])
        discs = np.zeros(SHAPE, np.uint8)
        for value, k in DISCS.items():
            discs[k, 14, 10] = value  # disc labels in front of the cord, as TotalSpineSeg's
        discs[27, 14, 10] = 50  # SCT's pontomedullary junction: not a disc
        out = sitk.GetImageFromArray(discs)
        out.CopyInformation(image)
        folder = Path(kwargs["output_path"]) / "step1_levels"
        folder.mkdir()
        sitk.WriteImage(out, str(folder / Path(kwargs["input_path"]).name))
    return stand_in_inference


def test_stand_in_disc_labels_feed_the_levels(tmp_path):
    scan, cord = scan_and_cord(tmp_path)
    calls = []
    folder = stand_in_model_folder(tmp_path / "spine")
    discs = spine_disc_labels(scan, folder, inference=make_stand_in(calls))
    assert calls[0]["default_release"] == "r20250224" and calls[0]["step1_only"] is True
    assert calls[0]["data_path"] == str(folder) and calls[0]["keep_only"] == ["step1_levels"]
    levels = levels_per_slice(cord, LevelSource("discs", discs, "spine"))
    assert levels.tolist() == [4 if k <= 9 else 3 if k <= 21 else 2 for k in range(SHAPE[0])]


def test_a_folder_without_releases_and_an_empty_output_are_named(tmp_path):
    scan, _ = scan_and_cord(tmp_path)
    with pytest.raises(SpinalCordSegError, match="not a TotalSpineSeg model folder"):
        newest_release(tmp_path)
    folder = stand_in_model_folder(tmp_path / "spine")
    with pytest.raises(SpinalCordSegError, match="wrote no disc labels"):
        spine_disc_labels(scan, folder, inference=lambda **kwargs: None)


def test_missing_package_says_how_to_get_it(tmp_path, capsys):
    assert not spine_available(lambda name: None)
    with pytest.raises(SpineNotInstalled, match="pip install totalspineseg"):
        require_spine(lambda name: None)
    if spine_available():
        pytest.skip("totalspineseg is installed here")
    assert cli.main(["drift", "-i", str(tmp_path), "-m", "a", "b", "-o", str(tmp_path / "out"),
                     "--levels-with", "spine"]) == 1
    assert INSTALL_HINT in capsys.readouterr().err
