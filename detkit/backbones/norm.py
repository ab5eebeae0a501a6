"""Normalization layers selectable by name."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (buffers, not parameters).

    Detection fine-tunes with 1-2 images per GPU, far too few for batch statistics,
    so pretrained statistics are kept frozen. Loads ``nn.BatchNorm2d`` state dicts
    (``num_batches_tracked`` is ignored).
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """The per-channel ``(scale, shift)`` this layer applies."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_and_shift()
        # (C,) -> (1, C, 1, 1) to broadcast over (N, C, H, W)
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def conv_then_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))``, with a :class:`FrozenBatchNorm2d` folded into the convolution as it runs.

    ``conv(x) * s + t`` is one convolution with weights ``w * s`` and bias ``b * s + t``:
    the feature map is written once instead of three times (convolution, multiply, add),
    and backward skips the multiply's pass too. Autograd carries the weight's gradient
    through the scaling, so training follows the same path (to float rounding; about 4%
    of a ResNet-50 FPN training step on the CPU). Any other norm, and modules with
    hooks (which must see what they saw), run as they are.
    """
    if not isinstance(norm, FrozenBatchNorm2d) or _hooked(conv) or _hooked(norm):
        return norm(conv(x))
    scale, shift = norm.scale_and_shift()
    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return conv._conv_forward(x, weight, bias.to(conv.weight.dtype))


class ConvNorm(nn.Sequential):
    """``Sequential(conv, norm)`` that runs through :func:`conv_then_norm` (a ResNet projection shortcut)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module) -> None:
        super().__init__(conv, norm)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        conv, norm = self
        assert isinstance(conv, nn.Conv2d)
        return conv_then_norm(conv, norm, x)


def _hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


def make_norm(kind: str, channels: int) -> nn.Module:
    """A normalization layer: ``"bn"``, ``"frozen_bn"``, ``"gn"`` (32 groups or fewer) or ``"none"``."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "gn":
        groups = 32
        while channels % groups:
            groups //= 2
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use one of bn, frozen_bn, gn, none")
