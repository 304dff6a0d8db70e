"""Thresholds and the masks they give (SpinalCordSegLib.imaging.thresholds)."""

import json

import numpy as np
import pytest

from SpinalCordSegLib.imaging.binarization import MaskOptions, largest_component
from SpinalCordSegLib.imaging.thresholds import ThresholdState, volume_mm3


def test_thresholds_default_to_the_model_or_one_half_and_stay_in_range():
    state = ThresholdState(["sc", "lesion"], defaults={"lesion": 0.3})
    assert state.thresholds == {"sc": 0.5, "lesion": 0.3}
    state.set_threshold("sc", 1.5)
    state.set_threshold("lesion", -2)
    assert state.thresholds == {"sc": 0.99, "lesion": 0.01}
    with pytest.raises(KeyError, match="unknown structure 'gm'"):
        state.set_threshold("gm", 0.5)


def test_masks_follow_the_binarization_rule():
    soft = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 1, 101)
    state = ThresholdState(["sc"])
    state.set_threshold("sc", 0.25)
    mask = state.masks({"sc": soft})["sc"]
    np.testing.assert_array_equal(mask, soft >= np.float32(0.25))  # inclusive, as outputs.binarize


def test_largest_cord_component_keeps_only_the_biggest_island():
    soft = np.zeros((5, 10, 10), np.float32)
    soft[1:4, 1:5, 1:5] = 0.9  # 48 voxels
    soft[1:3, 7:9, 7:9] = 0.9  # 8 voxels, separate
    state = ThresholdState(["sc"], options=MaskOptions(keep_largest_cord=True))
    mask = state.masks({"sc": soft})["sc"]
    assert mask.sum() == 48 and not mask[1:3, 7:9, 7:9].any()
    # diagonal neighbours connect (26-connectivity), so a corner touch is one component
    touching = np.zeros((3, 3, 3), bool)
    touching[0, 0, 0] = touching[1, 1, 1] = True
    assert largest_component(touching).sum() == 2


def test_lesions_restricted_to_the_cord_and_cord_threshold_moves_them():
    soft_sc = np.array([[[0.9, 0.9, 0.2, 0.2]]], np.float32)
    soft_lesion = np.array([[[0.8, 0.1, 0.8, 0.1]]], np.float32)
    state = ThresholdState(["sc", "lesion"], options=MaskOptions(False, False))
    assert state.set_threshold("sc", 0.5) == ["sc"]  # option off: the cord alone
    maps = {"sc": soft_sc, "lesion": soft_lesion}
    assert state.masks(maps)["lesion"].tolist() == [[[True, False, True, False]]]
    assert state.set_options(keep_largest_cord=False, restrict_lesions_to_cord=True) == ["lesion"]
    assert state.masks(maps, ["lesion"])["lesion"].tolist() == [[[True, False, False, False]]]
    assert state.set_threshold("sc", 0.1) == ["sc", "lesion"]
    assert state.masks(maps, ["lesion"])["lesion"].tolist() == [[[True, False, True, False]]]


def test_threshold_state_round_trips_through_json():
    state = ThresholdState(["sc", "lesion"], {"lesion": 0.2}, MaskOptions(keep_largest_cord=True))
    copy = ThresholdState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert copy.to_dict() == state.to_dict()


def test_volume_in_mm3_uses_the_spacing():
    mask = np.zeros((4, 4, 4), bool)
    mask[:2, :2, :] = True  # 16 voxels
    assert volume_mm3(mask, (0.5, 0.5, 2.0)) == pytest.approx(16 * 0.5)
