"""The one binarization rule: bounds, parsing, comparison, roles, largest component, restrict-to-cord."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SpinalCordSegLib.imaging.binarization import (
    DEFAULT_THRESHOLD,
    MaskOptions,
    binary_mask_images,
    binary_masks,
    check_threshold,
    clamp_to_slider,
    cord_structure,
    dependents,
    largest_component,
    lesion_structures,
    parse_thresholds,
)
from SpinalCordSegLib.errors import SpinalCordSegError


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), float("inf"), "x", None])
def test_thresholds_outside_the_open_unit_interval_are_refused(bad):
    with pytest.raises(SpinalCordSegError, match="threshold"):
        check_threshold(bad)


def test_threshold_text_sets_all_or_named_structures():
    assert parse_thresholds(None, ["sc", "lesion"]) == {"sc": DEFAULT_THRESHOLD, "lesion": DEFAULT_THRESHOLD}
    assert parse_thresholds("0.3", ["sc", "lesion"]) == {"sc": 0.3, "lesion": 0.3}
    assert parse_thresholds("lesion=0.2", ["sc", "lesion"], {"sc": 0.4}) == {"sc": 0.4, "lesion": 0.2}
    with pytest.raises(SpinalCordSegError, match="unknown structure 'csf'"):
        parse_thresholds("csf=0.2", ["sc"])
    with pytest.raises(SpinalCordSegError, match="strictly between"):
        parse_thresholds("sc=1.2", ["sc"])


def test_slider_clamp_stays_inside_the_valid_bounds():
    assert clamp_to_slider(0.0) == 0.01 and clamp_to_slider(1.0) == 0.99 and clamp_to_slider(0.42) == 0.42
    check_threshold(clamp_to_slider(0.0))


def test_roles_follow_the_bids_labels():
    assert cord_structure(["lesion", "spinalcord"]) == "spinalcord"
    assert cord_structure(["csf"]) is None
    assert lesion_structures(["sc", "lesion", "csf"]) == ["lesion"]


def test_a_voxel_exactly_at_the_threshold_is_inside():
    masks = binary_masks({"sc": np.array([0.49999, 0.5, 0.7])}, {"sc": 0.5}, MaskOptions(False, False))
    assert masks["sc"].tolist() == [False, True, True]


def _reference_largest(mask):
    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == np.argmax(sizes)


@pytest.mark.parametrize("seed", range(5))
def test_largest_component_matches_a_full_volume_labelling(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((30, 40, 50), bool)
    mask[5:25, 18:22, 20:24] = True  # the "cord"
    mask |= rng.random(mask.shape) > 0.995  # scattered false positives, some touching the cord
    result = largest_component(mask)
    np.testing.assert_array_equal(result, _reference_largest(mask))


def test_largest_component_keeps_empty_and_single_masks_unchanged():
    empty = np.zeros((4, 4, 4), bool)
    assert not largest_component(empty).any()
    one = empty.copy()
    one[1:3, 1:3, 1:3] = True
    np.testing.assert_array_equal(largest_component(one), one)


def test_options_drop_stray_cord_and_outside_lesions():
    sc = np.zeros((10, 10, 10))
    sc[2:8, 4:6, 4:6] = 0.9
    sc[0, 0, 0] = 0.9  # stray cord voxel on "muscle"
    lesion = np.zeros_like(sc)
    lesion[4, 4, 4] = 0.8  # inside the cord
    lesion[9, 9, 9] = 0.8  # outside the cord
    thresholds = {"sc": 0.5, "lesion": 0.5}
    masks = binary_masks({"sc": sc, "lesion": lesion}, thresholds, MaskOptions(True, True))
    assert not masks["sc"][0, 0, 0] and masks["sc"].sum() == 24
    assert masks["lesion"].sum() == 1 and masks["lesion"][4, 4, 4]
    plain = binary_masks({"sc": sc, "lesion": lesion}, thresholds, MaskOptions(False, False))
    assert plain["sc"].sum() == 25 and plain["lesion"].sum() == 2
    moving = binary_masks({"sc": sc, "lesion": lesion}, thresholds, MaskOptions(True, True), settled=False)
    assert moving["sc"].sum() == 25, "the labelling waits until the slider settles"


def test_only_the_wanted_masks_are_returned_and_dependents_follow_the_options():
    soft = {"sc": np.full(4, 0.9), "lesion": np.full(4, 0.9)}
    assert list(binary_masks(soft, {"sc": 0.5, "lesion": 0.5}, structures=["lesion"])) == ["lesion"]
    assert dependents("sc", ["sc", "lesion"], MaskOptions(True, True)) == ["sc", "lesion"]
    assert dependents("sc", ["sc", "lesion"], MaskOptions(True, False)) == ["sc"]
    assert dependents("lesion", ["sc", "lesion"], MaskOptions(True, True)) == ["lesion"]


def test_options_round_trip_through_sidecars():
    options = MaskOptions(keep_largest_cord=False, restrict_lesions_to_cord=True)
    assert MaskOptions.from_sidecar(options.to_sidecar()) == options
    assert MaskOptions.from_sidecar({}) == MaskOptions(False, False)


def test_mask_images_keep_each_maps_grid():
    soft = sitk.GetImageFromArray(np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4))
    soft.SetSpacing((0.5, 0.7, 3.0))
    soft.SetOrigin((1.0, 2.0, 3.0))
    mask = binary_mask_images({"sc": soft}, {"sc": 0.5}, MaskOptions(False, False))["sc"]
    assert mask.GetPixelID() == sitk.sitkUInt8 and mask.GetSpacing() == soft.GetSpacing()
    assert mask.GetOrigin() == soft.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(soft) >= 0.5)
