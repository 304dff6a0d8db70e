"""``spinalcordseg measure`` end to end on NIfTI files written by the test.

The phantom is a soft-edged straight cord (radius 4 mm) with one ellipsoid
lesion and a level image (level 3 below, level 2 above), on a PSR grid like
SCT's t2 scan.
"""

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from SpinalCordSegLib import cli
from SpinalCordSegLib.measures.lesion_metrics import lesion_metrics
from SpinalCordSegLib.measures.morphometrics import cord_morphometrics, summarize_cord

SPACING = (0.7, 0.7, 1.0)  # x, y, z of the phantom array before reorientation
SHAPE = (30, 24, 24)  # z, y, x


def write(array, path):
    """Save the (z, y, x) array, presented as a PSR image, to ``path``; return the path."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    sitk.WriteImage(sitk.DICOMOrient(image, "PSR"), str(path))
    return path


@pytest.fixture
def phantom(tmp_path):
    """Paths of the cord soft map, the lesion mask and the level image."""
    k, j, i = np.indices(SHAPE).astype(float)
    x, y, z = ((i - 11.5) * SPACING[0], (j - 11.5) * SPACING[1], (k - 14.5) * SPACING[2])
    # Soft edge: a linear ramp one pixel wide across the 4 mm radius.
    cord = np.clip(0.5 - (np.hypot(x, y) - 4.0) / SPACING[0], 0.0, 1.0).astype(np.float32)
    lesion = (((x - 1) / 2.0) ** 2 + (y / 1.5) ** 2 + ((z + 3) / 4.0) ** 2 <= 1).astype(np.uint8)
    levels = np.where(cord > 0.5, np.where(k < 15, 3, 2), 0).astype(np.uint8)
    discs = np.zeros(SHAPE, np.uint8)
    discs[8, 11, 16], discs[19, 12, 12] = 4, 3  # C3-C4 at slice 8 (3 mm off the axis), C2-C3 at slice 19
    return {
        "cord": write(cord, tmp_path / "sub-01_label-SC_probseg.nii.gz"),
        "lesion": write(lesion, tmp_path / "sub-01_label-lesion_seg.nii.gz"),
        "levels": write(levels, tmp_path / "sub-01_levels.nii.gz"),
        "discs": write(discs, tmp_path / "sub-01_label-discs_dlabel.nii.gz"),
    }


def read_image(path):
    return sitk.ReadImage(str(path))


def test_measure_writes_the_three_tables(phantom, tmp_path, capsys):
    output = tmp_path / "results" / "sub-01.csv"
    code = cli.main(["measure", "-i", str(phantom["cord"]), "--lesion", str(phantom["lesion"]),
                     "--levels", str(phantom["levels"]), "-o", str(output)])
    assert code == 0
    assert sorted(p.name for p in output.parent.iterdir()) == [
        "sub-01.csv", "sub-01_lesions.csv", "sub-01_summary.csv"]  # no temporary file left

    cord, levels = read_image(phantom["cord"]), read_image(phantom["levels"])
    expected_slices = cord_morphometrics(cord, levels)
    written_slices = pd.read_csv(output)
    pd.testing.assert_frame_equal(written_slices, expected_slices, check_dtype=False)
    assert written_slices["area_mm2"].mean() == pytest.approx(math.pi * 4.0 ** 2, rel=0.02)

    summary = pd.read_csv(tmp_path / "results" / "sub-01_summary.csv")
    assert list(summary["level"].fillna(0)) == [0, 2, 3]
    assert summary.loc[0, "n_slices"] == len(written_slices)

    lesions = pd.read_csv(tmp_path / "results" / "sub-01_lesions.csv")
    expected_lesions = lesion_metrics(read_image(phantom["lesion"]), cord)
    pd.testing.assert_frame_equal(lesions, expected_lesions, check_dtype=False)
    assert len(lesions) == 1

    printed = capsys.readouterr().out
    assert f"CSA {summary.loc[0, 'area_mm2_mean']:.2f} +/-" in printed
    assert "level 2" in printed and "level 3" in printed
    assert f"Lesions: 1, total volume {lesions.loc[0, 'volume_mm3']:.1f} mm3" in printed


def test_measure_averages_over_the_requested_levels_and_slices(phantom, tmp_path):
    output = tmp_path / "table.csv"
    assert cli.main(["measure", "-i", str(phantom["cord"]), "--levels", str(phantom["levels"]),
                     "--vert", "2:2", "-o", str(output)]) == 0
    per_slice = pd.read_csv(output)
    summary = pd.read_csv(tmp_path / "table_summary.csv")
    assert summary.loc[0, "n_slices"] == (per_slice["level"] == 2).sum()
    assert not (tmp_path / "table_lesions.csv").exists()

    assert cli.main(["measure", "-i", str(phantom["cord"]), "--slices", "3:7", "-o", str(output)]) == 0
    summary = pd.read_csv(tmp_path / "table_summary.csv")
    assert tuple(summary.loc[0, ["first_slice", "last_slice", "n_slices"]]) == (3, 7, 5)
    expected = summarize_cord(cord_morphometrics(read_image(phantom["cord"])), slices=(3, 7))
    assert summary.loc[0, "area_mm2_mean"] == pytest.approx(expected.loc[0, "area_mm2_mean"])


def test_measure_without_angle_correction(phantom, tmp_path):
    output = tmp_path / "flat.csv"
    assert cli.main(["measure", "-i", str(phantom["cord"]), "--no-angle-correction", "-o", str(output)]) == 0
    table = pd.read_csv(output)
    assert (table["angle_deg"] == 0).all()
    assert np.allclose(table["area_mm2"], table["area_uncorrected_mm2"])


@pytest.mark.parametrize("extra,message", [
    (["--vert", "2:3"], "--vert needs vertebral levels"),
    (["--pam50"], "--pam50 needs vertebral levels"),
    (["--discs", "{cord}"], "point labels (discs, vertebral bodies) are single voxels"),
    (["--threshold", "1.5"], "--threshold: 1.5 must lie strictly between 0 and 1"),
    (["--lesion", "{tmp}/absent.nii.gz"], "absent.nii.gz: file not found"),
    (["--levels", "{tmp}/other_grid.nii.gz"], "other_grid.nii.gz is not on the grid of"),
    (["--levels", "{levels}", "--vert", "7:9"], "no measured cord slice in the selection"),
    (["--levels", "{cord}"], "a level image must hold non-negative integer labels"),
])
def test_measure_reports_user_errors_and_writes_nothing(phantom, tmp_path, capsys, extra, message):
    write(np.zeros((5, 5, 5), np.uint8), tmp_path / "other_grid.nii.gz")
    output = tmp_path / "out" / "table.csv"
    argv = ["measure", "-i", str(phantom["cord"]), "-o", str(output)]
    argv += [arg.format(tmp=tmp_path, **phantom) for arg in extra]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("spinalcordseg: error:") and message in error
    assert not (tmp_path / "out").exists()


def test_measure_rejects_a_folder_as_output_and_a_bad_range(phantom, tmp_path, capsys):
    assert cli.main(["measure", "-i", str(phantom["cord"]), "-o", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["measure", "-i", str(phantom["cord"]), "--slices", "9:2", "-o", str(tmp_path / "t.csv")])
    assert exit_info.value.code == 2
    assert "expected FIRST:LAST" in capsys.readouterr().err


def test_measure_is_listed_in_the_command_line_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "measure" in capsys.readouterr().out


def test_measure_with_disc_labels_gives_levels_lesions_per_level_and_pam50(phantom, tmp_path, capsys):
    output = tmp_path / "discs.csv"
    assert cli.main(["measure", "-i", str(phantom["cord"]), "--lesion", str(phantom["lesion"]),
                     "--discs", str(phantom["discs"]), "--pam50", "-o", str(output)]) == 0
    per_slice = pd.read_csv(output)
    # SCT's rule: a slice takes the first disc at or above it (4 up to slice 8, 3 up to 19), then 2.
    expected = [4 if k <= 8 else 3 if k <= 19 else 2 for k in per_slice["slice"]]
    assert per_slice["level"].tolist() == expected
    summary = pd.read_csv(tmp_path / "discs_summary.csv")
    assert summary["level_name"].tolist() == ["all", "C2", "C3", "C4"]
    # The lesion (z from -7 to 1 mm around slice 14.5: slices 8-15) lies at C4 (slice 8) and C3.
    by_level = summary.set_index("level_name")
    lesions = pd.read_csv(tmp_path / "discs_lesions.csv")
    assert by_level.loc["all", "lesion_volume_mm3"] == pytest.approx(lesions["volume_mm3"].sum())
    assert by_level.loc["C3", "n_lesions"] == 1 and by_level.loc["C2", "n_lesions"] == 0
    assert by_level.loc["C3", "lesion_volume_mm3"] + by_level.loc["C4", "lesion_volume_mm3"] == pytest.approx(
        lesions["volume_mm3"].sum())
    for level in ("C2", "C3", "C4"):
        assert by_level.loc[level, "area_mm2_mean"] == pytest.approx(math.pi * 4.0 ** 2, rel=0.03)
    pam50 = pd.read_csv(tmp_path / "discs_pam50.csv")
    assert set(pam50["level"]) == {2, 3, 4}
    assert pam50.loc[pam50["level"] == 3, "area_mm2"].notna().all()  # the complete level fills the template's
    assert "level 3 (C3)" in capsys.readouterr().out
