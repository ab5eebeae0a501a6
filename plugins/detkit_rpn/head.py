"""The RPN head: a shared 3x3 conv, then 1x1 convs for objectness and box deltas."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class RPNHead(nn.Module):
    """Objectness logits ``(N, A, Hi, Wi)`` and deltas ``(N, 4A, Hi, Wi)`` per level.

    Args:
        in_channels: channels of every feature level (shared weights across levels).
        num_anchors: A, anchors per location.
        num_convs: 3x3 conv layers before the predictors.
    """

    def __init__(self, *, in_channels: int, num_anchors: int, num_convs: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            *[nn.Conv2d(in_channels, in_channels, 3, padding=1) for _ in range(num_convs)]
        )
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)  # type: ignore[arg-type]

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for x in features:
            for conv in self.conv:
                x = F.relu(conv(x))
            logits.append(self.objectness(x))
            deltas.append(self.deltas(x))
        return logits, deltas
