"""Anchors: reference boxes of a few sizes and aspect ratios at every location of a feature map.

An anchor generator (Ren et al., 2015, "Faster R-CNN") keeps, per level, a *cell*: the
anchors of one location, centred on the origin. The anchors of a level are the cell
shifted to every location of its grid, the location ``(y, x)`` standing at pixel
``(y * stride_h, x * stride_w)``, its top-left corner. The numerics are torchvision's
``AnchorGenerator``: corners rounded to whole pixels, integer shifts, and a level's
stride the padded batch size divided by its map size with integer division
(:func:`level_strides`: P6 and P7 of an 800-pixel side have strides 61 and 114, not
64 and 128). The RPN, RetinaNet and FCOS (one square per location) place their
anchors with these functions.

Shape glossary: L levels, A anchors per location, S sizes, R aspect ratios, Hi/Wi the
size of level i, M_i = Hi * Wi * A anchors of level i.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Anchors centred on the origin: ``(R * S, 4)`` xyxy, ratio-major.

    An anchor of size ``s`` and ratio ``r = h / w`` has ``w = s / sqrt(r)`` and
    ``h = s * sqrt(r)`` (area ``s ** 2``); the corners are rounded to whole pixels.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    # (R, 1) * (1, S) -> (R * S,)
    widths = (w_ratios[:, None] * scales[None, :]).view(-1)
    heights = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()


def level_strides(grid_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """``(stride_h, stride_w)`` of each level: the padded batch size ``(Hp, Wp)`` over ``(Hi, Wi)``, rounded down."""
    return [(image_size[0] // height, image_size[1] // width) for height, width in grid_sizes]


def grid_anchors(
    cells: Sequence[Tensor],
    grid_sizes: Sequence[tuple[int, int]],
    strides: Sequence[tuple[int, int]],
    device: torch.device,
) -> list[Tensor]:
    """Anchors ``(M_i, 4)`` of each level, location-major (rows, then columns), anchor-minor.

    Args:
        cells: ``(A, 4)`` anchors of one location per level (:func:`cell_anchors`).
        grid_sizes: ``(Hi, Wi)`` of each level.
        strides: ``(stride_h, stride_w)`` of each level in input pixels.
    """
    anchors = []
    for (height, width), (stride_h, stride_w), cell in zip(grid_sizes, strides, cells):
        shift_x = torch.arange(0, width, dtype=torch.int32, device=device) * stride_w
        shift_y = torch.arange(0, height, dtype=torch.int32, device=device) * stride_h
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # (Hi, Wi) each
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack((xx, yy, xx, yy), dim=1)  # (Hi*Wi, 4)
        # (Hi*Wi, 1, 4) + (1, A, 4) -> (Hi*Wi*A, 4)
        anchors.append((shifts.view(-1, 1, 4) + cell.to(device).view(1, -1, 4)).reshape(-1, 4))
    return anchors


__all__ = ["cell_anchors", "grid_anchors", "level_strides"]
