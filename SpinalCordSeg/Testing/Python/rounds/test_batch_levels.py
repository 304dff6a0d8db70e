"""Per-level tables of a batch: levels from the labels folder (discs first), TotalSpineSeg (stand-in), none.

The predictions are written by the test (a soft cord cylinder and a lesion
mask in a batch's derivatives layout), so no model runs: what is tested is
which level file is used and what is written beside the masks.
"""

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.rounds.cohort import find_scans, level_source, write_level_tables

SHAPE = (30, 20, 20)


def image(array):
    result = sitk.GetImageFromArray(array)
    result.SetSpacing((0.8, 0.8, 1.0))
    return result


@pytest.fixture
def cohort(tmp_path):
    root = tmp_path / "bids"
    k, j, i = np.indices(SHAPE)
    radius = np.hypot((i - 9.5) * 0.8, (j - 9.5) * 0.8)
    cord = np.clip(4.5 - radius, 0, 1).astype(np.float32)  # soft edge
    lesion = ((radius <= 1.5) & (k >= 12) & (k <= 15)).astype(np.uint8)
    for subject in ("01", "02"):
        scan = root / f"sub-{subject}" / "anat" / f"sub-{subject}_T2w.nii.gz"
        scan.parent.mkdir(parents=True)
        sitk.WriteImage(image(cord * 100), str(scan))
        derivatives = root / "derivatives" / "spinalcordseg" / f"sub-{subject}" / "anat"
        derivatives.mkdir(parents=True)
        sitk.WriteImage(image(cord), str(derivatives / f"sub-{subject}_T2w_label-SC_probseg.nii.gz"))
        sitk.WriteImage(image(lesion), str(derivatives / f"sub-{subject}_T2w_label-lesion_seg.nii.gz"))
    labels = root / "derivatives" / "labels" / "sub-01" / "anat"
    labels.mkdir(parents=True)
    discs = np.zeros(SHAPE, np.uint8)
    discs[8, 13, 10], discs[20, 13, 10] = 4, 3
    sitk.WriteImage(image(discs), str(labels / "sub-01_T2w_label-discs_dlabel.nii.gz"))
    labelled = np.where(cord > 0.5, 2, 0).astype(np.uint8)  # a labelled cord too: the discs come first
    sitk.WriteImage(image(labelled), str(labels / "sub-01_T2w_label-SC_seg_labeled.nii.gz"))
    return root


def test_batch_writes_per_level_tables_from_disc_labels(cohort):
    scans = find_scans(cohort, "sub-*_T2w.nii.gz")
    derivatives = cohort / "derivatives" / "spinalcordseg"
    outcome = write_level_tables(scans, derivatives, ["sc", "lesion"], {"sc": 0.5, "lesion": 0.5},
                                 cohort / "derivatives" / "labels")
    assert outcome["sub-01/anat/sub-01_T2w.nii.gz"].startswith("levels from discs")
    assert outcome["sub-02/anat/sub-02_T2w.nii.gz"].startswith("no vertebral levels")
    table = pd.read_csv(derivatives / "sub-01" / "anat" / "sub-01_T2w_levels.csv").set_index("level_name")
    assert list(table.index) == ["all", "C2", "C3", "C4"]
    assert (table.loc["C3", "first_slice"], table.loc["C3", "last_slice"]) == (9, 20)
    assert table.loc["C3", "n_lesions"] == 1 and table.loc["C2", "n_lesions"] == 0
    assert table.loc["C3", "area_mm2_mean"] == pytest.approx(math.pi * 4.0 ** 2, rel=0.03)
    assert not (derivatives / "sub-02" / "anat" / "sub-02_T2w_levels.csv").exists()


def test_levels_with_spine_fills_the_gaps(cohort):
    """TotalSpineSeg is a STAND-IN (the package cannot be installed offline): a function returning disc labels."""
    scans = {s.subject: s for s in find_scans(cohort, "sub-*_T2w.nii.gz")}
    labels = cohort / "derivatives" / "labels"
    calls = []

    def stand_in_spine(path):
        calls.append(path.name)
        discs = np.zeros(SHAPE, np.uint8)
        discs[15, 13, 10] = 3
        return image(discs)

    assert level_source(scans["01"], labels, "spine", stand_in_spine).name.endswith("_label-discs_dlabel.nii.gz")
    source = level_source(scans["02"], labels, "spine", stand_in_spine)
    assert source.kind == "discs" and calls == ["sub-02_T2w.nii.gz"]
    assert level_source(scans["02"], labels, "labels", stand_in_spine) is None


@pytest.mark.slow
def test_batch_command_reports_the_levels_of_each_scan(cohort, tiny_model, capsys):
    """`batch --levels-with labels` end to end with a tiny nnU-Net model (random weights: its cord is noise)."""
    from SpinalCordSegLib.cli import main

    out = cohort / "derivatives" / "tiny"
    code = main(["batch", "-i", str(cohort), "-o", str(out), "-m", str(tiny_model), "--device", "cpu", "--no-tta",
                 "--trust", "--levels-with", "labels"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "sub-02/anat/sub-02_T2w.nii.gz: no vertebral levels" in printed
    line = next(x for x in printed.splitlines() if x.startswith("sub-01/anat/sub-01_T2w.nii.gz: "))
    # Disc labels exist for sub-01: a table, or (a noise cord) a failure that names the file.
    assert "levels from discs" in line or ("failed:" in line and "sub-01_T2w" in line)
