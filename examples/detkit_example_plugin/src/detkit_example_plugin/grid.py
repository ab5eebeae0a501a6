"""Grid proposals: fixed, class-agnostic square boxes on a regular grid at several scales.

The simplest proposer there is (the sliding windows of pre-R-CNN detectors, without
a classifier): it looks at neither pixels nor features and has nothing to learn, so
the ROI head alone learns to classify and refine the boxes. It is a useful baseline
against learned proposals and a complete, small example of a detkit proposer.

Shape glossary: N images, S scales, R proposals of one image, Gh/Gw grid rows/columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.ops import clip_boxes
from detkit.stages import Proposer
from detkit.structures import FeatureMaps, ImageBatch, Proposals, Targets


class GridProposer(Proposer):
    """Square boxes on a regular grid at several scales, clipped to each image.

    For a scale ``s`` (box side in pixels) the grid step is
    ``t = max(1, round(s * stride_fraction))``: boxes ``[x, y, x + s, y + s]`` start at
    ``x = 0, t, 2t, ...`` up to the first box that reaches the right edge of the resized
    image ``(h, w)`` (``ceil(max(w - s, 0) / t) + 1`` columns), rows likewise, and are
    clipped to the image. Boxes come scale by scale in the order of
    ``scales``, each grid row by row (top to bottom, left to right). When an image has
    more than ``max_proposals`` boxes, the ``max_proposals`` at the evenly spaced
    positions ``i * R // max_proposals`` of that order are kept, so every scale and every
    part of the image keeps some. Objectness is a rank score, ``1 - i / R`` for the
    ``i``-th of the ``R`` boxes kept: it decreases with the index, as the proposer
    contract asks.

    Args:
        scales: box sides in pixels of the resized image, e.g. ``[16, 32, 64, 128]``.
        stride_fraction: grid step as a fraction of the box side, in ``(0, 1]``;
            ``0.5`` makes neighbouring boxes of one scale overlap by half.
        max_proposals: most boxes per image.
    """

    needs_features = False

    def __init__(
        self,
        *,
        scales: Sequence[float] = (32, 64, 128),
        stride_fraction: float = 0.5,
        max_proposals: int = 1000,
    ) -> None:
        super().__init__()
        if len(scales) == 0 or any(not (float(s) > 0 and math.isfinite(float(s))) for s in scales):
            raise ValueError(f"scales must be a non-empty list of positive box sides, got {list(scales)}")
        if not 0 < float(stride_fraction) <= 1:
            raise ValueError(f"stride_fraction must be in (0, 1], got {stride_fraction}")
        if int(max_proposals) < 1 or int(max_proposals) != max_proposals:
            raise ValueError(f"max_proposals must be a positive integer, got {max_proposals}")
        self.scales = [float(s) for s in scales]
        self.stride_fraction = float(stride_fraction)
        self.max_proposals = int(max_proposals)

    def extra_repr(self) -> str:
        return f"scales={self.scales}, stride_fraction={self.stride_fraction}, max_proposals={self.max_proposals}"

    def forward(
        self, images: ImageBatch, features: FeatureMaps | None, targets: list[Targets] | None = None
    ) -> tuple[list[Proposals], dict[str, Tensor]]:
        device = images.tensor.device
        proposals = [self._proposals_per_image(size, device) for size in images.image_sizes]
        return proposals, {}  # nothing to learn: no losses, in training or not

    def _proposals_per_image(self, size: tuple[int, int], device: torch.device) -> Proposals:
        boxes = torch.cat([self._grid(scale, size, device) for scale in self.scales])  # (R, 4)
        num_boxes = boxes.shape[0]
        if num_boxes > self.max_proposals:
            # evenly spaced indices 0 <= i * R // M < R, distinct because R > M
            keep = torch.arange(self.max_proposals, device=device) * num_boxes // self.max_proposals
            boxes = boxes[keep]
            num_boxes = self.max_proposals
        objectness = 1.0 - torch.arange(num_boxes, dtype=torch.float32, device=device) / num_boxes
        return Proposals(boxes=boxes, objectness=objectness)

    def _grid(self, scale: float, size: tuple[int, int], device: torch.device) -> Tensor:
        """``(Gh * Gw, 4)`` boxes of side ``scale`` on the grid of one image of ``size = (h, w)``."""
        h, w = size
        step = max(1, round(scale * self.stride_fraction))
        # the last column/row is the first whose box reaches the image edge: the grid
        # covers the image, and no box is a clipped sliver inside its neighbour
        num_cols = math.ceil(max(w - scale, 0.0) / step) + 1
        num_rows = math.ceil(max(h - scale, 0.0) / step) + 1
        xs = torch.arange(num_cols, dtype=torch.float32, device=device) * step  # (Gw,)
        ys = torch.arange(num_rows, dtype=torch.float32, device=device) * step  # (Gh,)
        y0, x0 = torch.meshgrid(ys, xs, indexing="ij")  # (Gh, Gw) each
        # (Gh, Gw, 4) -> (Gh * Gw, 4), row by row
        starts = torch.stack((x0, y0, x0, y0), dim=-1).reshape(-1, 4)
        boxes = starts + torch.tensor([0.0, 0.0, scale, scale], device=device)
        return clip_boxes(boxes, (h, w))
