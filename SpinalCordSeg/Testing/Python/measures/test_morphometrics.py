"""Cord CSA and shape on analytic phantoms and on the shared scans' cord masks.

Phantoms are drawn in physical (LPS) space on SimpleITK grids of several
orientations and anisotropic spacings; a voxel's value is the fraction of its
sub-voxel samples inside the shape (its partial volume), and binary masks are
that fraction above 0.5.
"""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.errors import InputImageError
from SpinalCordSegLib.measures.morphometrics import (
    cord_morphometrics,
    load_image,
    summarize_cord,
)

# Physical axis (LPS) of each orientation letter.
AXIS_OF_LETTER = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
GRIDS = [  # orientation, spacing along the image axes (mm)
    ("LPS", (0.8, 0.9, 1.5)),
    ("RAS", (0.7, 0.7, 2.0)),
    ("PSR", (0.9, 1.2, 0.6)),
    ("LPI", (1.0, 0.6, 0.75)),
]
RADIUS = 5.0  # mm: CSA 78.5 mm2, an adult cervical cord


def direction_of(orientation):
    """Direction matrix (3x3) of an axis-aligned grid with this DICOM orientation."""
    image = sitk.DICOMOrient(sitk.Image([2, 2, 2], sitk.sitkUInt8), orientation)
    return np.array(image.GetDirection()).reshape(3, 3)


def rasterize(inside, orientation, spacing, extent, supersample=3, direction=None, centre=(0.0, 0.0, 0.0)):
    """Partial-volume image of ``inside(points_lps) -> bool`` on a grid covering ``extent``.

    ``extent`` is in mm along L, P and S.

    ``supersample`` (odd, so that no voxel is exactly half inside) samples per voxel side.
    """
    direction = direction_of(orientation) if direction is None else direction
    size = [int(math.ceil(extent[AXIS_OF_LETTER[letter]] / step))
            for letter, step in zip(orientation, spacing)]
    spacing = np.asarray(spacing, float)
    origin = np.asarray(centre) - direction @ ((np.array(size) - 1) / 2 * spacing)
    k, j, i = np.indices(size[::-1]).astype(float)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    fraction = np.zeros(size[::-1])
    for di, dj, dk in itertools.product(offsets, repeat=3):
        index_mm = np.stack([i + di, j + dj, k + dk], axis=-1) * spacing
        fraction += inside(index_mm @ direction.T + origin)
    image = sitk.GetImageFromArray((fraction / supersample ** 3).astype(np.float32))
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin(tuple(origin))
    return image


def binarize(image):
    return sitk.Cast(image > 0.5, sitk.sitkUInt8)


def tilted_axis(degrees_about_ap=0.0, degrees_about_rl=0.0):
    """Unit cord axis tilted from S toward L (about AP) and toward P (about RL)."""
    axis = np.array([math.tan(math.radians(degrees_about_ap)), math.tan(math.radians(degrees_about_rl)), 1.0])
    return axis / np.linalg.norm(axis)


def elliptic_cylinder(semi_rl, semi_ap, axis=(0.0, 0.0, 1.0), centre=(0.3, -0.2, 0.0)):
    """Cylinder along ``axis`` whose section has semi-axes ``semi_rl`` (RL) and ``semi_ap`` (AP)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    rl = np.array([1.0, 0.0, 0.0]) - axis[0] * axis
    rl /= np.linalg.norm(rl)
    ap = np.cross(axis, rl)

    def inside(points):
        offset = points - np.asarray(centre)
        return (offset @ rl / semi_rl) ** 2 + (offset @ ap / semi_ap) ** 2 <= 1.0

    return inside


def relative_error(measured, expected):
    return abs(measured - expected) / expected


@pytest.mark.parametrize("orientation,spacing", GRIDS)
def test_straight_cylinder_csa_is_pi_r_squared(orientation, spacing):
    soft = rasterize(elliptic_cylinder(RADIUS, RADIUS), orientation, spacing, (20, 20, 12))
    for image in (soft, binarize(soft)):
        table = cord_morphometrics(image)
        assert table["n_objects"].eq(1).all()
        assert relative_error(table["area_mm2"].mean(), math.pi * RADIUS ** 2) < 0.02
        assert table["angle_deg"].max() < 1.0
        assert relative_error(table["diameter_AP_mm"].mean(), 2 * RADIUS) < 0.03
        assert relative_error(table["diameter_RL_mm"].mean(), 2 * RADIUS) < 0.03
        assert table["eccentricity"].max() < 0.35
        assert table["solidity"].min() > 0.95


@pytest.mark.parametrize("degrees", [20.0, 35.0])
@pytest.mark.parametrize("about", ["AP", "RL", "both"])
def test_tilted_cylinder_csa_is_angle_corrected(degrees, about):
    if about == "AP":
        axis = tilted_axis(degrees_about_ap=degrees)
    elif about == "RL":
        axis = tilted_axis(degrees_about_rl=degrees)
    else:  # the same 3D angle, split equally between the two planes
        half = math.degrees(math.atan(math.tan(math.radians(degrees)) / math.sqrt(2)))
        axis = tilted_axis(half, half)
    soft = rasterize(elliptic_cylinder(RADIUS, RADIUS, axis), "PSR", (0.9, 1.2, 0.8), (48, 48, 24))
    expected = math.pi * RADIUS ** 2
    for image in (soft, binarize(soft)):
        table = cord_morphometrics(image)
        assert relative_error(table["area_mm2"].mean(), expected) < 0.03
        assert table["area_uncorrected_mm2"].mean() > 1.05 * expected
        oblique_section = expected / math.cos(math.radians(degrees))
        assert relative_error(table["area_uncorrected_mm2"].mean(), oblique_section) < 0.03
        assert table["angle_deg"].mean() == pytest.approx(degrees, abs=1.0)
        assert relative_error(table["diameter_RL_mm"].mean(), 2 * RADIUS) < 0.03
        assert relative_error(table["diameter_AP_mm"].mean(), 2 * RADIUS) < 0.03
        # PSR: the S axis is the second image axis, so slices are 1.2 mm thick.
        assert table["length_mm"].mean() == pytest.approx(1.2 / math.cos(math.radians(degrees)), rel=0.02)
        uncorrected = cord_morphometrics(image, angle_correction=False)
        assert uncorrected["angle_deg"].eq(0).all()
        assert uncorrected["area_mm2"].mean() == pytest.approx(table["area_uncorrected_mm2"].mean())


def test_tilt_angles_are_split_into_coronal_and_sagittal_parts():
    # Tilt toward Left (about AP) and toward Posterior (about RL): in the
    # L, A, S frame of the tables, angle_AP is positive and angle_RL negative.
    axis = tilted_axis(degrees_about_ap=15.0, degrees_about_rl=25.0)
    table = cord_morphometrics(rasterize(elliptic_cylinder(RADIUS, RADIUS, axis), "RAS", (0.8, 0.8, 1.0),
                                         (40, 48, 24)))
    assert table["angle_AP_deg"].mean() == pytest.approx(15.0, abs=1.0)
    assert table["angle_RL_deg"].mean() == pytest.approx(-25.0, abs=1.0)


@pytest.mark.parametrize("orientation,spacing", GRIDS[:3])
def test_ellipse_section_gives_ap_and_rl_diameters(orientation, spacing):
    semi_rl, semi_ap = 6.5, 4.0
    image = rasterize(elliptic_cylinder(semi_rl, semi_ap), orientation, spacing, (20, 20, 8))
    table = cord_morphometrics(image)
    assert relative_error(table["diameter_RL_mm"].mean(), 2 * semi_rl) < 0.03
    assert relative_error(table["diameter_AP_mm"].mean(), 2 * semi_ap) < 0.03
    assert table["eccentricity"].mean() == pytest.approx(math.sqrt(1 - (semi_ap / semi_rl) ** 2), abs=0.02)
    assert table["orientation_deg"].max() < 3.0
    assert relative_error(table["area_mm2"].mean(), math.pi * semi_rl * semi_ap) < 0.02


def test_ellipse_with_major_axis_along_ap_swaps_the_diameters():
    table = cord_morphometrics(rasterize(elliptic_cylinder(3.5, 6.0), "LPI", (0.6, 0.7, 1.0), (20, 20, 8)))
    assert relative_error(table["diameter_AP_mm"].mean(), 12.0) < 0.03
    assert relative_error(table["diameter_RL_mm"].mean(), 7.0) < 0.03
    assert table["orientation_deg"].min() > 87.0


def test_tilted_ellipse_diameters_are_measured_across_the_cord():
    # Tilted 30 degrees toward Left: an axial slice stretches the RL diameter by 1/cos(30).
    axis = tilted_axis(degrees_about_ap=30.0)
    image = rasterize(elliptic_cylinder(6.0, 4.0, axis), "LAS", (0.7, 0.7, 1.0), (48, 20, 24))
    table = cord_morphometrics(image)
    assert relative_error(table["diameter_RL_mm"].mean(), 12.0) < 0.03
    assert relative_error(table["diameter_AP_mm"].mean(), 8.0) < 0.03


def test_oblique_scan_is_measured_in_physical_space():
    # Slices tilted 12 degrees from the body's axial plane, cord along S.
    angle = math.radians(12.0)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
    table = cord_morphometrics(rasterize(elliptic_cylinder(RADIUS, RADIUS), "LPS", (0.8, 0.8, 1.2),
                                         (24, 30, 16), direction=rotation))
    assert table["angle_deg"].mean() == pytest.approx(12.0, abs=1.0)
    assert relative_error(table["area_mm2"].mean(), math.pi * RADIUS ** 2) < 0.02


def test_soft_map_area_is_closer_to_the_analytic_area_than_the_binarized_one():
    # Coarse pixels (1.2 mm) and a small cord: binarization error dominates.
    radius, soft_errors, binary_errors = 3.3, [], []
    for shift in np.linspace(0.0, 0.6, 5):
        soft = rasterize(elliptic_cylinder(radius, radius, centre=(shift, 0.7 * shift, 0.0)), "LPS",
                         (1.2, 1.2, 2.0), (14, 14, 6), supersample=7)
        expected = math.pi * radius ** 2
        soft_errors.append(relative_error(cord_morphometrics(soft)["area_mm2"].mean(), expected))
        binary_errors.append(relative_error(cord_morphometrics(binarize(soft))["area_mm2"].mean(), expected))
    assert max(soft_errors) < 0.01
    assert np.mean(soft_errors) < 0.5 * np.mean(binary_errors)


def test_solidity_drops_for_a_non_convex_section():
    # Two discs joined by a bar (a dumbbell): about 0.8 of its convex hull.
    lobe = elliptic_cylinder(3.0, 3.0, centre=(-4.0, 0.0, 0.0))
    other = elliptic_cylinder(3.0, 3.0, centre=(4.0, 0.0, 0.0))
    bar = elliptic_cylinder(4.0, 0.8)
    image = rasterize(lambda p: lobe(p) | other(p) | bar(p), "RAS", (0.5, 0.5, 2.0), (20, 12, 6))
    table = cord_morphometrics(image)
    assert table["n_objects"].eq(1).all()
    assert table["solidity"].max() < 0.85


def test_two_objects_on_a_slice_are_counted():
    left = elliptic_cylinder(2.0, 2.0, centre=(-5.0, 0.0, 0.0))
    right = elliptic_cylinder(2.0, 2.0, centre=(5.0, 0.0, 0.0))
    table = cord_morphometrics(rasterize(lambda p: left(p) | right(p), "LPS", (0.5, 0.5, 2.0), (20, 10, 4)))
    assert table["n_objects"].eq(2).all()
    assert relative_error(table["area_mm2"].mean(), 2 * math.pi * 4.0) < 0.02


def cone(radius_inferior, radius_superior, height):
    """Straight cord whose radius changes linearly from z = -height/2 to +height/2."""
    def inside(points):
        fraction = np.clip(points[..., 2] / height + 0.5, 0.0, 1.0)
        radius = radius_inferior + (radius_superior - radius_inferior) * fraction
        return np.hypot(points[..., 0], points[..., 1]) <= radius
    return inside


def test_summary_over_slices_and_vertebral_levels():
    spacing = (0.8, 0.8, 2.0)
    cord = rasterize(cone(3.5, 5.0, 30.0), "LPS", spacing, (16, 16, 30))
    # Level image: level 3 in the inferior half of the cord, level 2 above.
    levels = sitk.Cast(binarize(cord), sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(levels)
    array[: array.shape[0] // 2] *= 3
    array[array.shape[0] // 2:] *= 2
    labelled = sitk.GetImageFromArray(array)
    labelled.CopyInformation(cord)

    table = cord_morphometrics(cord, labelled)
    assert list(table["level"].unique()) == [3, 2]
    summary = summarize_cord(table)
    assert list(summary["level"].astype(object).fillna(0)) == [0, 2, 3]
    # Mean CSA over the cone is the mean of pi r(z)^2 over the slice centres.
    z = np.asarray(table["z_mm"])
    radius = 3.5 + 1.5 * np.clip(z / 30.0 + 0.5, 0, 1)
    assert relative_error(summary.loc[0, "area_mm2_mean"], np.mean(math.pi * radius ** 2)) < 0.02
    assert summary.loc[0, "area_mm2_sd"] == pytest.approx(np.std(math.pi * radius ** 2), rel=0.1)
    level_3 = summary[summary["level"] == 3].iloc[0]
    assert level_3["last_slice"] == array.shape[0] // 2 - 1
    assert level_3["area_mm2_mean"] < summary[summary["level"] == 2].iloc[0]["area_mm2_mean"]

    by_level = summarize_cord(table, levels=[2])
    assert by_level.loc[0, "n_slices"] == (table["level"] == 2).sum()
    by_range = summarize_cord(table, slices=(2, 5))
    assert tuple(by_range.loc[0, ["first_slice", "last_slice", "n_slices"]]) == (2, 5, 4)
    with pytest.raises(InputImageError, match="levels present \\[2, 3\\]"):
        summarize_cord(table, levels=[7])


def test_soft_noise_far_from_the_cord_is_ignored():
    soft = rasterize(elliptic_cylinder(RADIUS, RADIUS), "LPS", (0.8, 0.8, 2.0), (40, 40, 6))
    array = sitk.GetArrayFromImage(soft)
    noisy = sitk.GetImageFromArray(np.where(array > 0, array, np.float32(0.01)))
    noisy.CopyInformation(soft)
    clean_table, noisy_table = cord_morphometrics(soft), cord_morphometrics(noisy)
    for metric in ("area_mm2", "diameter_AP_mm", "diameter_RL_mm"):
        assert noisy_table[metric].mean() == pytest.approx(clean_table[metric].mean(), rel=0.02)


def test_bad_inputs_raise_clear_errors(tmp_path):
    good = rasterize(elliptic_cylinder(RADIUS, RADIUS), "LPS", (1.0, 1.0, 2.0), (14, 14, 6), supersample=1)
    with pytest.raises(InputImageError, match="scan.nii.gz: values must lie in \\[0, 1\\]"):
        cord_morphometrics(good * 3, name="scan.nii.gz")
    with pytest.raises(InputImageError, match="cord: the cord mask is empty"):
        cord_morphometrics(good * 0)
    array = sitk.GetArrayFromImage(good)
    array[0, 0, 0] = np.nan
    with pytest.raises(InputImageError, match="NaN"):
        cord_morphometrics(sitk.GetImageFromArray(array))
    with pytest.raises(InputImageError, match="expected a 3D image"):
        cord_morphometrics(sitk.Image([4, 4], sitk.sitkFloat32))
    shifted = sitk.Image(good)
    shifted.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(InputImageError, match="lv.nii.gz is not on the grid of cord.nii.gz: origin"):
        cord_morphometrics(good, sitk.Cast(shifted, sitk.sitkUInt8), name="cord.nii.gz",
                           levels_name="lv.nii.gz")
    with pytest.raises(InputImageError, match="missing.nii.gz: file not found"):
        load_image(tmp_path / "missing.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputImageError, match="broken.nii.gz: cannot be read"):
        load_image(tmp_path / "broken.nii.gz")


SHARED_MASKS = [
    "t2/t2_seg-manual.nii.gz",
    "t1/t1w_seg-manual.nii.gz",
    "t2s/t2s_seg-deepseg.nii.gz",
    "mt/mt1_seg.nii.gz",
]


def test_the_sample_cord_mask_has_adult_csa(sample_data):
    _check_adult_csa(sample_data.cord)


def test_shared_cord_masks_have_adult_csa(shared_data):
    for relative_path in SHARED_MASKS:  # other contrasts and slice thicknesses
        _check_adult_csa(shared_data / "sct_testing_data" / relative_path)


def _check_adult_csa(path):
    relative_path = path.name
    table = cord_morphometrics(load_image(path), name=str(path))
    summary = summarize_cord(table)
    mean_csa = summary.loc[0, "area_mm2_mean"]
    print(f"{relative_path}: mean CSA {mean_csa:.1f} +/- {summary.loc[0, 'area_mm2_sd']:.1f} mm2 "
          f"over {summary.loc[0, 'n_slices']} slices, angle {summary.loc[0, 'angle_deg_mean']:.1f} deg")
    assert 40.0 < mean_csa < 120.0
    assert (table["area_mm2"] <= table["area_uncorrected_mm2"] + 1e-9).all()
    assert 5.0 < summary.loc[0, "diameter_AP_mm_mean"] < summary.loc[0, "diameter_RL_mm_mean"] < 16.0
    assert summary.loc[0, "angle_deg_mean"] < 30.0
    assert pd.Series(table["solidity"]).between(0.8, 1.0).all()
