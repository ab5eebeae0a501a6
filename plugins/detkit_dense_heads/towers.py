"""What RetinaNet and FCOS share: convolution towers run on every level, flattening their outputs, top-k candidates.

Both heads run two towers of 3x3 convolutions (one for classification, one for the
boxes), shared by every pyramid level, then a 3x3 predictor per branch. Predictions
of all levels are flattened into one row per anchor, level by level, in the order of
the anchors. At inference both keep, per level, the best (anchor, class) scores.

Shape glossary: N images, C channels, A anchors per location, Hi/Wi the size of level i,
M = sum_i Hi * Wi * A anchors of all levels, D columns of a prediction (K classes, 4 box terms).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit import ConfigError

#: GroupNorm groups of a normalized tower (torchvision's FCOS: ``GroupNorm(32, C)``).
GROUPS = 32


def conv_tower(channels: int, *, num_convs: int, norm: str, key: str) -> nn.Sequential:
    """``num_convs`` times 3x3 conv [-> GroupNorm] -> ReLU, flat (conv ``i`` at index ``i * step``).

    Convolutions start at N(0, 0.01) weights and zero biases, as in both papers.

    Args:
        channels: C in and out.
        norm: ``none`` (RetinaNet) or ``gn`` (FCOS: GroupNorm of 32 groups after every conv).
        key: the config section, for the error of a bad ``norm``.
    """
    if norm not in ("none", "gn"):
        raise ConfigError(f"{key}.norm: unknown value {norm!r}; use none or gn")
    if norm == "gn" and channels % GROUPS:
        raise ConfigError(
            f"{key}.norm: gn splits the channels into {GROUPS} groups, but the feature maps have {channels}; "
            f"give the neck a multiple of {GROUPS} channels (model.neck.out_channels) or set {key}.norm=none"
        )
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
        layers.append(conv)
        if norm == "gn":
            layers.append(nn.GroupNorm(GROUPS, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def predictor(channels: int, outputs: int, *, bias: float = 0.0) -> nn.Conv2d:
    """A 3x3 convolution from C to ``outputs`` channels, N(0, 0.01) weights, biases ``bias``."""
    conv = nn.Conv2d(channels, outputs, kernel_size=3, padding=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(conv.bias, bias)  # type: ignore[arg-type]
    return conv


def one_channel_count(in_channels: Sequence[int], key: str) -> int:
    """The channel count shared by every level the head reads; a :class:`ConfigError` if they differ."""
    counts = set(in_channels)
    if len(counts) != 1:
        raise ConfigError(
            f"{key}: the head's convolutions are shared by every level, so the feature maps need one channel "
            f"count, got {list(in_channels)}; add a neck (model.neck.name=fpn)"
        )
    return counts.pop()


def flatten_levels(outputs: Sequence[Tensor], columns: int) -> Tensor:
    """Per-level predictions ``(N, A * D, Hi, Wi)`` -> ``(N, M, D)``, rows in the anchors' order."""
    per_level = []
    for out in outputs:
        n, _, h, w = out.shape
        out = out.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2)  # -> (N, Hi, Wi, A, D)
        per_level.append(out.reshape(n, -1, columns))  # -> (N, Hi*Wi*A, D)
    return torch.cat(per_level, dim=1)


def top_candidates(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best (row, class) pairs of a level's ``(M_i, K)`` scores (all of them if fewer).

    Returns:
        ``(T,)`` each: the scores, descending; their rows (anchor or location); their classes.
    """
    num_classes = scores.shape[1]
    flat = scores.flatten()  # (M_i, K) -> (M_i * K,)
    top_scores, top_idx = flat.topk(min(k, flat.numel()))
    return top_scores, torch.div(top_idx, num_classes, rounding_mode="floor"), top_idx % num_classes


__all__ = ["GROUPS", "conv_tower", "flatten_levels", "one_channel_count", "predictor", "top_candidates"]
