"""Assign each prediction (anchor or proposal) to a ground-truth box, or to none."""

from __future__ import annotations

import torch
from torch import Tensor


class Matcher:
    """IoU-threshold matching.

    Every prediction gets the index of its best-overlapping ground truth when the
    IoU is at least ``high``, :attr:`BELOW_LOW` when it is below ``low`` and
    :attr:`BETWEEN` otherwise (ignored by losses). With
    ``allow_low_quality_matches`` each ground truth also keeps the predictions that
    overlap it best, even under ``high`` (so that no object goes unmatched; the
    rule of the Faster R-CNN paper).

    Args:
        high: IoU at or above which a prediction is matched.
        low: IoU below which a prediction is background.
        allow_low_quality_matches: see above.
    """

    BELOW_LOW = -1
    BETWEEN = -2

    def __init__(self, *, high: float, low: float, allow_low_quality_matches: bool = False) -> None:
        if low > high:
            raise ValueError(f"Matcher low threshold {low} is above high threshold {high}")
        self.high = high
        self.low = low
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality: Tensor) -> Tensor:
        """Match predictions to ground truth.

        Args:
            quality: ``(G, P)`` IoU of every ground truth with every prediction.

        Returns:
            ``(P,)`` int64: ground-truth index, :attr:`BELOW_LOW` or :attr:`BETWEEN`.
        """
        num_gt, num_pred = quality.shape
        if num_gt == 0:
            return torch.full((num_pred,), self.BELOW_LOW, dtype=torch.int64, device=quality.device)
        best_quality, matches = quality.max(dim=0)  # (P,), (P,)
        original = matches.clone() if self.allow_low_quality_matches else None
        matches[best_quality < self.low] = self.BELOW_LOW
        matches[(best_quality >= self.low) & (best_quality < self.high)] = self.BETWEEN
        if original is not None:
            # predictions that tie for the best IoU of some ground truth get it back
            best_per_gt, _ = quality.max(dim=1)  # (G,)
            _, pred_idx = torch.where(quality == best_per_gt[:, None])
            matches[pred_idx] = original[pred_idx]
        return matches
