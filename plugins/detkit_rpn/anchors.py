"""Anchors: reference boxes of several sizes and aspect ratios at every feature location.

The cells and their placement are :mod:`detkit.ops.anchors`' (torchvision's numerics);
this generator holds the RPN's per-level cells and checks the level count.

Shape glossary: A anchors per location, Hi/Wi the size of level i.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit import ConfigError
from detkit.ops import cell_anchors, grid_anchors


class AnchorGenerator(nn.Module):
    """Anchors per pyramid level.

    Args:
        sizes: per level, the anchor side lengths (sqrt of area) in input pixels.
        aspect_ratios: per level (or one tuple for all), height / width ratios.
    """

    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: Sequence[Sequence[float]] | Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        super().__init__()
        per_level: list[Sequence[float]]
        if aspect_ratios and not isinstance(aspect_ratios[0], Sequence):
            per_level = [aspect_ratios] * len(sizes)  # type: ignore[list-item]
        else:
            per_level = list(aspect_ratios)  # type: ignore[arg-type]
        if len(per_level) != len(sizes):
            raise ValueError(f"{len(sizes)} anchor size levels but {len(per_level)} aspect-ratio levels")
        self.cell_anchors = [cell_anchors(s, r) for s, r in zip(sizes, per_level)]

    @property
    def num_levels(self) -> int:
        """L, the pyramid levels (anchor size tuples) this generator serves."""
        return len(self.cell_anchors)

    def num_anchors_per_location(self) -> list[int]:
        return [int(c.shape[0]) for c in self.cell_anchors]

    def forward(self, grid_sizes: Sequence[tuple[int, int]], strides: Sequence[tuple[int, int]],
                device: torch.device) -> list[Tensor]:
        """Anchors of every level: ``(Hi * Wi * A, 4)``, location-major, anchor-minor.

        Args:
            grid_sizes: ``(Hi, Wi)`` of each level, one per anchor size tuple.
            strides: ``(stride_h, stride_w)`` of each level in input pixels.

        Raises:
            ConfigError: the number of levels differs from the number of anchor size tuples.
        """
        if not len(grid_sizes) == len(strides) == self.num_levels:
            raise ConfigError(
                f"{self.num_levels} anchor size tuples for {len(grid_sizes)} feature maps "
                f"({len(strides)} strides); give one size tuple per feature map"
            )
        return grid_anchors(self.cell_anchors, grid_sizes, strides, device)
