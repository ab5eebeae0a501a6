"""SSD's default boxes (Liu et al., 2016, section 2.2): a fixed set of boxes per feature-map cell.

Feature map ``k`` (of ``m``) has scale ``s_k``; every cell gets one square box of side
``s_k``, one square of side ``sqrt(s_k * s_{k+1})`` (the extra scale) and, for each
aspect ratio ``r``, the pair ``(s_k sqrt(r), s_k / sqrt(r))`` and its transpose. Sizes are
fractions of the image; the centres sit at ``(j + 0.5) / f_k`` where ``f_k`` is the image
size divided by the map's ``step`` (or the map's own size without steps). The numerics
follow torchvision's ``DefaultBoxGenerator`` operation by operation, so that imported
models see the same boxes.

Shape glossary: A default boxes in all, Hk/Wk the size of map k, B_k boxes per cell of
map k (``2 + 2 * len(aspect_ratios[k])``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class DefaultBoxes(nn.Module):
    """Default boxes of every cell of every feature map, in absolute ``xyxy`` pixels.

    Args:
        aspect_ratios: per feature map, the ratios ``r`` besides 1 (each adds two boxes).
        scales: ``m + 1`` scales (fractions of the image side); the last one only sets
            the extra box of the last map. ``None``: spread linearly from ``min_ratio``
            to ``max_ratio`` over the ``m`` maps, then 1.0.
        min_ratio, max_ratio: the range of the linear scales (when ``scales`` is None).
        steps: per map, the pixel step between cell centres; ``None``: the image size
            divided by the map size.
        clip: clip the widths and heights (as fractions of the image) to ``[0, 1]``.
    """

    def __init__(
        self,
        *,
        aspect_ratios: Sequence[Sequence[float]],
        scales: Sequence[float] | None = None,
        min_ratio: float = 0.15,
        max_ratio: float = 0.9,
        steps: Sequence[int] | None = None,
        clip: bool = True,
    ) -> None:
        super().__init__()
        num_maps = len(aspect_ratios)
        if steps is not None and len(steps) != num_maps:
            raise ValueError(f"steps has {len(steps)} entries for {num_maps} feature maps (aspect_ratios)")
        if scales is None:
            if num_maps > 1:
                scales = [min_ratio + (max_ratio - min_ratio) * k / (num_maps - 1.0) for k in range(num_maps)]
                scales = [*scales, 1.0]
            else:
                scales = [min_ratio, max_ratio]
        if len(scales) != num_maps + 1:
            raise ValueError(f"scales needs {num_maps + 1} entries for {num_maps} feature maps, got {len(scales)}")
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.scales = [float(s) for s in scales]
        self.steps = None if steps is None else [int(s) for s in steps]
        self.clip = clip
        self._wh_per_level = [self._wh_pairs(k) for k in range(num_maps)]

    def _wh_pairs(self, k: int) -> Tensor:
        """``(B_k, 2)`` relative (w, h) of the boxes of one cell of map ``k``."""
        s_k = self.scales[k]
        s_extra = math.sqrt(self.scales[k] * self.scales[k + 1])
        pairs = [[s_k, s_k], [s_extra, s_extra]]
        for ratio in self.aspect_ratios[k]:
            root = math.sqrt(ratio)
            pairs.extend([[s_k * root, s_k / root], [s_k / root, s_k * root]])
        wh = torch.as_tensor(pairs, dtype=torch.float32)
        return wh.clamp(min=0, max=1) if self.clip else wh

    def num_per_location(self) -> list[int]:
        """Boxes per cell ``B_k`` of every feature map."""
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def forward(
        self, grid_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int], *, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Default boxes of maps of sizes ``grid_sizes`` on an image (batch) of ``image_size``.

        Args:
            grid_sizes: ``(Hk, Wk)`` of every map, finest first.
            image_size: ``(H, W)`` in pixels (of the padded batch).

        Returns:
            ``(A, 4)`` xyxy pixels, ``A = sum_k Hk * Wk * B_k``, ordered map, row, column,
            box of the cell (the order of the head's flattened predictions).
        """
        if len(grid_sizes) != len(self._wh_per_level):
            raise ValueError(f"got {len(grid_sizes)} feature maps for {len(self._wh_per_level)} aspect-ratio lists")
        per_level = []
        for k, (height, width) in enumerate(grid_sizes):
            if self.steps is not None:
                f_x, f_y = image_size[1] / self.steps[k], image_size[0] / self.steps[k]
            else:
                f_y, f_x = height, width
            centre_x = ((torch.arange(0, width) + 0.5) / f_x).to(dtype=dtype)
            centre_y = ((torch.arange(0, height) + 0.5) / f_y).to(dtype=dtype)
            grid_y, grid_x = torch.meshgrid(centre_y, centre_x, indexing="ij")  # (Hk, Wk) each
            wh = self._wh_per_level[k].to(dtype)
            # (Hk*Wk, 2) centres, each repeated B_k times -> (Hk*Wk*B_k, 2)
            centres = torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1).repeat_interleave(len(wh), dim=0)
            # (B_k, 2) -> (Hk*Wk*B_k, 2): the same boxes in every cell
            sizes = wh.repeat(height * width, 1)
            per_level.append(torch.cat((centres, sizes), dim=1))
        cxcywh = torch.cat(per_level, dim=0)  # (A, 4) relative cx, cy, w, h
        scale = torch.tensor([image_size[1], image_size[0]])
        return torch.cat(
            ((cxcywh[:, :2] - 0.5 * cxcywh[:, 2:]) * scale, (cxcywh[:, :2] + 0.5 * cxcywh[:, 2:]) * scale), dim=-1
        )


__all__ = ["DefaultBoxes"]
