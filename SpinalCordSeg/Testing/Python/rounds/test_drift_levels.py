"""Drift at C2-C3 from disc labels, from TotalSpineSeg (stand-in), and the report without levels.

Synthetic cylinders (fast, not slow-marked): two contrasts of one participant
whose fields of view differ; disc labels put C2-C3 on the same cord section in
both, so the CSA over C2-C3 is the same, while the all-slices average is not.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.rounds.cohort import Scan
from SpinalCordSegLib.rounds.drift import DriftSettings, ModelPredictions, analyse_drift, report_markdown

SHAPE = (40, 20, 20)


def cylinder_with_thick_top(first_slice):
    """A cord from ``first_slice`` up: radius 4 voxels up to slice 24, 5 above (C2 is thicker)."""
    k, j, i = np.indices(SHAPE)
    radius = np.where(k <= 24, 4, 5)
    return (((j - 10) ** 2 + (i - 10) ** 2 <= radius ** 2) & (k >= first_slice)).astype(np.float32)


def write_dataset(tmp_path, with_discs):
    scans, models = [], [ModelPredictions(name, tmp_path / name, "sc") for name in ("old", "new")]
    labels = tmp_path / "labels"
    for contrast, first in (("T1w", 0), ("T2w", 15)):  # the T2w's field of view starts higher
        scan = Scan(tmp_path / f"sub-01_{contrast}.nii.gz", f"sub-01/anat/sub-01_{contrast}.nii.gz", "01", "")
        scans.append(scan)
        for model in models:
            for path in model.files(scan):
                path.parent.mkdir(parents=True, exist_ok=True)
                sitk.WriteImage(sitk.GetImageFromArray(cylinder_with_thick_top(first)), str(path))
        if with_discs:
            discs = np.zeros(SHAPE, np.uint8)
            discs[20, 16, 10], discs[32, 16, 10] = 4, 3  # C3-C4 at slice 20, C2-C3 at 32: C3 = slices 21-32
            (labels / "sub-01" / "anat").mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(discs),
                            str(labels / "sub-01" / "anat" / f"sub-01_{contrast}_label-discs_dlabel.nii.gz"))
    return scans, models, labels


def test_disc_labels_put_both_contrasts_on_the_same_levels(tmp_path):
    scans, models, labels = write_dataset(tmp_path, with_discs=True)
    result = analyse_drift(scans, models, DriftSettings(labels=labels, binary=True, angle_correction=False,
                                                        vert=(3, 3)))
    drift = result.drift.set_index(["model", "contrast"])
    assert set(drift["levels"]) == {"discs"} and set(drift["range"]) == {"level 3"}
    # C3 = slices 21-32 in both scans: 4 slices of radius 4, 8 of radius 5.
    area = [((np.indices((20, 20)) - 10) ** 2).sum(axis=0) <= r ** 2 for r in (4, 5)]
    expected = (4 * area[0].sum() + 8 * area[1].sum()) / 12
    for contrast in ("T1w", "T2w"):
        assert drift.loc[("old", contrast), "n_slices"] == 12
        assert drift.loc[("old", contrast), "csa_mean_mm2"] == pytest.approx(expected)
    assert "without vertebral levels" not in report_markdown(result, {})


def test_without_levels_the_report_says_so(tmp_path):
    scans, models, labels = write_dataset(tmp_path, with_discs=False)
    result = analyse_drift(scans, models, DriftSettings(labels=labels, binary=True, angle_correction=False))
    drift = result.drift.set_index(["model", "contrast"])
    assert set(drift["levels"]) == {"none"} and set(drift["note"]) == {"no vertebral levels: every slice with cord"}
    # Every slice with cord: the two fields of view give two different CSAs.
    assert drift.loc[("old", "T1w"), "csa_mean_mm2"] != pytest.approx(drift.loc[("old", "T2w"), "csa_mean_mm2"])
    report = report_markdown(result, {})
    assert "**2 scan(s) without vertebral levels**" in report and "--levels-with spine" in report


def test_levels_with_spine_uses_totalspineseg_where_the_labels_have_none(tmp_path):
    """TotalSpineSeg is a STAND-IN here (the package cannot be installed offline): a function returning disc labels."""
    scans, models, labels = write_dataset(tmp_path, with_discs=False)
    seen = []

    def stand_in_spine(scan_path):
        seen.append(scan_path.name)
        discs = np.zeros(SHAPE, np.uint8)
        discs[20, 16, 10], discs[32, 16, 10] = 4, 3
        return sitk.GetImageFromArray(discs)

    result = analyse_drift(scans, models, DriftSettings(labels=labels, binary=True, angle_correction=False,
                                                        vert=(3, 3), levels_with="spine"), spine=stand_in_spine)
    assert sorted(seen) == ["sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz"]
    assert set(result.drift["levels"]) == {"discs"} and set(result.drift["n_slices"]) == {12}
