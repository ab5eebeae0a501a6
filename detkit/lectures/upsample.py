"""Learned and unlearned upsampling of CS231n lecture 11 (segmentation "in-network upsampling").

Shape glossary: ``N`` images, ``C`` channels (``C_in``/``C_out`` for transpose
convolution), ``H x W`` input and ``H_out x W_out`` output sizes, ``k`` kernel
size, ``s`` stride, ``p`` padding.

- nearest neighbour: copy each value into an ``s x s`` block;
- "bed of nails": put each value at the top-left of its block, zeros elsewhere;
- max unpooling: put each value back where the paired max pool found its
  maximum (the pool's ``indices``), zeros elsewhere, so that fine spatial
  detail lost by pooling is restored in the decoder;
- transpose convolution: each input value scales a copy of the kernel that is
  added into the output at stride ``s``; overlaps are summed. It is the adjoint
  (transpose) of the strided convolution with the same kernel: the gradient of
  ``conv2d`` with respect to its input, whence the names "transpose" and the
  misnomer "deconvolution". Written here with ``fold``: per input pixel a
  ``(C_out * k * k)`` column of kernel copies, folded (scatter-added) into place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ScratchConvTranspose2d",
    "bed_of_nails",
    "nearest_upsample",
    "scratch_conv_transpose2d",
    "scratch_max_unpool2d",
]

IntPair = int | tuple[int, int]


def _pair(v: IntPair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _nearest_index(in_size: int, out_size: int, device: torch.device) -> Tensor:
    """Source index of each output position: ``floor(dst * in / out)``, in exact integer arithmetic."""
    return torch.arange(out_size, device=device) * in_size // out_size


def nearest_upsample(x: Tensor, scale_factor: int | None = None, size: tuple[int, int] | None = None) -> Tensor:
    """Nearest-neighbour resize ``(N, C, H, W) -> (N, C, H_out, W_out)``.

    Give either an integer ``scale_factor`` (``H_out = s * H``) or an output ``size``.
    Output pixel ``(i, j)`` copies input ``(floor(i * H / H_out), floor(j * W / W_out))``.
    """
    h, w = x.shape[-2:]
    if scale_factor is not None and size is None:
        out_h, out_w = h * scale_factor, w * scale_factor
    elif size is not None and scale_factor is None:
        out_h, out_w = size
    else:
        raise ValueError("give exactly one of scale_factor and size")
    rows = _nearest_index(h, out_h, x.device)
    cols = _nearest_index(w, out_w, x.device)
    # Gathering rows then columns; the backward pass sums each block's gradients into its source pixel.
    return x.index_select(-2, rows).index_select(-1, cols)


def bed_of_nails(x: Tensor, stride: int = 2) -> Tensor:
    """``(N, C, H, W) -> (N, C, s*H, s*W)``: each value at the top-left of its ``s x s`` block, zeros elsewhere."""
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, h * stride, w * stride)
    out[..., ::stride, ::stride] = x
    return out


def scratch_max_unpool2d(
    x: Tensor,
    indices: Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    output_size: tuple[int, int] | None = None,
) -> Tensor:
    """Undo a max pool: ``(N, C, H, W)`` values and the pool's ``indices`` -> ``(N, C, H_out, W_out)``.

    ``indices`` (same shape as ``x``) are flat positions ``row * W_out + col`` in each
    ``H_out x W_out`` plane, as returned by ``F.max_pool2d(..., return_indices=True)``.
    ``H_out = (H - 1) * s - 2 p + k`` unless ``output_size`` is given (needed when the
    pooled input's size was not a multiple of the stride). ``stride`` defaults to ``kernel_size``.
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride if stride is not None else kernel_size)
    ph, pw = _pair(padding)
    n, c, h, w = x.shape
    if output_size is None:
        output_size = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
    out_h, out_w = output_size
    if indices.shape != x.shape:
        raise ValueError(f"indices {tuple(indices.shape)} must have the shape of the input {tuple(x.shape)}")
    flat = x.new_zeros(n, c, out_h * out_w)
    # (N, C, H, W) -> (N, C, H*W), scattered into (N, C, H_out*W_out); backward gathers at the same indices.
    flat = flat.scatter(2, indices.reshape(n, c, h * w), x.reshape(n, c, h * w))
    return flat.reshape(n, c, out_h, out_w)


def scratch_conv_transpose2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Tensor:
    """Transpose convolution ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)`` (``groups = 1``).

    ``weight``: ``(C_in, C_out, kh, kw)`` (torch's layout: the conv2d weight it is the adjoint of,
    ``(C_out_conv = C_in, C_in_conv = C_out, kh, kw)``); ``bias``: ``(C_out,)``.
    ``H_out = (H - 1) s - 2 p + d (k - 1) + output_padding + 1``: the input size of a
    ``conv2d(stride=s, padding=p, dilation=d)`` that maps ``H_out`` to ``H``;
    ``output_padding < s`` picks among the sizes that conv rounds to the same ``H``.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    oph, opw = _pair(output_padding)
    dh, dw = _pair(dilation)
    n, c_in, h, w = x.shape
    if weight.shape[0] != c_in:
        raise ValueError(f"weight {tuple(weight.shape)} expects {weight.shape[0]} input channels, got {c_in}")
    if not (0 <= oph < max(sh, dh) and 0 <= opw < max(sw, dw)):
        raise ValueError(f"output_padding {output_padding} must be smaller than the stride or the dilation")
    _, c_out, kh, kw = weight.shape
    out_h = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    out_w = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"padding {padding} leaves no output for input {h}x{w} (output {out_h}x{out_w})")
    # Each input pixel's C_in values times the kernel -> one column of C_out * kh * kw contributions.
    cols = weight.reshape(c_in, c_out * kh * kw).T @ x.reshape(n, c_in, h * w)  # (N, C_out*kh*kw, H*W)
    # fold scatter-adds the columns at stride s into the full output, (H - 1) s + d (k - 1) + 1 high ...
    full_h, full_w = (h - 1) * sh + dh * (kh - 1) + 1, (w - 1) * sw + dw * (kw - 1) + 1
    full = F.fold(cols, (full_h, full_w), (kh, kw), dilation=(dh, dw), stride=(sh, sw))  # (N, C_out, full_h, full_w)
    # ... of which padding p crops p rows/cols on each side; output_padding adds rows/cols at the bottom/right,
    # taken back from the cropped padding where there is some, zeros beyond it.
    full = F.pad(full, (0, max(0, opw - pw), 0, max(0, oph - ph)))
    out = full[:, :, ph : ph + out_h, pw : pw + out_w]
    if bias is not None:
        out = out + bias[None, :, None, None]
    return out


class ScratchConvTranspose2d(nn.Module):
    """Module form of :func:`scratch_conv_transpose2d`; loads ``torch.nn.ConvTranspose2d`` state dicts (groups=1).

    ``weight``: ``(in_channels, out_channels, kh, kw)``; ``bias``: ``(out_channels,)``;
    initialised like torch, uniform in ``±1/sqrt(out_channels * kh * kw)`` (torch's fan
    rule reads dim 1 of the weight as the fan-in).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        output_padding: IntPair = 0,
        bias: bool = True,
        dilation: IntPair = 1,
    ) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.stride, self.padding = _pair(stride), _pair(padding)
        self.output_padding, self.dilation = _pair(output_padding), _pair(dilation)
        bound = 1.0 / math.sqrt(out_channels * kh * kw)
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, kh, kw).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``."""
        return scratch_conv_transpose2d(
            x, self.weight, self.bias, self.stride, self.padding, self.output_padding, self.dilation
        )
