"""Anchors on hand-computable cases."""

import torch
from detkit_rpn.anchors import AnchorGenerator, cell_anchors


def test_cell_anchors_hand_computed():
    # ratio h/w = 1: a 32x32 square; ratio 4: w = 16, h = 64 (area kept at 32**2)
    anchors = cell_anchors([32], [1.0, 4.0])
    assert anchors.tolist() == [[-16, -16, 16, 16], [-8, -32, 8, 32]]


def test_anchor_grid_order_and_shifts():
    gen = AnchorGenerator(sizes=[[8]], aspect_ratios=[[1.0]])
    (anchors,) = gen([(2, 3)], [(16, 16)], torch.device("cpu"))
    # location-major over rows then columns, shifted by the stride
    expected = [[x * 16 - 4, y * 16 - 4, x * 16 + 4, y * 16 + 4] for y in range(2) for x in range(3)]
    assert anchors.tolist() == expected


def test_anchor_counts_per_level():
    gen = AnchorGenerator(sizes=[[32], [64]], aspect_ratios=[0.5, 1.0, 2.0])
    levels = gen([(4, 4), (2, 2)], [(8, 8), (16, 16)], torch.device("cpu"))
    assert [a.shape[0] for a in levels] == [4 * 4 * 3, 2 * 2 * 3]
    assert gen.num_anchors_per_location() == [3, 3]
