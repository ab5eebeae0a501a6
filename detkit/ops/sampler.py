"""Sample a fixed-size, class-balanced minibatch of labelled predictions."""

from __future__ import annotations

import torch
from torch import Tensor


class BalancedSampler:
    """Pick at most ``batch_size_per_image`` predictions, a ``positive_fraction`` of them positive.

    When there are too few positives the rest of the batch is filled with
    negatives; predictions labelled ignore (-1) are never picked.

    Args:
        batch_size_per_image: sampled predictions per image.
        positive_fraction: target share of positives.
    """

    def __init__(self, *, batch_size_per_image: int, positive_fraction: float) -> None:
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Sample one image.

        Args:
            labels: ``(P,)`` int: ``>= 1`` positive, ``0`` negative, ``-1`` ignore.

        Returns:
            ``(pos_idx, neg_idx)``: indices into ``labels``.
        """
        positive = torch.where(labels >= 1)[0]
        negative = torch.where(labels == 0)[0]
        num_pos = min(int(self.batch_size_per_image * self.positive_fraction), positive.numel())
        num_neg = min(self.batch_size_per_image - num_pos, negative.numel())
        pos_perm = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
        neg_perm = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
        return positive[pos_perm], negative[neg_perm]
