"""Winograd convolution: 3x3, stride-1 layers in a quarter of the multiplications.

A direct 3x3 convolution spends 9 multiply-adds per output pixel, input channel and
output channel. Winograd's minimal filtering algorithm ``F(m x m, 3 x 3)`` (Lavin &
Gray, 2015) computes an ``m x m`` output tile from an ``(m+2) x (m+2)`` input tile
with ``(m+2)^2`` of them instead of ``9 m^2``:

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A

where ``g`` is the 3x3 filter, ``d`` the input tile and ``(.)`` the elementwise
product. Summed over input channels, the elementwise products of every tile position
become ``a^2`` independent matrix products ``(tiles, C) @ (C, K)``, which run at the
CPU's GEMM speed (as one grouped 1x1 convolution, see :class:`_TileProducts`); the
input and output transforms are small matrix products over each tile. With ``m = 4``
that is 36 multiplications per 16 outputs instead of 144: on 2 CPU cores a
256-channel layer at stride 4 of an 800 px image takes 139 ms instead of 314 ms, and
its forward and backward about 2.2x less than the direct convolution's.

The transforms come from Toom-Cook interpolation at a few small points (see
:func:`winograd_matrices`). Their rounding grows with the tile: against a float64
reference, ``F(4x4, 3x3)`` in float32 is off by ~1e-5 of the output's range where a
direct convolution is off by ~1.5e-6 (``F(2x2, 3x3)`` by ~3e-7, but it saves less;
``F(6x6, 3x3)`` by ~2e-5, and it was no faster here).

:func:`winograd_conv2d` is the op (autograd included: its backward is two more
sets of products of the same size, so training gains as well);
:class:`WinogradConv2d` is a drop-in :class:`torch.nn.Conv2d` that takes the
Winograd path only where it pays (the CPU, float32/float64, wide layers, no autocast,
tracing, export or compiling), and :func:`use_winograd` swaps a model's eligible
convolutions for it, sharing their parameters.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from math import prod
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx
from torch.nn import functional as F

from detkit.ops.boxes import is_exporting
from detkit.ops.gemm_conv import GemmGradConv2d, gemm_grad_eligible

#: Interpolation points of ``F(m x m, 3 x 3)`` per output tile size ``m`` (plus the
#: point at infinity): small, symmetric points keep the transforms' rounding low.
POINTS: dict[int, tuple[Fraction, ...]] = {
    2: (Fraction(0), Fraction(1), Fraction(-1)),
    4: (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2)),
    6: (
        Fraction(0),
        Fraction(1),
        Fraction(-1),
        Fraction(2),
        Fraction(-2),
        Fraction(1, 2),
        Fraction(-1, 2),
    ),
}

#: The output tile size :class:`WinogradConv2d` uses.
DEFAULT_TILE = 4

Matrix = list[list[Fraction]]


def _polynomial(roots: list[Fraction]) -> list[Fraction]:
    """Coefficients of ``prod(x - r)``, lowest power first."""
    coefficients = [Fraction(1)]
    for root in roots:
        shifted = [Fraction(0), *coefficients]
        coefficients = [high - root * low for high, low in zip(shifted, [*coefficients, Fraction(0)])]
    return coefficients


def winograd_matrices(points: tuple[Fraction, ...]) -> tuple[Matrix, Matrix, Matrix]:
    """``B^T``, ``G`` and ``A^T`` of ``F(m, 3)`` for ``m + 1`` finite points, exactly.

    One dimension: ``y = A^T [(G g) (.) (B^T d)]`` is the correlation of a length
    ``m + 2`` signal ``d`` with a 3-tap filter ``g`` (``y_i = sum_k d_{i+k} g_k``).
    With ``M(x) = prod_j (x - p_j)`` and ``M_j(x) = M(x) / (x - p_j)``: row ``j`` of
    ``B^T`` holds the coefficients of ``M_j`` (the last row those of ``M``), row ``j``
    of ``G`` is ``(1, p_j, p_j^2) / M_j(p_j)`` and column ``j`` of ``A^T`` is
    ``(1, p_j, ..., p_j^(m-1))``; the point at infinity adds the last row of ``G`` and
    the last column of ``A^T``.
    """
    size = len(points) + 1  # the input tile, m + 2
    tile = size - 2
    bt = [[*_polynomial([q for q in points if q != p]), Fraction(0)] for p in points]
    bt.append(_polynomial(list(points)))
    scale = [prod((p - q for q in points if q != p), start=Fraction(1)) for p in points]
    g = [[p**k / s for k in range(3)] for p, s in zip(points, scale)]
    g.append([Fraction(0), Fraction(0), Fraction(1)])
    at = [[p**i for p in points] + [Fraction(int(i == tile - 1))] for i in range(tile)]
    return bt, g, at


@lru_cache(maxsize=16)
def _transforms(tile: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The 2-D transforms as matrices on flattened tiles: ``kron(X, X)`` of each 1-D one.

    ``(a*a, a*a)`` for the input, ``(a*a, 9)`` for the filter, ``(m*m, a*a)`` for the output.
    """
    if tile not in POINTS:
        raise ValueError(f"Winograd tile size {tile} is not one of {sorted(POINTS)}")
    exact = winograd_matrices(POINTS[tile])
    bt, g, at = (torch.tensor([[float(v) for v in row] for row in m], dtype=torch.float64) for m in exact)
    return tuple(torch.kron(m, m).to(dtype=dtype, device=device) for m in (bt, g, at))  # type: ignore[return-value]


def filter_transform(weight: Tensor, tile: int = DEFAULT_TILE) -> Tensor:
    """``G g G^T`` of every ``(K, C, 3, 3)`` filter, as ``(a*a*K, C, 1, 1)`` grouped 1x1 weights; differentiable.

    Group ``t`` (rows ``t*K`` to ``t*K + K``) holds tile position ``t`` of every filter.
    """
    out_channels, in_channels = weight.shape[:2]
    _, filter_t, _ = _transforms(tile, weight.dtype, weight.device)
    taps = weight.permute(2, 3, 0, 1).reshape(9, out_channels * in_channels)
    return (filter_t @ taps).view(-1, in_channels, 1, 1)


def _tile_grid(height: int, width: int, tile: int) -> tuple[int, int]:
    return -(-height // tile), -(-width // tile)


def _nhwc(x: Tensor) -> Tensor:
    """``(N, H, W, C)`` view of an NCHW tensor (free for channels-last ones)."""
    return x.permute(0, 2, 3, 1)


def _channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _as_nchw(nhwc: Tensor, channels_last: bool) -> Tensor:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return nhwc.permute(0, 3, 1, 2).contiguous(memory_format=layout)


class _InputTransform(torch.autograd.Function):
    """``B^T d B`` of every overlapping ``a x a`` tile of the zero-padded input.

    ``(N, C, H, W)`` -> ``(P, a*a, C)`` with ``P = N * th * tw`` tiles, tile position
    in the middle: the layout the grouped product reads as channels-last.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, tile: int) -> Tensor:
        n, channels, height, width = x.shape
        size = tile + 2
        rows, cols = _tile_grid(height, width, tile)
        padded = x.new_zeros(n, rows * tile + 2, cols * tile + 2, channels)
        padded[:, 1 : height + 1, 1 : width + 1] = _nhwc(x)
        windows = padded.unfold(1, size, tile).unfold(2, size, tile)  # (N, th, tw, C, a, a)
        tiles = windows.permute(0, 1, 2, 4, 5, 3).reshape(n * rows * cols, size * size, channels)
        ctx.tile, ctx.shape, ctx.channels_last = tile, x.shape, _channels_last(x)  # type: ignore[attr-defined]
        return _transforms(tile, x.dtype, x.device)[0] @ tiles

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        tile: int = ctx.tile  # type: ignore[attr-defined]
        n, channels, height, width = ctx.shape  # type: ignore[attr-defined]
        size = tile + 2
        rows, cols = _tile_grid(height, width, tile)
        input_t = _transforms(tile, grad.dtype, grad.device)[0]
        grad_tiles = (input_t.T @ grad).view(n, rows, cols, size, size, channels)
        padded = grad.new_zeros(n, rows * tile + 2, cols * tile + 2, channels)
        for u in range(size):  # overlapping tiles: each position adds into its own strided view
            for v in range(size):
                padded[:, u : u + rows * tile : tile, v : v + cols * tile : tile] += grad_tiles[:, :, :, u, v]
        return _as_nchw(padded[:, 1 : height + 1, 1 : width + 1], ctx.channels_last), None  # type: ignore[attr-defined]


class _TileProducts(torch.autograd.Function):
    """``(P, a*a, C)`` transformed tiles x ``(a*a*K, C, 1, 1)`` transformed filters -> ``(P, a*a, K)``.

    Position ``t`` of every tile is multiplied by position ``t`` of every filter and
    summed over channels: ``a*a`` independent matrix products, run forward as one
    grouped 1x1 convolution on channels-last tiles and backward as that convolution's
    input gradient plus one strided batched matmul for the filters (oneDNN's own
    grouped weight gradient is 3x slower).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, tiles: Tensor, filters: Tensor) -> Tensor:
        count, area, _ = tiles.shape
        ctx.save_for_backward(tiles, filters)
        products = F.conv2d(_grouped(tiles), filters, groups=area)
        return products.permute(0, 2, 3, 1).reshape(count, area, -1)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        tiles, filters = ctx.saved_tensors  # type: ignore[attr-defined]
        count, area, channels = tiles.shape
        grad_tiles = grad_filters = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            transposed = filters.view(area, -1, channels).transpose(1, 2).reshape(area * channels, -1, 1, 1)
            grad_tiles = F.conv2d(_grouped(grad.contiguous()), transposed, groups=area)
            grad_tiles = grad_tiles.permute(0, 2, 3, 1).reshape(count, area, channels)
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            # (a*a, C, P) @ (a*a, P, K): both strided views of the (P, a*a, .) tensors, no copies
            per_position = torch.bmm(tiles.permute(1, 2, 0), grad.permute(1, 0, 2))
            grad_filters = per_position.transpose(1, 2).reshape(filters.shape)
        return grad_tiles, grad_filters


def _grouped(tiles: Tensor) -> Tensor:
    """``(P, a*a, C)`` as the channels-last image ``(1, a*a*C, P, 1)`` (a view)."""
    count, area, channels = tiles.shape
    return tiles.view(1, count, 1, area * channels).permute(0, 3, 1, 2)


class _OutputTransform(torch.autograd.Function):
    """``A^T M A`` of every ``(P, a*a, K)`` tile product, plus a bias, placed as ``(N, K, H, W)``.

    The output has the input's memory format.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, products: Tensor, bias: Tensor | None, shape: tuple[int, int, int, int], channels_last: bool
    ) -> Tensor:
        n, height, width = shape[0], shape[2], shape[3]
        tile = round(products.shape[1] ** 0.5) - 2
        rows, cols = _tile_grid(height, width, tile)
        tiles = _transforms(tile, products.dtype, products.device)[2] @ products  # (P, m*m, K)
        out_channels = tiles.shape[-1]
        layout = torch.channels_last if channels_last else torch.contiguous_format
        # a tensor of its own, not a view: in-place ops after it (ReLU) are then allowed
        result = torch.empty(
            n, out_channels, height, width, dtype=tiles.dtype, device=tiles.device, memory_format=layout
        )
        placed = _nhwc(result)
        grid = tiles.view(n, rows, cols, tile, tile, out_channels).transpose(2, 3)  # (N, th, m, tw, m, K)
        if channels_last and (rows * tile, cols * tile) == (height, width):  # one pass: tiles -> output
            placed, grid = placed.view(grid.shape), grid
        else:
            grid = grid.reshape(n, rows * tile, cols * tile, out_channels)[:, :height, :width]
        if bias is None:
            placed.copy_(grid)
        else:
            torch.add(grid, bias, out=placed)
        ctx.tile, ctx.has_bias = tile, bias is not None  # type: ignore[attr-defined]
        return result

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor | None, None, None]:
        tile: int = ctx.tile  # type: ignore[attr-defined]
        n, out_channels, height, width = grad.shape
        rows, cols = _tile_grid(height, width, tile)
        full = _nhwc(grad)
        if (rows * tile, cols * tile) != (height, width):  # cropped tiles: their gradient is zero
            full = grad.new_zeros(n, rows * tile, cols * tile, out_channels)
            full[:, :height, :width] = _nhwc(grad)
        grad_tiles = full.reshape(n, rows, tile, cols, tile, out_channels).transpose(2, 3)
        grad_tiles = grad_tiles.reshape(n * rows * cols, tile * tile, out_channels)
        grad_products = _transforms(tile, grad.dtype, grad.device)[2].T @ grad_tiles
        grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias else None  # type: ignore[attr-defined]
        return grad_products, grad_bias, None, None


def winograd_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    tile: int = DEFAULT_TILE,
    filters: Tensor | None = None,
) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for 3x3 filters, computed as Winograd ``F(tile, 3)``.

    ``filters`` is ``filter_transform(weight, tile)`` when the caller keeps it (the
    weights of an inference model do not change). The output has ``x``'s memory
    format; gradients reach ``x``, ``weight`` (or ``filters``) and ``bias``.
    """
    if x.dim() != 4 or weight.shape[2:] != (3, 3) or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"winograd_conv2d: needs (N, C, H, W) input and (K, C, 3, 3) weights, "
            f"got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if filters is None:
        filters = filter_transform(weight, tile)
    products = _TileProducts.apply(_InputTransform.apply(x, tile), filters)
    return _OutputTransform.apply(products, bias, tuple(x.shape), _channels_last(x))


class WinogradConv2d(GemmGradConv2d):
    """A 3x3, stride-1, padding-1 :class:`torch.nn.Conv2d` that runs as Winograd where it pays.

    That is on the CPU, in float32 or float64, on maps of at least :attr:`min_tiles`
    output tiles (:attr:`min_training_tiles` when gradients flow: the filter gradient
    is a fixed cost), and not under autocast, tracing, export or ``torch.compile``
    (those get the plain convolution, so exported and compiled models are unchanged).
    Elsewhere it is a :class:`~detkit.ops.gemm_conv.GemmGradConv2d` (smaller maps in
    training: the weight gradient as one GEMM). Without autograd the transformed
    filters are kept, and recomputed only when the weights change.
    """

    #: fewer 4x4 output tiles (``N * ceil(H/4) * ceil(W/4)``) than this run direct
    min_tiles = 64
    #: the same with gradients (measured on 2 CPU cores: 63 tiles of 256 channels
    #: 0.7x, 100 tiles of 512 channels 1.1-1.5x, 221 tiles of 256 channels 1.6x)
    min_training_tiles = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._filters: tuple[tuple[int, int], Tensor] | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> WinogradConv2d:
        """A Winograd twin of ``conv`` that shares its weight and bias parameters."""
        return _twin(cls, conv)

    def to_conv(self) -> nn.Conv2d:
        """The plain :class:`torch.nn.Conv2d` again, on the same parameters."""
        return _twin(nn.Conv2d, self)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The convolution with ``weight`` (``self.weight``, or one derived from it: a folded norm's)."""
        grad_enabled = torch.is_grad_enabled()
        training = grad_enabled and (x.requires_grad or weight.requires_grad)
        if not self._winograd_pays(x, weight, self.min_training_tiles if training else self.min_tiles):
            return super()._conv_forward(x, weight, bias)
        # frozen own weights keep their transformed filters (e.g. frozen layers, inference)
        kept = weight is self.weight and not (grad_enabled and weight.requires_grad)
        return winograd_conv2d(x, weight, bias, filters=self._kept_filters() if kept else None)

    def _winograd_pays(self, x: Tensor, weight: Tensor, min_tiles: int) -> bool:
        if is_exporting() or torch.compiler.is_compiling():  # before any size test, which a trace would record
            return False
        return (
            x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and x.dtype == weight.dtype
            and x.dim() == 4
            and not torch.is_autocast_enabled("cpu")
            and x.shape[0] * -(-x.shape[2] // DEFAULT_TILE) * -(-x.shape[3] // DEFAULT_TILE) >= min_tiles
        )

    def _kept_filters(self) -> Tensor:
        key = (self.weight._version, self.weight.data_ptr())
        if self._filters is None or self._filters[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable outside inference mode
                self._filters = (key, filter_transform(self.weight))
        return self._filters[1]


_Conv = TypeVar("_Conv", bound=nn.Conv2d)


def _twin(cls: type[_Conv], conv: nn.Conv2d) -> _Conv:
    """A ``cls`` convolution like ``conv``, on its own parameters (built on the meta device: no copy)."""
    twin = cls(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,  # type: ignore[arg-type]
        conv.groups, bias=False, padding_mode=conv.padding_mode, device="meta",
    )
    twin.weight = conv.weight
    twin.bias = conv.bias
    twin.train(conv.training)
    return twin


#: Convolutions narrower than this (in or out channels) stay direct: the transforms'
#: memory traffic outweighs the saved multiplications (measured on 2 CPU cores:
#: 256 channels about 2x faster, 128 channels 1.3-1.5x, 64 channels 0.8x).
MIN_CHANNELS = 128


def winograd_eligible(conv: nn.Module, min_channels: int = MIN_CHANNELS) -> bool:
    """Whether ``conv`` is a plain 3x3, stride-1, padding-1, dense convolution this wide."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding in ((1, 1), "same")
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min(conv.in_channels, conv.out_channels) >= min_channels
    )


def use_winograd(model: nn.Module, enabled: bool = True, *, min_channels: int = MIN_CHANNELS) -> int:
    """Swap ``model``'s convolutions for detkit's CPU ones (or back); how many.

    Eligible ones (:func:`winograd_eligible`) become :class:`WinogradConv2d`; the other
    dense ones with at least 16 input channels (1x1, strided or narrow 3x3)
    :class:`~detkit.ops.gemm_conv.GemmGradConv2d`, whose gradients are GEMMs.
    Parameters are shared, not copied: state dicts, optimizers and checkpoints see
    the same tensors under the same names.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if enabled and winograd_eligible(child, min_channels):
                setattr(parent, name, WinogradConv2d.from_conv(child))  # type: ignore[arg-type]
            elif enabled and gemm_grad_eligible(child):
                setattr(parent, name, _twin(GemmGradConv2d, child))  # type: ignore[arg-type]
            elif not enabled and type(child) in (WinogradConv2d, GemmGradConv2d):
                setattr(parent, name, _twin(nn.Conv2d, child))  # type: ignore[arg-type]
            else:
                continue
            swapped += 1
    return swapped


__all__ = [
    "DEFAULT_TILE",
    "MIN_CHANNELS",
    "POINTS",
    "WinogradConv2d",
    "filter_transform",
    "use_winograd",
    "winograd_conv2d",
    "winograd_eligible",
    "winograd_matrices",
]
