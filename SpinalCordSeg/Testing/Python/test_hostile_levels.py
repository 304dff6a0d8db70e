"""Hostile inputs for vertebral levels: odd paths, links, wrong image kinds, other grids, empty cords.

Each case goes through ``spinalcordseg measure`` as a user would run it: a
clear ``spinalcordseg: error:`` naming the file, exit code 1, nothing written;
or, where the input is odd but valid, the same levels as the plain case.
"""

import os

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from SpinalCordSegLib import cli

SHAPE = (30, 20, 20)


def image(array, spacing=(0.8, 0.8, 1.0)):
    result = sitk.GetImageFromArray(array)
    result.SetSpacing(spacing)
    return result


@pytest.fixture
def files(tmp_path):
    k, j, i = np.indices(SHAPE)
    cord = (((i - 10) * 0.8) ** 2 + ((j - 10) * 0.8) ** 2 <= 16).astype(np.uint8)
    discs = np.zeros(SHAPE, np.uint8)
    discs[8, 14, 10], discs[20, 14, 10] = 4, 3
    folder = tmp_path / "odd folder é"
    folder.mkdir()
    paths = {"cord": folder / "cord mask.nii.gz", "discs": folder / "discs (v2).nii.gz"}
    sitk.WriteImage(image(cord), str(paths["cord"]))
    sitk.WriteImage(image(discs), str(paths["discs"]))
    return paths


def measure(files, tmp_path, discs, *extra):
    output = tmp_path / "out" / "t.csv"
    code = cli.main(["measure", "-i", str(files["cord"]), "--discs", str(discs), "-o", str(output), *extra])
    return code, output


def expected_levels(slices):
    return [4 if k <= 8 else 3 if k <= 20 else 2 for k in slices]


def test_odd_names_and_links_give_the_same_levels(files, tmp_path):
    link = tmp_path / "link.nii.gz"
    os.symlink(files["discs"], link)
    for discs in (files["discs"], link):
        code, output = measure(files, tmp_path, discs)
        assert code == 0
        table = pd.read_csv(output)
        assert table["level"].tolist() == expected_levels(table["slice"])


def test_disc_labels_on_another_grid_are_read_as_points(files, tmp_path):
    """Disc labels resampled to 0.5 mm (another grid, as TotalSpineSeg's isotropic output) give the same levels."""
    discs = sitk.ReadImage(str(files["discs"]))
    fine = sitk.Image([int(s * sp / 0.5) for s, sp in zip(discs.GetSize(), discs.GetSpacing())], sitk.sitkUInt8)
    fine.SetSpacing((0.5, 0.5, 0.5))
    for value in (3, 4):
        index = np.argwhere(sitk.GetArrayFromImage(discs) == value)[0][::-1]
        point = discs.TransformIndexToPhysicalPoint([int(v) for v in index])
        fine[fine.TransformPhysicalPointToIndex(point)] = value
    path = tmp_path / "fine_discs.nii.gz"
    sitk.WriteImage(fine, str(path))
    code, output = measure(files, tmp_path, path)
    assert code == 0
    table = pd.read_csv(output)
    assert table["level"].tolist() == expected_levels(table["slice"])


@pytest.mark.parametrize("case,message", [
    ("half_values", "positive integers"),
    ("vector", "one value per voxel"),
    ("two_d", "3D label image"),
    ("empty_cord", "the cord mask is empty"),
    ("lesion_other_grid", "is not on the grid of"),
])
def test_bad_level_inputs_are_named_and_nothing_is_written(files, tmp_path, capsys, case, message):
    discs, extra = files["discs"], []
    bad = tmp_path / "bad.nii.gz"
    if case == "half_values":
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(discs))).astype(np.float32)
        array[array == 3] = 3.5
        sitk.WriteImage(image(array), str(bad))
        discs = bad
    elif case == "vector":
        sitk.WriteImage(sitk.Compose([sitk.ReadImage(str(discs))] * 3), str(bad))
        discs = bad
    elif case == "two_d":
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 4), np.uint8)), str(bad))
        discs = bad
    elif case == "empty_cord":
        sitk.WriteImage(image(np.zeros(SHAPE, np.uint8)), str(files["cord"]))
    elif case == "lesion_other_grid":
        sitk.WriteImage(image(np.zeros((5, 5, 5), np.uint8)), str(bad))
        extra = ["--lesion", str(bad)]
    code, output = measure(files, tmp_path, discs, *extra)
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("spinalcordseg: error:") and message in error
    assert str(discs if case not in ("empty_cord", "lesion_other_grid") else files["cord"]) in error
    assert not output.parent.exists()
