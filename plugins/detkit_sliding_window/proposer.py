"""Exhaustive sliding-window proposals: every window of a few sizes and aspect ratios on a regular grid.

The oldest way to find objects is to try every place: slide a window of a fixed
shape over the image with a fixed stride, at several window sizes and shapes. It is
the baseline against which selective search (Uijlings et al., 2013) and the RPN
(Ren et al., 2015) are measured in a recall-vs-number-of-proposals benchmark: it needs
no learning and no image content, and its recall grows only with the density of the
grid.

A window of size ``s`` and aspect ratio ``r`` (height / width) has area ``s**2``:
``w = s / sqrt(r)``, ``h = s * sqrt(r)``. Its stride is ``stride_fraction`` of its own
width and height, or ``stride_px`` pixels when that is set. Along x the top-left
corners are ``0, st, 2 st, ...``, ``ceil((W - w) / st) + 1`` of them (one when the
window is wider than the image), so the last window reaches the right border; all
windows are then clipped to the image, empty ones dropped and exact duplicates
(windows larger than the image clip to the same box) kept once.

Order, objectness and ``max_proposals``: windows are listed coarse first (sizes in
decreasing order); within a size, the grid positions are sorted coarse-to-fine
(positions on every 2**k-th row and column before the others, a hierarchical order),
then by aspect ratio, then row-major. So any prefix of the list, in particular the
first ``max_proposals``, holds all larger windows and an evenly spread subset of the
smallest size it reaches. ``objectness`` is a rank score ``(R - rank) / R``, strictly
decreasing along that list.

Shape glossary: N images, R proposals of an image, S sizes, A aspect ratios,
Gy x Gx grid positions of one (size, ratio).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.ops import clip_boxes, nonempty_boxes
from detkit.stages import Losses, Proposer
from detkit.structures import FeatureMaps, ImageBatch, Proposals, Targets

# Bit fields of the int64 sort key: size rank | 31 - spread level | ratio rank | row-major index.
_SIZE_SHIFT, _LEVEL_SHIFT, _RATIO_SHIFT = 50, 40, 32


def _spread_level(index: Tensor) -> Tensor:
    """Largest ``k`` with ``index`` divisible by ``2**k`` (index 0: 30), elementwise on int64."""
    lowest_bit = index & -index  # 0 for index 0
    level = torch.log2(lowest_bit.clamp(min=1).double()).round().long()
    return torch.where(index == 0, torch.full_like(level, 30), level)


def grid_positions(extent: float, window: float, stride: float, *, device: torch.device | None = None) -> Tensor:
    """Top-left coordinates along one axis: ``0, st, ...``, enough for the last window to reach ``extent``.

    Returns:
        ``(G,)`` float32, ``G = ceil((extent - window) / stride) + 1`` (1 when ``window >= extent``).
    """
    count = max(math.ceil((extent - window) / stride - 1e-6), 0) + 1
    return torch.arange(count, dtype=torch.float32, device=device) * stride


class SlidingWindowProposer(Proposer):
    """Every window of ``sizes`` x ``aspect_ratios`` on a regular grid, clipped to each image.

    ``forward(images, features=None, targets=None) -> (list[Proposals], {})``: one
    :class:`Proposals` per image in its resized pixels (``images.image_sizes``), in the
    order described in the module docstring, with a rank score as objectness.
    Nothing is learned: the losses are always empty.

    Args:
        sizes: window sizes in pixels (the square root of the window area).
        aspect_ratios: window height / width.
        stride_fraction: grid step as a fraction of the window's width (along x) and
            height (along y), in ``(0, 1]``.
        stride_px: grid step in pixels for every window; overrides ``stride_fraction``.
        max_proposals: keep at most this many windows per image (the first ones of the
            coarse-to-fine order); 0 keeps all.
    """

    needs_features = False

    def __init__(
        self,
        *,
        sizes: Sequence[float] = (32, 64, 128, 256),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        stride_fraction: float = 0.5,
        stride_px: float | None = None,
        max_proposals: int = 0,
    ) -> None:
        super().__init__()
        if not sizes or any(float(s) <= 0 for s in sizes):
            raise ValueError(f"sizes must be positive pixel sizes, got {list(sizes)}")
        if not aspect_ratios or any(float(r) <= 0 for r in aspect_ratios):
            raise ValueError(f"aspect_ratios must be positive (height / width), got {list(aspect_ratios)}")
        if not 0 < float(stride_fraction) <= 1:
            raise ValueError(f"stride_fraction must be in (0, 1], got {stride_fraction}")
        if stride_px is not None and float(stride_px) <= 0:
            raise ValueError(f"stride_px must be positive pixels, got {stride_px}")
        if int(max_proposals) < 0:
            raise ValueError(f"max_proposals must be >= 0 (0: no cap), got {max_proposals}")
        self.sizes = sorted((float(s) for s in sizes), reverse=True)  # coarse first
        self.aspect_ratios = [float(r) for r in aspect_ratios]
        self.stride_fraction = float(stride_fraction)
        self.stride_px = None if stride_px is None else float(stride_px)
        self.max_proposals = int(max_proposals)

    def forward(
        self, images: ImageBatch, features: FeatureMaps | None = None, targets: list[Targets] | None = None
    ) -> tuple[list[Proposals], Losses]:
        device = images.tensor.device
        return [self.proposals_per_image(size, device=device) for size in images.image_sizes], {}

    def proposals_per_image(self, image_size: tuple[int, int], *, device: torch.device | None = None) -> Proposals:
        """The windows of one image of ``image_size = (h, w)``, ordered and capped."""
        boxes, keys = [], []
        for size_rank, size in enumerate(self.sizes):
            for ratio_rank, ratio in enumerate(self.aspect_ratios):
                group_boxes, group_keys = self._windows(image_size, size, ratio, device)
                boxes.append(group_boxes)
                # coarse sizes first, then coarse-to-fine positions, then ratio, then row-major
                keys.append(group_keys + (size_rank << _SIZE_SHIFT) + (ratio_rank << _RATIO_SHIFT))
        all_boxes = clip_boxes(torch.cat(boxes), image_size)  # (R0, 4)
        order = torch.cat(keys).argsort(stable=True)
        all_boxes = all_boxes[order]
        all_boxes = all_boxes[nonempty_boxes(all_boxes)]
        all_boxes = all_boxes[_first_occurrences(all_boxes)]
        if self.max_proposals:
            all_boxes = all_boxes[: self.max_proposals]
        num = all_boxes.shape[0]
        objectness = (num - torch.arange(num, dtype=torch.float32, device=device)) / max(num, 1)
        return Proposals(boxes=all_boxes, objectness=objectness)

    def _windows(
        self, image_size: tuple[int, int], size: float, ratio: float, device: torch.device | None
    ) -> tuple[Tensor, Tensor]:
        """Unclipped windows ``(Gy*Gx, 4)`` of one (size, ratio) and their sort keys ``(Gy*Gx,)`` (level, row)."""
        height, width = image_size
        win_w, win_h = size / math.sqrt(ratio), size * math.sqrt(ratio)
        stride_x = self.stride_px if self.stride_px is not None else self.stride_fraction * win_w
        stride_y = self.stride_px if self.stride_px is not None else self.stride_fraction * win_h
        xs = grid_positions(width, win_w, stride_x, device=device)  # (Gx,)
        ys = grid_positions(height, win_h, stride_y, device=device)  # (Gy,)
        y1, x1 = torch.meshgrid(ys, xs, indexing="ij")  # (Gy, Gx) each
        boxes = torch.stack([x1, y1, x1 + win_w, y1 + win_h], dim=-1).reshape(-1, 4)  # (Gy, Gx, 4) -> (Gy*Gx, 4)
        iy, ix = torch.meshgrid(
            torch.arange(ys.numel(), device=device), torch.arange(xs.numel(), device=device), indexing="ij"
        )
        level = torch.minimum(_spread_level(iy), _spread_level(ix))  # (Gy, Gx), 30 at the origin
        row_major = iy * xs.numel() + ix
        # coarse levels (every 2**k-th row and column) first, then row-major
        keys = ((31 - level.clamp(max=31)) << _LEVEL_SHIFT) + row_major
        return boxes, keys.reshape(-1)


def _first_occurrences(boxes: Tensor) -> Tensor:
    """Indices of the first occurrence of every distinct row of ``boxes (R, 4)``, ascending."""
    if boxes.shape[0] == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    _, inverse = torch.unique(boxes, dim=0, return_inverse=True)  # (R,) distinct-row id of every row
    index = torch.arange(boxes.shape[0], device=boxes.device)
    first = torch.full((int(inverse.max()) + 1,), boxes.shape[0], dtype=torch.int64, device=boxes.device)
    first = first.scatter_reduce(0, inverse, index, reduce="amin")
    return first.sort().values


__all__ = ["SlidingWindowProposer", "grid_positions"]
