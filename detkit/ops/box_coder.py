"""Encode boxes as deltas relative to reference boxes, and decode them back.

The parametrization of R-CNN (Girshick et al.): centre offsets scaled by the
reference size, log-ratios of width and height, each multiplied by a weight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detkit.ops.boxes import at_least_float32


class BoxCoder:
    """``(dx, dy, dw, dh)`` deltas <-> xyxy boxes.

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers of the four deltas.
        clip: largest ``dw``/``dh`` accepted when decoding (avoids ``exp`` overflow).
    """

    def __init__(
        self, *, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        clip: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.clip = clip

    def encode(self, gt_boxes: Tensor, reference_boxes: Tensor) -> Tensor:
        """Deltas that move ``reference_boxes`` onto ``gt_boxes``: ``(M, 4), (M, 4) -> (M, 4)``."""
        wx, wy, ww, wh = self.weights
        ref_w = reference_boxes[:, 2] - reference_boxes[:, 0]
        ref_h = reference_boxes[:, 3] - reference_boxes[:, 1]
        ref_cx = reference_boxes[:, 0] + 0.5 * ref_w
        ref_cy = reference_boxes[:, 1] + 0.5 * ref_h
        gt_w = gt_boxes[:, 2] - gt_boxes[:, 0]
        gt_h = gt_boxes[:, 3] - gt_boxes[:, 1]
        gt_cx = gt_boxes[:, 0] + 0.5 * gt_w
        gt_cy = gt_boxes[:, 1] + 0.5 * gt_h
        dx = wx * (gt_cx - ref_cx) / ref_w
        dy = wy * (gt_cy - ref_cy) / ref_h
        dw = ww * torch.log(gt_w / ref_w)
        dh = wh * torch.log(gt_h / ref_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """Apply deltas to reference boxes.

        Args:
            deltas: ``(M, 4 * K)``: K sets of deltas per reference box (K classes).
            reference_boxes: ``(M, 4)``.

        Returns:
            ``(M, K, 4)`` decoded boxes, in float32 for float16/bfloat16 deltas (a
            model run under autocast): half precision would round box corners by
            pixels.
        """
        deltas = at_least_float32(deltas)
        reference_boxes = reference_boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = reference_boxes[:, 2] - reference_boxes[:, 0]
        heights = reference_boxes[:, 3] - reference_boxes[:, 1]
        ctr_x = reference_boxes[:, 0] + 0.5 * widths
        ctr_y = reference_boxes[:, 1] + 0.5 * heights
        # (M, 4K) -> four (M, K) views
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        # four (M, K) -> (M, K, 4)
        return torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2
        )
