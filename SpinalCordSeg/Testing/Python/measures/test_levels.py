"""Vertebral levels from disc labels (SCT's rule), mid-vertebral labels, PAM50 normalization, lesions per level.

Phantoms: a straight and a curved cylinder (radius 5 mm, CSA 78.54 mm2) drawn
with partial volume on an LPS grid, with single-voxel disc labels at known
heights; the per-level rows must cover the expected slices and measure the
expected area within 3 %.
"""

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy.spatial import cKDTree

from SpinalCordSegLib.errors import InputImageError
from SpinalCordSegLib.measures.lesion_metrics import lesions_per_level
from SpinalCordSegLib.measures.levels import (
    PAM50_LEVEL_SLICES,
    LevelSource,
    disc_name,
    level_name,
    level_tables,
    levels_per_slice,
    normalize_to_pam50,
)

RADIUS = 5.0
SPACING = (0.8, 0.8, 1.0)
SIZE = (40, 40, 70)  # x (L), y (P), z (S)


def grid(array=None):
    """An LPS image of SIZE and SPACING (origin 0) holding ``array`` (z, y, x) or zeros."""
    image = sitk.GetImageFromArray(np.zeros(SIZE[::-1], np.float32) if array is None else array.astype(np.float32))
    image.SetSpacing(SPACING)
    return image


def curve_x(z_mm, bend):
    """Left-right position (mm) of the cord axis at height z: a parabola (bend 0: straight)."""
    return 16.0 + bend * ((z_mm - 35.0) / 35.0) ** 2


def cylinder(bend, supersample=3):
    """Soft map of a tube of RADIUS around the curve (x(z), y = 16 mm): distance to the sampled axis."""
    heights = np.linspace(-20, 90, 6000)
    axis = cKDTree(np.stack([curve_x(heights, bend), np.full_like(heights, 16.0), heights], axis=1))
    k, j, i = np.indices(SIZE[::-1]).astype(float)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    inside = np.zeros(SIZE[::-1])
    for di in offsets:
        for dj in offsets:
            for dk in offsets:
                points = np.stack([(i + di) * SPACING[0], (j + dj) * SPACING[1], (k + dk) * SPACING[2]], -1)
                distance, _ = axis.query(points.reshape(-1, 3))
                inside += (distance.reshape(inside.shape) <= RADIUS)
    return grid(inside / supersample ** 3)


def disc_image(discs, bend):
    """Single-voxel disc labels on the cord axis at the given slices: {value: slice}."""
    array = np.zeros(SIZE[::-1], np.uint8)
    for value, k in discs.items():
        x = curve_x(k * SPACING[2], bend)
        array[k, int(round(16.0 / SPACING[1])), int(round(x / SPACING[0]))] = value
    return grid(array)


DISCS = {5: 12, 4: 30, 3: 50}  # C4-C5 at slice 12, C3-C4 at 30, C2-C3 at 50


def expected_level(k):
    """SCT's rule on DISCS: a slice takes the first disc at or above it; above the top disc, its value - 1."""
    for value, disc_slice in sorted(DISCS.items(), key=lambda item: item[1]):
        if k <= disc_slice:
            return value
    return min(DISCS) - 1


@pytest.mark.parametrize("bend", [0.0, 6.0], ids=["straight", "curved"])
def test_phantom_per_level_rows_match_the_discs(bend):
    cord = cylinder(bend)
    tables = level_tables(cord, LevelSource("discs", disc_image(DISCS, bend), "discs"))
    per_slice = tables.per_slice
    assert list(per_slice["level"]) == [expected_level(k) for k in per_slice["slice"]]
    rows = tables.per_level.set_index("level_name")
    assert list(rows.index) == ["all", "C2", "C3", "C4", "C5"]
    assert (rows.loc["C3", "first_slice"], rows.loc["C3", "last_slice"]) == (31, 50)
    assert (rows.loc["C4", "first_slice"], rows.loc["C4", "last_slice"]) == (13, 30)
    for level in ("C2", "C3", "C4", "C5"):
        for column in ("area_mm2_mean", "area_binary_mm2_mean"):
            assert rows.loc[level, column] == pytest.approx(math.pi * RADIUS ** 2, rel=0.03), (level, column)
    if bend:  # the uncorrected area of the bent part is larger: the correction did something
        assert rows.loc["C5", "area_uncorrected_mm2_mean"] > 1.02 * math.pi * RADIUS ** 2


def test_sct_rule_on_a_case_computed_by_hand():
    """SCT's label_regions_from_reference on a 45-degree cord, computed by hand.

    The cord runs along x = z (1 mm voxels), one centreline point per slice at
    (t, 8, t). Disc 4 sits at x = 10 mm, z = 6 mm: its squared distances to
    the points t = 7, 8, 9 are 10, 8, 10, so project_centerline puts it on
    slice 8 (not its own slice 6). Disc 3 sits on the axis at slice 14.
    Sorted by centreline index: [4 @ 8, 3 @ 14], regions [4 | 3 | 2]; with
    numpy.searchsorted(side='left') slices up to 8 are 4, 9 to 14 are 3,
    above 14 are 2.
    """
    size = (40, 16, 24)
    k, j, i = np.indices(size[::-1]).astype(float)
    # Distance to the line x = z, y = 8 (direction (1, 0, 1)/sqrt 2), with 3x3x3 supersampling.
    inside = np.zeros(size[::-1])
    for d in (np.arange(3) + 0.5) / 3 - 0.5:
        for e in (np.arange(3) + 0.5) / 3 - 0.5:
            for f in (np.arange(3) + 0.5) / 3 - 0.5:
                x, y, z = i + d, j + e, k + f
                along = (x + z) / 2
                inside += ((x - along) ** 2 + (y - 8) ** 2 + (z - along) ** 2) <= 3.0 ** 2
    cord = sitk.GetImageFromArray((inside / 27).astype(np.float32))
    discs = np.zeros(size[::-1], np.uint8)
    discs[6, 8, 10] = 4
    discs[14, 8, 14] = 3
    levels = levels_per_slice(cord, LevelSource("discs", sitk.GetImageFromArray(discs)))
    present = np.flatnonzero(inside.any(axis=(1, 2)))
    expected = np.zeros(size[2], int)
    for s in range(present[0], present[-1] + 1):
        expected[s] = 4 if s <= 8 else 3 if s <= 14 else 2
    assert levels.tolist() == expected.tolist()


def test_mid_vertebral_labels_follow_the_template_between_labels():
    cord = cylinder(0.0)
    bodies = disc_image({5: 10, 4: 30, 3: 51}, 0.0)  # mid-body of C5, C4, C3
    levels = levels_per_slice(cord, LevelSource("bodies", bodies))
    # By hand from PAM50_LEVEL_SLICES: centres C5 817, C4 852, C3 889 (template slices). C5|C4 edge at
    # 833.5: slice 10 + 16.5 * 20 / 35 = 19.4; C4|C3 edge at 870.5: 30 + 18.5 * 21 / 37 = 40.5; C5 reaches
    # down to 800.5: 10 - 16.5 * 20 / 35 = 0.57; C3 up to 907.5: 51 + 18.5 * 21 / 37 = 61.5.
    expected = [0 if k < 1 else 5 if k <= 19 else 4 if k <= 40 else 3 if k <= 61 else 0 for k in range(SIZE[2])]
    assert levels.tolist() == expected


def test_two_mid_vertebral_labels_far_apart_give_every_level_between(shared_data):
    """SCT's 2014 errsm_11 scan: manual cord, mid-vertebral labels C2 (2) and T2 (9) only."""
    folder = shared_data / "sct_history_errsm" / "errsm_11"
    cord = sitk.ReadImage(str(folder / "t2_manual_segmentation.nii.gz"))
    bodies = sitk.ReadImage(str(folder / "t2_landmarks_C2_T2_center.nii.gz"))
    tables = level_tables(cord, LevelSource("bodies", bodies, "landmarks"))
    per_level = tables.per_level.dropna(subset=["level"]).set_index("level")
    assert list(per_level.index) == list(range(2, 10))
    # The labelled slices lie in their own level.
    axial = sitk.GetArrayFromImage(sitk.DICOMOrient(bodies, "LAS"))
    for value in (2, 9):
        k = int(np.argwhere(axial == value)[0][0])
        assert tables.slice_levels[k] == value
    # Level heights follow the template's: C3 to T1 each between 60 % and 160 % of the template's, in mm.
    for level in range(3, 9):
        first, last = PAM50_LEVEL_SLICES[level]
        height = per_level.loc[level, "n_slices"] * 1.0  # 1 mm slices
        assert 0.6 < height / ((last - first + 1) * 0.5) < 1.6, level
    assert 50 < per_level.loc[3, "area_mm2_mean"] < 110  # an adult's cord at C3


def test_pam50_normalization_stretches_each_level():
    # Levels 2 (cut by the field of view), 3 and 4 (complete), 5 (cut): constant CSA per level.
    levels = [5] * 6 + [4] * 20 + [3] * 25 + [2] * 10
    per_slice = pd.DataFrame({"slice": range(len(levels)), "z_mm": np.arange(len(levels)) * 1.0,
                              "level": pd.array(levels, dtype="Int64")})
    per_slice["area_mm2"] = per_slice["level"].astype(float) * 10.0
    table = normalize_to_pam50(per_slice, ["area_mm2"])
    for level in (3, 4):  # complete levels fill the template's slices of the level
        rows = table[table["level"] == level]
        assert len(rows) == PAM50_LEVEL_SLICES[level][1] - PAM50_LEVEL_SLICES[level][0] + 1
        assert rows["area_mm2"].notna().all() and (rows["area_mm2"] == level * 10.0).all()
    scale = np.mean([37 / 25, 37 / 20])  # PAM50 slices of C3 and C4 over the scan's
    top = table[(table["level"] == 2) & table["area_mm2"].notna()]
    assert top["pam50_slice"].min() == PAM50_LEVEL_SLICES[2][0]  # anchored at the C2-C3 disc
    assert len(top) == pytest.approx(9 * scale + 1, abs=1)
    bottom = table[(table["level"] == 5) & table["area_mm2"].notna()]
    assert bottom["pam50_slice"].max() == PAM50_LEVEL_SLICES[5][1]  # anchored at the C4-C5 disc
    assert len(bottom) == pytest.approx(5 * scale + 1, abs=1)
    assert table["pam50_slice"].is_monotonic_increasing


def test_lesions_per_level_counts_and_volumes():
    array = np.zeros(SIZE[::-1], np.uint8)
    array[20:23, 18:20, 18:20] = 1  # 12 voxels at slices 20-22 (level 4)
    array[29:33, 18:20, 18:20] = 1  # 16 voxels across the C3-C4 disc (slices 29-30: 4; 31-32: 3)
    levels = np.array([expected_level(k) for k in range(SIZE[2])])
    table = lesions_per_level(grid(array), levels).set_index("level")
    voxel = SPACING[0] * SPACING[1] * SPACING[2]
    assert table.loc[4, "n_lesions"] == 2 and table.loc[3, "n_lesions"] == 1
    assert table.loc[4, "lesion_volume_mm3"] == pytest.approx(20 * voxel)
    assert table.loc[3, "lesion_volume_mm3"] == pytest.approx(8 * voxel)
    assert table.attrs["total_lesions"] == 2


def test_level_and_disc_names():
    assert [level_name(v) for v in (1, 2, 7, 8, 19, 20, 24, 25)] == ["C1", "C2", "C7", "T1", "T12", "L1", "L5", "S1"]
    assert disc_name(3) == "C2-C3" and disc_name(8) == "C7-T1" and disc_name(20) == "T12-L1"


@pytest.mark.parametrize("case,message", [
    ("mask", "single voxels"),
    ("duplicate", "several voxels"),
    ("misnumbered", "must decrease"),
    ("negative", "positive integers"),
    ("nan", "NaN"),
    ("only_landmarks", "no disc"),
])
def test_bad_disc_labels_are_refused_with_the_file_name(case, message):
    cord = cylinder(0.0, supersample=1)
    array = sitk.GetArrayFromImage(disc_image(DISCS, 0.0)).astype(np.float32)
    if case == "mask":
        array = sitk.GetArrayFromImage(cord)
    elif case == "duplicate":
        array[40, 20, 20] = 4
    elif case == "misnumbered":
        fives, threes = array == 5, array == 3
        array[fives], array[threes] = 3, 5
    elif case == "negative":
        array[array == 5] = -5
    elif case == "nan":
        array[0, 0, 0] = np.nan
    elif case == "only_landmarks":
        array[array > 0] = 0
        array[60, 20, 20] = 50
    with pytest.raises(InputImageError, match=message) as error:
        levels_per_slice(cord, LevelSource("discs", grid(array), "odd_discs.nii.gz"))
    assert "odd_discs.nii.gz" in str(error.value)
