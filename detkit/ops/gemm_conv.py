"""Convolutions whose gradients are matrix products (im2col + GEMM) on the CPU.

oneDNN's weight gradient of channels-last convolutions runs below the CPU's
matrix-product speed: on 2 cores of an AVX2 EPYC, 23-47 GFLOP/s for ResNet-50's
stride-2 3x3 layers, 80 for its last stage's 3x3 layers and 90-130 for 1x1 layers,
where a matrix product of the same size runs at ~150 (the stride-2 3x3 layer of the
second stage: 133 ms against 36).

The weight gradient of a convolution is the product ``grad^T (K, M) @ cols (M, kh*kw*C)``
over the ``M`` output pixels, where row ``i`` of ``cols`` is the input patch under
output pixel ``i`` (im2col). On a channels-last input ``cols`` is ``kh*kw`` strided
views of the padded input stacked side by side (one copy), and for a 1x1
convolution the input itself. A 1x1, stride-1 convolution's input gradient is one
product too, ``grad (M, K) @ W (K, C)``; the others' input gradients and every
forward stay oneDNN's, which run at speed. On the R50-FPN training step of
``detkit benchmark --train`` this saves about 6% (measured with ``--winograd``,
which swaps these in).

:func:`conv2d_gemm_grad` is the op; :class:`GemmGradConv2d` a drop-in
:class:`torch.nn.Conv2d` that takes it where it applies (CPU, float32/float64,
channels-last input, a weight that needs its gradient).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx
from torch.nn import functional as F

Pair = tuple[int, int]


def im2col(x: Tensor, kernel: Pair, stride: Pair, padding: Pair) -> Tensor:
    """``(N*OH*OW, kh*kw*C)``: each output pixel's zero-padded input patch, ordered ``(ky, kx, c)``.

    ``x`` is ``(N, C, H, W)``; channels-last storage makes every piece a strided view.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, channels, height, width = x.shape
    out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    padded = x.permute(0, 2, 3, 1)  # (N, H, W, C)
    if ph or pw:
        padded = F.pad(padded, (0, 0, pw, pw, ph, ph))
    if (kh, kw) == (1, 1):  # the input itself (a view at stride 1)
        return padded[:, : sh * (out_h - 1) + 1 : sh, : sw * (out_w - 1) + 1 : sw].reshape(-1, channels)
    pieces = [
        padded[:, ky : ky + sh * (out_h - 1) + 1 : sh, kx : kx + sw * (out_w - 1) + 1 : sw]
        for ky in range(kh)
        for kx in range(kw)
    ]
    return torch.stack(pieces, dim=3).view(n * out_h * out_w, kh * kw * channels)


class _GemmWeightGrad(torch.autograd.Function):
    """``F.conv2d`` forward; backward: oneDNN's input gradient, the weight gradient as one GEMM."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None  # type: ignore[attr-defined]
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        out_channels, _, kh, kw = weight.shape
        rows = grad.permute(0, 2, 3, 1).reshape(-1, out_channels)  # (M, K): a view when channels-last
        if ctx.needs_input_grad[0] and (kh, kw, *ctx.stride, *ctx.padding) == (1, 1, 1, 1, 0, 0):
            # a pointwise convolution's input gradient is one GEMM too: (M, K) @ (K, C)
            grad_x = (rows @ weight.reshape(out_channels, -1)).view(x.permute(0, 2, 3, 1).shape).permute(0, 3, 1, 2)
        elif ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0), 1, (True, False, False)
            )[0]
        if ctx.needs_input_grad[1]:
            cols = im2col(x, (kh, kw), ctx.stride, ctx.padding)
            # (K, kh*kw*C) -> (K, C, kh, kw) with channels-last strides, the weight's own layout
            grad_weight = (rows.T @ cols).view(out_channels, kh, kw, -1).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None


def gemm_grad_applies(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`conv2d_gemm_grad` takes its own path for this input and weight."""
    return (
        torch.is_grad_enabled()
        and weight.requires_grad
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.float64)
        and x.dtype == weight.dtype
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def conv2d_gemm_grad(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (dense, dilation 1) with the weight gradient as one GEMM.

    Falls back to ``F.conv2d`` where :func:`gemm_grad_applies` says no.
    """
    if not gemm_grad_applies(x, weight):
        return F.conv2d(x, weight, bias, stride, padding)
    out: Tensor = _GemmWeightGrad.apply(x, weight, bias, tuple(stride), tuple(padding))
    return out


class GemmGradConv2d(nn.Conv2d):
    """A :class:`torch.nn.Conv2d` whose weight gradient runs as one GEMM on channels-last CPU inputs.

    Only dense (``groups=1``), undilated, zero-padded convolutions with numeric padding
    take that path; the others, and every forward without a weight gradient, run
    as a plain :class:`torch.nn.Conv2d`.
    """

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not _gemm_shaped(self):
            return super()._conv_forward(x, weight, bias)
        padding: Pair = self.padding  # type: ignore[assignment]  # numeric: _gemm_shaped checked it
        return conv2d_gemm_grad(x, weight, bias, (self.stride[0], self.stride[1]), padding)


def gemm_grad_eligible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain :class:`torch.nn.Conv2d` that :class:`GemmGradConv2d` can run.

    Dense, undilated and zero-padded with numeric padding, with at least
    :data:`MIN_IN_CHANNELS` input channels.
    """
    return type(conv) is nn.Conv2d and _gemm_shaped(conv)


#: Convolutions with fewer input channels stay oneDNN's: their im2col is many thin copies
#: (a ResNet stem's 7x7 on 3 channels: 82 ms against oneDNN's 35, measured on 2 cores).
MIN_IN_CHANNELS = 16


def _gemm_shaped(conv: nn.Conv2d) -> bool:
    return (
        conv.in_channels >= MIN_IN_CHANNELS
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


__all__ = ["MIN_IN_CHANNELS", "GemmGradConv2d", "conv2d_gemm_grad", "gemm_grad_applies", "gemm_grad_eligible", "im2col"]
