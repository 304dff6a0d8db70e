"""The sidecar schema (write, read, corrections, unknown fields) and the one grid comparison."""

import json

import pytest
import SimpleITK as sitk

from SpinalCordSegLib.imaging.binarization import MaskOptions
from SpinalCordSegLib.errors import InputImageError, SpinalCordSegError
from SpinalCordSegLib.imaging.grid import GRID_TOLERANCE, check_same_grid, grid_differences, same_grid
from SpinalCordSegLib.imaging.sidecar import Sidecar, automatic_step, sidecar_path


def test_sidecar_round_trips_every_field(tmp_path):
    image = tmp_path / "sub-01_T2w_label-SC_seg.nii.gz"
    step = automatic_step({"Name": "SpinalCordSeg", "ModelSha256": {"fold_0": "ab"}}, {"sc": 0.4})
    written = Sidecar([step], structure="sc", threshold=0.4, mask_options=MaskOptions(True, False),
                      extra={"CropBox": [1, 2, 3]}).write(image)
    assert written == tmp_path / "sub-01_T2w_label-SC_seg.json" == sidecar_path(image)
    content = json.loads(written.read_text())
    assert content["GeneratedBy"][0]["Thresholds"] == {"sc": 0.4}
    assert content["KeepLargestCord"] is True and content["RestrictLesionsToCord"] is False
    assert content["CropBox"] == [1, 2, 3]
    again = Sidecar.read(image)
    assert again.to_json() == content
    assert again.automatic_step == step and again.threshold == 0.4 and again.structure == "sc"


def test_corrections_append_manual_entries_in_the_sct_format(tmp_path):
    sidecar = Sidecar([{"Name": "SpinalCordSeg"}]).with_correction("ann", "2026-12-01 10:00:00")
    sidecar = sidecar.with_correction("bob")
    assert [e["Name"] for e in sidecar.generated_by] == ["SpinalCordSeg", "Manual", "Manual"]
    assert sidecar.authors == ["ann", "bob"]
    assert sidecar.generated_by[1] == {"Name": "Manual", "Author": "ann", "Date": "2026-12-01 10:00:00"}


def test_missing_sidecar_reads_empty_and_a_damaged_one_names_the_file(tmp_path):
    image = tmp_path / "scan_label-SC_seg.nii.gz"
    assert Sidecar.read(image) == Sidecar()
    sidecar_path(image).write_text("{not json")
    with pytest.raises(SpinalCordSegError, match="scan_label-SC_seg.json"):
        Sidecar.read(image)
    sidecar_path(image).write_text(json.dumps({"GeneratedBy": "oops"}))
    with pytest.raises(SpinalCordSegError, match="GeneratedBy"):
        Sidecar.read(image)


def _image(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 2.0)):
    image = sitk.Image(5, 6, 7, sitk.sitkFloat32)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    return image


def test_grids_within_the_tolerance_are_the_same_and_beyond_it_differ():
    reference = _image()
    assert same_grid(reference, _image(origin=(GRID_TOLERANCE.origin_mm / 2, 0.0, 0.0)))
    assert same_grid(reference, _image(spacing=(1.0 + 1e-6, 1.0, 2.0)))
    assert grid_differences(reference, _image(origin=(0.1, 0.0, 0.0))) == ["origin (0.1, 0.0, 0.0) vs (0.0, 0.0, 0.0)"]
    assert not same_grid(reference, _image(spacing=(1.01, 1.0, 2.0)))
    rotated = _image()
    rotated.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))
    assert grid_differences(reference, rotated) == ["direction differs"]
    assert not same_grid(reference, sitk.Image(5, 6, 8, sitk.sitkFloat32))


def test_check_same_grid_names_both_images():
    with pytest.raises(InputImageError, match="lesion.nii.gz is not on the grid of cord.nii.gz: size"):
        check_same_grid(_image(), sitk.Image(2, 2, 2, sitk.sitkUInt8), "cord.nii.gz", "lesion.nii.gz")
