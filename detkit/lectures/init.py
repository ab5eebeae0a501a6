"""Weight initialisation of CS231n lecture 6: Xavier/Glorot and He/Kaiming, Gaussian.

Why the scaling: for ``y = W x`` with ``n`` independent inputs of variance ``v``
and zero-mean weights of variance ``s^2``, ``Var(y) = n s^2 v``. Keeping the
activation variance constant from layer to layer therefore needs ``s^2 = 1/n``;
averaging the forward (``fan_in``) and backward (``fan_out``) conditions gives
Glorot's ``s^2 = 2 / (fan_in + fan_out)``. A ReLU zeroes half of its inputs,
halving the second moment, so He et al. double it: ``s^2 = 2 / fan_in``.

Where the course notes slip: the notes' "Xavier" snippet
``w = np.random.randn(n) / sqrt(n)`` is LeCun's ``1/fan_in`` rule, not Glorot's
average of fans, and some slides and libraries draw Xavier from a *uniform*
distribution. A uniform ``U(-a, a)`` has variance ``a^2 / 3``, so the two agree
only if ``a = sqrt(6 / (fan_in + fan_out))``. Here both schemes draw from a
Gaussian with exactly the standard deviations above, the same draws as
``torch.nn.init.xavier_normal_`` / ``kaiming_normal_`` given the same generator.

Fans follow torch's convention for a weight ``(out, in, *kernel)`` (Linear and
ConvNd): ``fan_in = in * prod(kernel)``, ``fan_out = out * prod(kernel)``; for a
grouped conv ``in`` is already the per-group input count, as it should be.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["compute_fans", "he_normal_", "init_weights_", "xavier_normal_"]


def compute_fans(weight: Tensor | torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of shape ``(out, in, *kernel)`` (Linear: ``(out, in)``)."""
    shape = tuple(weight.shape) if isinstance(weight, Tensor) else tuple(weight)
    if len(shape) < 2:
        raise ValueError(f"fans need a weight with at least 2 dims (out, in, *kernel), got shape {shape}")
    receptive_field = math.prod(shape[2:])  # 1 for Linear; kh * kw for Conv2d
    return shape[1] * receptive_field, shape[0] * receptive_field


def xavier_normal_(weight: Tensor, gain: float = 1.0, *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``weight`` in place from ``N(0, std^2)``, ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    Suits tanh (``gain = 1``). Returns ``weight``.
    """
    fan_in, fan_out = compute_fans(weight)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.normal_(0.0, std, generator=generator)


def he_normal_(
    weight: Tensor,
    negative_slope: float = 0.0,
    mode: Literal["fan_in", "fan_out"] = "fan_in",
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill ``weight`` in place from ``N(0, std^2)``, ``std = sqrt(2 / ((1 + a^2) fan))``.

    ``a = negative_slope`` of a leaky ReLU (0 for ReLU, giving ``sqrt(2 / fan_in)``);
    ``mode="fan_out"`` preserves the backward pass's gradient variance instead.
    Returns ``weight``.
    """
    fan_in, fan_out = compute_fans(weight)
    fan = fan_in if mode == "fan_in" else fan_out
    std = math.sqrt(2.0 / ((1.0 + negative_slope**2) * fan))
    with torch.no_grad():
        return weight.normal_(0.0, std, generator=generator)


def init_weights_(
    model: nn.Module,
    scheme: Literal["xavier", "he"] = "he",
    *,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialise every Linear and ConvNd weight of ``model`` with ``scheme``; zero their biases.

    Biases start at 0: symmetry is already broken by the random weights.
    Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            if scheme == "xavier":
                xavier_normal_(module.weight, generator=generator)
            elif scheme == "he":
                he_normal_(module.weight, generator=generator)
            else:
                raise ValueError(f"unknown init scheme {scheme!r}; use 'xavier' or 'he'")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
