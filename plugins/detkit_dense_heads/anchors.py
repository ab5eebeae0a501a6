"""Anchors of the dense heads: reference boxes of a few sizes and aspect ratios at every location.

RetinaNet places ``S x R`` anchors per location (S sizes a third of an octave apart, R
aspect ratios); FCOS one square per location whose side is the level's nominal stride,
so that its centre is the location and its side scales the regressed distances. The
numerics are torchvision's ``AnchorGenerator``: corners rounded to whole pixels, a
level's stride is the padded batch size divided by the map size (integer division, so
P6 and P7 of an 800-pixel side have strides 61 and 114, not 64 and 128), the anchors of
a location sit at its top-left corner times the stride.

(The RPN plugin's generator computes the same boxes; plugins do not import one another,
so this one is the dense heads' own.)

Shape glossary: L levels, A anchors per location, Hi/Wi the size of level i,
M_i = Hi * Wi * A anchors of level i.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def octave_sizes(base_sizes: Sequence[int], *, per_octave: int = 3) -> list[list[int]]:
    """Per level, ``per_octave`` sizes from the base up, ``2 ** (1 / per_octave)`` apart, truncated to integers.

    ``octave_sizes([32, 64])`` is ``[[32, 40, 50], [64, 80, 101]]``: RetinaNet's anchor
    sizes (torchvision truncates with ``int`` likewise).
    """
    return [[int(base * 2 ** (k / per_octave)) for k in range(per_octave)] for base in base_sizes]


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Anchors centred on the origin: ``(len(aspect_ratios) * len(sizes), 4)`` xyxy, ratio-major.

    An anchor of size ``s`` and ratio ``r = h / w`` has ``w = s / sqrt(r)`` and ``h = s * sqrt(r)``
    (area ``s ** 2``); the corners are rounded to whole pixels.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    # (R, 1) * (1, S) -> (R * S,)
    widths = (w_ratios[:, None] * scales[None, :]).view(-1)
    heights = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()


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
        anchors = []
        for (height, width), cell in zip(grid_sizes, self._cells):
            stride_y, stride_x = image_size[0] // height, image_size[1] // width
            shift_x = torch.arange(0, width, dtype=torch.int32, device=device) * stride_x
            shift_y = torch.arange(0, height, dtype=torch.int32, device=device) * stride_y
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # (Hi, Wi) each
            xx, yy = xx.reshape(-1), yy.reshape(-1)
            shifts = torch.stack((xx, yy, xx, yy), dim=1)  # (Hi*Wi, 4)
            # (Hi*Wi, 1, 4) + (1, A, 4) -> (Hi*Wi*A, 4)
            anchors.append((shifts.view(-1, 1, 4) + cell.to(device).view(1, -1, 4)).reshape(-1, 4))
        return anchors


__all__ = ["AnchorGrid", "cell_anchors", "octave_sizes"]
