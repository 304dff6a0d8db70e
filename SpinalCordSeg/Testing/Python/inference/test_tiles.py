"""The whole field's tiles around the cord (inference/tiles.py), against nnU-Net's own sliding window."""

import numpy as np
import pytest
import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

from SpinalCordSegLib.inference.tiles import TileSelection, best_run, grid, weight_on


@pytest.mark.parametrize("length, patch", [(212, 64), (179, 96), (17, 16), (40, 64), (65, 64), (1000, 96)])
def test_grid_is_nnunets(length, patch):
    assert grid(length, patch, 0.5) == compute_steps_for_sliding_window((max(length, patch),), (patch,), 0.5)[0]


def test_weights_are_the_share_of_nnunets_gaussian():
    # A row of nnU-Net's own 1D Gaussian, blended over its grid as its sliding window blends tiles.
    patch, length = 64, 212
    starts = grid(length, patch, 0.5)
    gaussian = compute_gaussian((patch,), sigma_scale=1 / 8, value_scaling_factor=10, dtype=torch.float64,
                                device=torch.device("cpu")).numpy()
    blend = np.zeros((len(starts), length))
    for index, start in enumerate(starts):
        blend[index, start:start + patch] = gaussian
    share = blend / blend.sum(axis=0)
    box = (95, 140)
    np.testing.assert_allclose(weight_on(starts, patch, box), share[:, box[0]:box[1]].sum(axis=1), atol=1e-6)


def test_the_run_is_centred_on_the_box():
    starts = grid(212, 64, 0.5)  # 0, 30, 59, 89, 118, 148
    assert best_run(starts, 64, 1, (95, 140)) == (3, 4)  # the tile 89-152, centred at 121
    assert best_run(starts, 64, 1, (0, 20)) == (0, 1)
    # Tiles 30-93 and 59-122: the first one's centre (62) lies in the box, tile 89's (121) just past it.
    assert best_run(starts, 64, 2, (60, 120)) == (1, 3)
    assert best_run(starts, 64, 9, (60, 120)) == (0, 6)  # never more than there are


@pytest.mark.parametrize("low, high", [(70, 120), (10, 110), (100, 205), (0, 212)])
def test_as_many_tiles_as_the_box_cut_out_would_take(low, high):
    selection = TileSelection.around((212,), (64,), 0.5, [(low, high)])
    assert selection.count == len(compute_steps_for_sliding_window((max(high - low, 64),), (64,), 0.5)[0])
    first, last = selection.coverage[0]
    assert selection.starts[0] == tuple(grid(212, 64, 0.5)) and first in selection.starts[0]


def test_the_chosen_tiles_are_tiles_of_nnunets_grid():
    selection = TileSelection.around((17, 212, 179), (16, 64, 96), 0.5, [(0, 17), (70, 120), (60, 120)])
    steps = compute_steps_for_sliding_window((17, 212, 179), (16, 64, 96), 0.5)
    assert selection.starts == tuple(tuple(axis) for axis in steps)
    assert selection.count == 2 and selection.total == 36
    assert selection.coverage == ((0, 17), (59, 123), (42, 138))
    # Cut to its coverage, nnU-Net lays its tiles on the same voxels.
    for (low, high), patch, (first, last), axis in zip(selection.coverage, (16, 64, 96), selection.chosen, steps):
        assert [low + s for s in compute_steps_for_sliding_window((high - low,), (patch,), 0.5)[0]] == axis[first:last]


def test_a_2d_configuration_chooses_slices():
    # A 2D patch (64, 96): the first axis is predicted slice by slice, as nnU-Net's 2D sliding window does.
    selection = TileSelection.around((20, 212, 179), (1, 64, 96), 0.5, [(3, 9), (70, 120), (60, 120)])
    assert selection.patch == (1, 64, 96) and selection.chosen[0] == (3, 9)
    assert selection.coverage[0] == (3, 9) and selection.count == 6
