"""Lesion metrics on analytic phantoms (ellipsoids in a cylindrical cord) and on SCT's test scan.

Phantoms are drawn with NumPy on an identity-direction grid (x toward L, y
toward P, z toward S, mm from the grid centre), then presented in other
orientations with SimpleITK's DICOMOrient, which permutes and flips the axes
and the direction matrix without resampling: the anatomy stays the same.
"""

import math

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.errors import InputImageError
from SpinalCordSegLib.measures.lesion_metrics import LESION_COLUMNS, lesion_metrics, lesion_totals
from SpinalCordSegLib.measures.morphometrics import load_image

CORD_RADIUS = 5.0


def coordinates(shape, spacing):
    """x, y, z (mm, from the grid centre) of the voxel centres of an array of ``shape`` (z, y, x)."""
    k, j, i = np.indices(shape).astype(float)
    return tuple((index - (n - 1) / 2) * step for index, n, step in zip((i, j, k), shape[::-1], spacing))


def as_image(array, spacing, orientation):
    """The array (z, y, x) as an image centred on the physical origin, shown in ``orientation``."""
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin([-(n - 1) / 2 * step for n, step in zip(array.shape[::-1], spacing)])
    return sitk.DICOMOrient(image, orientation)


def ellipsoid(x, y, z, centre, semi_axes):
    return sum(((c - c0) / a) ** 2 for c, c0, a in zip((x, y, z), centre, semi_axes)) <= 1.0


LESIONS = [  # centre (mm), semi-axes along x (RL), y (AP), z (SI) in mm
    ((0.5, -0.5, -9.0), (3.0, 2.5, 6.0)),
    ((-1.0, 1.0, 10.0), (2.5, 2.0, 4.0)),
]


@pytest.mark.parametrize("orientation,spacing", [
    ("LPS", (0.5, 0.6, 0.8)),
    ("RAS", (0.6, 0.5, 1.0)),
    ("PSR", (0.5, 0.5, 0.7)),
    ("LPI", (0.4, 0.6, 1.2)),
])
def test_ellipsoid_lesions_in_a_straight_cord(orientation, spacing):
    shape = (int(40 / spacing[2]), int(14 / spacing[1]), int(14 / spacing[0]))
    x, y, z = coordinates(shape, spacing)
    cord = np.hypot(x, y) <= CORD_RADIUS
    masks = [ellipsoid(x, y, z, centre, semi_axes) for centre, semi_axes in LESIONS]

    table = lesion_metrics(as_image(masks[0] | masks[1], spacing, orientation),
                           as_image(cord, spacing, orientation))

    assert list(table.columns) == list(LESION_COLUMNS)
    assert list(table["lesion"]) == [1, 2]  # numbered from inferior to superior
    for (_, row), mask, (centre, (a, b, c)) in zip(table.iterrows(), masks, LESIONS):
        assert row["volume_mm3"] == pytest.approx(mask.sum() * np.prod(spacing))
        assert row["volume_mm3"] == pytest.approx(4 / 3 * math.pi * a * b * c, rel=0.04)
        assert abs(row["length_mm"] - 2 * c) <= spacing[2]
        assert row["max_equivalent_diameter_mm"] == pytest.approx(2 * math.sqrt(a * b), rel=0.04)
        # The ratio of the digitized areas exactly; the analytic ratio up to
        # the digitization of two small discs.
        per_slice = mask.sum(axis=(1, 2)) / np.maximum(cord.sum(axis=(1, 2)), 1)
        assert row["max_axial_damage_ratio"] == pytest.approx(per_slice.max())
        assert row["max_axial_damage_ratio"] == pytest.approx(a * b / CORD_RADIUS ** 2, rel=0.07)
        assert row["share_in_cord"] == 1.0
        assert math.isnan(row["mean_probability"]) and math.isnan(row["max_probability"])
        # RAS centroid: x (toward L) and y (toward P) change sign.
        assert (row["centroid_R_mm"], row["centroid_A_mm"], row["centroid_S_mm"]) == pytest.approx(
            (-centre[0], -centre[1], centre[2]), abs=0.3)
    totals = lesion_totals(table)
    assert totals["count"] == 2
    assert totals["total_volume_mm3"] == pytest.approx(table["volume_mm3"].sum())
    assert totals["max_axial_damage_ratio"] == table["max_axial_damage_ratio"].max()


@pytest.mark.parametrize("degrees", [20.0, 35.0])
def test_lesion_length_and_diameter_are_angle_corrected(degrees):
    spacing = (0.5, 0.5, 1.0)
    shape = (30, 24, 60)
    x, y, z = coordinates(shape, spacing)
    # Cord tilted toward L; the lesion fills the cord between two axial planes.
    slope = math.tan(math.radians(degrees))
    cord = np.hypot((x - slope * z) * math.cos(math.radians(degrees)), y) <= CORD_RADIUS
    lesion = cord & (np.abs(z) < 6.0)
    lesion_image, cord_image = as_image(lesion, spacing, "RAS"), as_image(cord, spacing, "RAS")

    row = lesion_metrics(lesion_image, cord_image).iloc[0]
    n_slices = row["last_slice"] - row["first_slice"] + 1
    cosine = math.cos(math.radians(degrees))
    assert row["length_mm"] == pytest.approx(n_slices * spacing[2] / cosine, rel=0.02)
    assert row["max_equivalent_diameter_mm"] == pytest.approx(2 * CORD_RADIUS, rel=0.03)
    assert row["max_axial_damage_ratio"] == 1.0

    # Without a cord there is no angle: length is slices times thickness, no damage ratio.
    alone = lesion_metrics(lesion_image).iloc[0]
    assert alone["length_mm"] == pytest.approx(n_slices * spacing[2])
    uncorrected = row["max_equivalent_diameter_mm"] / math.sqrt(cosine)
    assert alone["max_equivalent_diameter_mm"] == pytest.approx(uncorrected, rel=0.02)
    assert math.isnan(alone["max_axial_damage_ratio"]) and math.isnan(alone["share_in_cord"])
    assert alone["volume_mm3"] == row["volume_mm3"]


def test_lesions_are_26_connected():
    array = np.zeros((10, 10, 10), bool)
    array[2, 2, 2] = array[3, 3, 3] = True  # corner contact only: one lesion
    array[7, 7, 7] = True
    array[7, 7, 5] = True  # one voxel gap: separate lesions
    table = lesion_metrics(as_image(array, (1.0, 1.0, 1.0), "LPS"))
    assert sorted(table["n_voxels"]) == [1, 1, 2]


def test_soft_lesion_map_gives_lesion_confidence():
    spacing = (0.5, 0.5, 0.5)
    x, y, z = coordinates((30, 30, 30), spacing)
    soft = np.where(ellipsoid(x, y, z, (0, 0, 0), (4, 4, 4)), 0.3, 0.0)  # halo below the threshold
    soft[ellipsoid(x, y, z, (0, 0, 0), (3, 3, 3))] = 0.6
    soft[ellipsoid(x, y, z, (0, 0, 0), (2, 2, 2))] = 0.9
    table = lesion_metrics(as_image(soft, spacing, "PSR"))
    assert len(table) == 1
    counted = soft[soft > 0.5]
    assert table.loc[0, "n_voxels"] == counted.size
    assert table.loc[0, "mean_probability"] == pytest.approx(counted.mean())
    assert table.loc[0, "max_probability"] == pytest.approx(0.9)


def test_share_of_a_lesion_straddling_the_cord_edge():
    spacing = (0.5, 0.5, 0.5)
    x, y, z = coordinates((30, 40, 40), spacing)
    cord = np.hypot(x, y) <= CORD_RADIUS
    lesion = ellipsoid(x, y, z, (CORD_RADIUS, 0, 0), (2.0, 2.0, 3.0))
    row = lesion_metrics(as_image(lesion, spacing, "LPI"), as_image(cord, spacing, "LPI")).iloc[0]
    assert row["share_in_cord"] == pytest.approx(0.5, abs=0.1)
    assert 0 < row["max_axial_damage_ratio"] < 1


def test_cord_class_without_the_lesion_gives_the_same_damage_ratio():
    # A softmax model's "cord" class leaves the lesion out; the cord section
    # for the damage ratio still includes it (a region model's cord would).
    spacing = (0.5, 0.5, 1.0)
    x, y, z = coordinates((20, 30, 30), spacing)
    cord = np.hypot(x, y) <= CORD_RADIUS
    lesion = ellipsoid(x, y, z, (1.0, 0.0, 0.0), (2.5, 2.0, 5.0))
    lesion_image = as_image(lesion, spacing, "RAS")
    region = lesion_metrics(lesion_image, as_image(cord, spacing, "RAS")).iloc[0]
    softmax = lesion_metrics(lesion_image, as_image(cord & ~lesion, spacing, "RAS")).iloc[0]
    assert softmax["max_axial_damage_ratio"] == pytest.approx(region["max_axial_damage_ratio"])
    assert region["share_in_cord"] == 1.0 and softmax["share_in_cord"] == 0.0


def test_no_lesion_gives_an_empty_table():
    empty = sitk.Image([8, 8, 8], sitk.sitkUInt8)
    table = lesion_metrics(empty)
    assert table.empty and list(table.columns) == list(LESION_COLUMNS)
    assert lesion_totals(table)["count"] == 0
    assert lesion_totals(table)["total_volume_mm3"] == 0.0


def test_bad_lesion_inputs_raise_clear_errors():
    lesion = sitk.Image([8, 8, 8], sitk.sitkUInt8)
    cord = sitk.Image([8, 8, 9], sitk.sitkUInt8)
    with pytest.raises(InputImageError, match="sc.nii.gz is not on the grid of les.nii.gz: size"):
        lesion_metrics(lesion, cord, name="les.nii.gz", cord_name="sc.nii.gz")
    with pytest.raises(InputImageError, match="les.nii.gz: values must lie in \\[0, 1\\]"):
        lesion_metrics(lesion + 2, name="les.nii.gz")


@pytest.mark.parametrize("start,size", [
    # SCT's own expectations for sct_analyze_lesion on this scan (its testing
    # suite): boxes of voxels (x, y, z) in t2.nii.gz's voxel order, y along S.
    ((29, 45, 25), (3, 10, 2)),
    ((29, 27, 25), (1, 4, 1)),
])
def test_box_lesions_in_sct_t2_match_sct_expectations(shared_data, start, size):
    cord = load_image(shared_data / "sct_testing_data" / "t2" / "t2_seg-manual.nii.gz")
    cord_array = sitk.GetArrayFromImage(cord)  # (z, y, x)
    lesion_array = np.zeros_like(cord_array)
    lesion_array[start[2]:start[2] + size[2], start[1]:start[1] + size[1], start[0]:start[0] + size[0]] = 1
    lesion = sitk.GetImageFromArray(lesion_array)
    lesion.CopyInformation(cord)

    row = lesion_metrics(lesion, cord).iloc[0]
    cross_section = size[0] * size[2]  # 1 mm isotropic voxels
    smallest_cord_area = min(cord_array[:, y, :].sum() for y in range(start[1], start[1] + size[1]))
    assert row["volume_mm3"] == pytest.approx(cross_section * size[1])
    assert row["max_axial_damage_ratio"] == pytest.approx(cross_section / smallest_cord_area)
    assert size[1] <= row["length_mm"] <= size[1] * 1.01
    expected_diameter = 2 * math.sqrt(cross_section / math.pi)
    assert expected_diameter * 0.99 <= row["max_equivalent_diameter_mm"] <= expected_diameter


def test_fake_lesion_scan(sample_data):
    """The bundled sample is SCT's t2_fake_lesion; its masks are t2_fake_lesion_{lesion,sc}_seg."""
    lesion = load_image(sample_data.lesion)
    table = lesion_metrics(lesion, load_image(sample_data.cord))
    array = sitk.GetArrayFromImage(lesion)
    assert len(table) == 1
    assert table.loc[0, "volume_mm3"] == pytest.approx(array.sum() * np.prod(lesion.GetSpacing()))
    assert table.loc[0, "share_in_cord"] == 1.0
    assert 0.05 < table.loc[0, "max_axial_damage_ratio"] < 1.0
