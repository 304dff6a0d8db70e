"""Correction statistics, BIDS derivative paths, the correction log and saving with sidecars."""

import csv
import datetime
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.rounds.correction import (
    LOG_COLUMNS,
    append_correction_log,
    bids_location,
    correction_stats,
    on_grid,
    plan_outputs,
    read_grid,
    save_correction,
)
from SpinalCordSegLib.errors import SpinalCordSegError
from SpinalCordSegLib.imaging.grid import same_grid
from SpinalCordSegLib.imaging.image_io import orientation_of, reorient
from SpinalCordSegLib.imaging.sidecar import DATE_FORMAT, Sidecar



# ------------------------------------------------------------------ statistics

def test_stats_count_added_and_removed_voxels_and_dice():
    automatic = np.zeros((4, 5, 6), bool)
    automatic[1:3, 1:4, 1:5] = True  # 24 voxels
    corrected = automatic.copy()
    corrected[1, 1, 1:5] = False  # 4 removed
    corrected[3, 0, :] = True  # 6 added
    stats = correction_stats(automatic, corrected)
    assert (stats.automatic_voxels, stats.corrected_voxels, stats.added, stats.removed) == (24, 26, 6, 4)
    assert stats.dice == pytest.approx(2 * 20 / (24 + 26))


def test_stats_of_two_empty_masks_agree_and_shapes_must_match():
    empty = np.zeros((2, 2, 2), np.uint8)
    assert correction_stats(empty, empty).dice == 1.0
    assert correction_stats(empty, np.ones((2, 2, 2))).dice == 0.0
    with pytest.raises(ValueError, match="shape"):
        correction_stats(empty, np.zeros((2, 2, 3)))


# ------------------------------------------------------------------ BIDS paths

@pytest.mark.parametrize("relative, folder", [
    ("ds/sub-01/anat/sub-01_T2w.nii.gz", "ds/derivatives/labels/sub-01/anat"),
    ("ds/sub-01/ses-02/anat/sub-01_ses-02_T2w.nii.gz", "ds/derivatives/labels/sub-01/ses-02/anat"),
    ("ds/derivatives/preproc/sub-03/anat/sub-03_T2w.nii.gz", "ds/derivatives/labels/sub-03/anat"),
])
def test_bids_scans_map_to_derivatives_labels(tmp_path, relative, folder):
    plan = plan_outputs(tmp_path / relative)
    assert plan.bids
    assert plan.folder == tmp_path / folder
    assert plan.log == tmp_path / "ds/derivatives/labels/correction_log.csv"


@pytest.mark.parametrize("relative", [
    "data/t2/t2.nii.gz",  # no subject folder
    "ds/sub-01/anat/sub-02_T2w.nii.gz",  # file of another subject
    "ds/sub-01/ses-02/anat/sub-01_ses-03_T2w.nii.gz",  # file of another session
])
def test_other_scans_are_not_bids_and_need_a_chosen_folder(tmp_path, relative):
    assert bids_location(tmp_path / relative) is None
    with pytest.raises(SpinalCordSegError, match="not in a BIDS dataset: choose an output folder"):
        plan_outputs(tmp_path / relative)
    plan = plan_outputs(tmp_path / relative, tmp_path / "out")
    assert (plan.folder, plan.log, plan.bids) == (tmp_path / "out", tmp_path / "out/correction_log.csv", False)


def test_a_volume_without_file_needs_a_chosen_folder():
    with pytest.raises(SpinalCordSegError, match="not loaded from a file"):
        plan_outputs(None)


# ------------------------------------------------------------------ grids

def test_masks_on_a_flipped_grid_come_back_voxel_for_voxel(sample_data):
    scan = sitk.ReadImage(str(sample_data.scan))
    assert orientation_of(scan) == "PSR"
    mask = sitk.Cast(scan > float(np.percentile(sitk.GetArrayViewFromImage(scan), 80)), sitk.sitkUInt8)
    flipped = reorient(mask, "LPS")  # how Slicer stores a left-handed scan: another voxel order
    assert not same_grid(flipped, scan)
    back = on_grid(flipped, read_grid(sample_data.scan))
    assert same_grid(back, scan)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(mask))


def test_masks_on_a_cropped_grid_are_resampled_onto_the_scan(sample_data):
    scan = sitk.ReadImage(str(sample_data.scan))
    mask = sitk.Cast(scan > float(np.percentile(sitk.GetArrayViewFromImage(scan), 80)), sitk.sitkUInt8)
    cropped = mask[5:40, 3:50, 10:45]
    back = on_grid(cropped, read_grid(sample_data.scan))
    assert same_grid(back, scan)
    expected = np.zeros_like(sitk.GetArrayFromImage(mask))
    expected[10:45, 3:50, 5:40] = sitk.GetArrayFromImage(mask)[10:45, 3:50, 5:40]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), expected)


# ------------------------------------------------------------------ log

def test_log_gets_a_header_once_and_rows_appended(tmp_path):
    log = tmp_path / "labels" / "correction_log.csv"
    append_correction_log(log, [{"case": "a", "dice": "0.9"}])
    append_correction_log(log, [{"case": "b", "dice": "1.0"}, {"case": "c", "dice": "0.5"}])
    with open(log, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["case"] for r in rows] == ["a", "b", "c"]
    assert list(rows[0]) == LOG_COLUMNS


def test_log_recovers_from_a_partial_last_line_and_refuses_foreign_tables(tmp_path):
    log = tmp_path / "correction_log.csv"
    append_correction_log(log, [{"case": "a"}])
    with open(log, "a") as stream:
        stream.write("2026-01-01,interrupted")  # a crash mid-row: no newline
    append_correction_log(log, [{"case": "b"}])
    lines = log.read_text().splitlines()
    assert lines[-2] == "2026-01-01,interrupted" and lines[-1].split(",")[1] == "b"
    other = tmp_path / "other.csv"
    other.write_text("subject,score\n1,2\n")
    with pytest.raises(SpinalCordSegError, match=r"other\.csv: existing correction log has columns"):
        append_correction_log(other, [{"case": "x"}])
    assert other.read_text() == "subject,score\n1,2\n"


# ------------------------------------------------------------------ saving

def _masks(scan):
    array = sitk.GetArrayFromImage(scan)
    automatic = array > np.percentile(array, 90)
    corrected = automatic.copy()
    corrected[:, :, :10] = False
    corrected[20:22, 20:22, 20:22] = True
    images = []
    for a in (automatic, corrected):
        image = sitk.GetImageFromArray(a.astype(np.uint8))
        image.CopyInformation(scan)
        images.append(image)
    return automatic, corrected, images[0], images[1]


def test_save_writes_masks_sidecars_and_log_and_keeps_history(sample_data, tmp_path):
    dataset = tmp_path / "ds"
    scan_path = dataset / "sub-01/anat/sub-01_T2w.nii.gz"
    scan_path.parent.mkdir(parents=True)
    shutil.copy(sample_data.scan, scan_path)
    scan = sitk.ReadImage(str(scan_path))
    automatic, corrected, auto_image, corrected_image = _masks(scan)
    soft = sitk.Cast(auto_image, sitk.sitkFloat32) * 0.8
    step = {"Name": "SpinalCordSeg", "Version": "0.1.0", "ModelId": "demo", "Date": "2026-01-01 10:00:00"}
    plan = plan_outputs(scan_path)

    saved = save_correction({"sc": corrected_image}, {"sc": auto_image}, {"sc": step}, {"sc": 0.4}, "sub-01_T2w",
                            plan, "  Dr Who ", seconds=42.04, scan_path=scan_path, soft_maps={"sc": soft})

    seg = dataset / "derivatives/labels/sub-01/anat/sub-01_T2w_label-SC_seg.nii.gz"
    assert saved.files == {"sc_seg": seg, "sc_probseg": seg.with_name("sub-01_T2w_label-SC_probseg.nii.gz")}
    written = sitk.ReadImage(str(seg))
    assert same_grid(written, scan)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), corrected.astype(np.uint8))
    sidecar = Sidecar.read(seg).to_json()
    automatic_step, manual = sidecar["GeneratedBy"]
    assert automatic_step == dict(step, Thresholds={"sc": 0.4})
    assert manual["Name"] == "Manual" and manual["Author"] == "Dr Who"
    datetime.datetime.strptime(manual["Date"], DATE_FORMAT)
    assert sidecar["Structure"] == "sc" and sidecar["Threshold"] == 0.4
    assert Sidecar.read(saved.files["sc_probseg"]).to_json()["GeneratedBy"] == [automatic_step]  # soft maps are not edited

    with open(saved.log, newline="") as stream:
        [row] = list(csv.DictReader(stream))
    added = int(np.count_nonzero(corrected & ~automatic))
    removed = int(np.count_nonzero(automatic & ~corrected))
    assert added > 0 and removed > 0
    assert (row["case"], row["structure"], row["model"], row["rater"]) == ("sub-01_T2w", "sc", "demo", "Dr Who")
    assert (int(row["voxels_added"]), int(row["voxels_removed"])) == (added, removed)
    overlap = np.count_nonzero(automatic & corrected)
    assert float(row["dice"]) == pytest.approx(2 * overlap / (automatic.sum() + corrected.sum()), abs=1e-6)
    assert (row["threshold"], row["seconds"], row["output"]) == ("0.4", "42.0", str(seg))

    # A second correction of the same automatic result adds a Manual entry and a log row.
    save_correction({"sc": corrected_image}, {"sc": auto_image}, {"sc": step}, {"sc": 0.4}, "sub-01_T2w",
                    plan, "Second rater", scan_path=scan_path)
    entries = Sidecar.read(seg).to_json()["GeneratedBy"]
    assert [e.get("Author") for e in entries] == [None, "Dr Who", "Second rater"]
    assert len(saved.log.read_text().splitlines()) == 3


def test_save_needs_a_rater_and_consistent_inputs(sample_data, tmp_path):
    scan = sitk.ReadImage(str(sample_data.scan))
    _, _, auto_image, corrected_image = _masks(scan)
    plan = plan_outputs(None, tmp_path)
    with pytest.raises(SpinalCordSegError, match="rater"):
        save_correction({"sc": corrected_image}, {"sc": auto_image}, {"sc": {}}, {"sc": 0.5}, "t2", plan, " ")
    with pytest.raises(ValueError, match="lesion"):
        save_correction({"lesion": corrected_image}, {"sc": auto_image}, {"sc": {}}, {"sc": 0.5}, "t2", plan, "R")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
