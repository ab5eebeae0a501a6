"""Anchors of the dense heads: reference boxes of a few sizes and aspect ratios at every location.

RetinaNet places ``S x R`` anchors per location (S sizes a third of an octave apart, R
aspect ratios); FCOS one square per location whose side is the level's nominal stride,
so that its centre is the location and its side scales the regressed distances. The
cells and their placement are :mod:`detkit.ops.anchors`' (torchvision's
``AnchorGenerator`` numerics, the level strides taken from the padded batch size).

Shape glossary: L levels, A anchors per location, Hi/Wi the size of level i,
M_i = Hi * Wi * A anchors of level i.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.ops import cell_anchors, grid_anchors, level_strides
from detkit.structures import ImageBatch


def octave_sizes(base_sizes: Sequence[int], *, per_octave: int = 3) -> list[list[int]]:
    """Per level, ``per_octave`` sizes from the base up, ``2 ** (1 / per_octave)`` apart, truncated to integers.

    ``octave_sizes([32, 64])`` is ``[[32, 40, 50], [64, 80, 101]]``: RetinaNet's anchor
    sizes (torchvision truncates with ``int`` likewise).
    """
    return [[int(base * 2 ** (k / per_octave)) for k in range(per_octave)] for base in base_sizes]


class AnchorGrid:
    """Anchors of every location of every level, in the padded batch's pixels.

    Args:
        sizes: per level, finest first, the anchor sizes (sqrt of the area) in pixels.
        aspect_ratios: height / width ratios, the same at every level.
    """

    def __init__(self, *, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float]) -> None:
        if not sizes or any(len(level) == 0 for level in sizes) or not aspect_ratios:
            raise ValueError(f"anchor sizes need at least one size per level and one aspect ratio, got {sizes}")
        if len({len(level) for level in sizes}) != 1:
            raise ValueError(f"every level needs the same number of anchor sizes, got {sizes}")
        self.sizes = [[float(s) for s in level] for level in sizes]
        self.aspect_ratios = [float(r) for r in aspect_ratios]
        self._cells = [cell_anchors(level, self.aspect_ratios) for level in self.sizes]

    @property
    def num_levels(self) -> int:
        """L, the levels (size tuples) the grid serves."""
        return len(self._cells)

    @property
    def num_per_location(self) -> int:
        """A, anchors per location (sizes times aspect ratios)."""
        return int(self._cells[0].shape[0])

    def __call__(
        self, grid_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int], device: torch.device
    ) -> list[Tensor]:
        """Anchors ``(M_i, 4)`` of each level, location-major (rows, then columns), anchor-minor.

        Args:
            grid_sizes: ``(Hi, Wi)`` of each level, finest first.
            image_size: ``(Hp, Wp)`` of the padded batch.
        """
        if len(grid_sizes) != self.num_levels:
            raise ValueError(f"{self.num_levels} anchor size tuples for {len(grid_sizes)} feature maps")
        return grid_anchors(self._cells, grid_sizes, level_strides(grid_sizes, image_size), device)

    def for_maps(self, images: ImageBatch, maps: Sequence[Tensor]) -> list[Tensor]:
        """Anchors ``(M_i, 4)`` of each map ``(N, C, Hi, Wi)`` of ``images``' padded batch."""
        grid_sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in maps]
        padded_size = (int(images.tensor.shape[-2]), int(images.tensor.shape[-1]))
        return self(grid_sizes, padded_size, images.tensor.device)


__all__ = ["AnchorGrid", "octave_sizes"]
