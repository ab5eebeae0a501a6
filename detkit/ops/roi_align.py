"""RoIAlign for the CPU: a vectorized gather kernel, threads for the rest.

torchvision's CPU RoIAlign kernels run on one thread and walk the feature map one
channel at a time; on a CPU training step their backward pass alone took a tenth
of the time. Two faster paths, both equal to torchvision's up to float summation
order:

- **Gather** (a fixed ``sampling_ratio > 0``, the detectors' setting): every bin's
  samples and bilinear corners become row indices into the ``(N*H*W, C)``
  channels-last view of the features and weights, and
  :func:`torch.nn.functional.embedding_bag` sums the weighted rows, all channels
  of a row at once (vectorized, threaded, and with its own fast backward). The
  view is free for channels-last features and one copy for NCHW ones.
- **Threads** (adaptive sampling, ``sampling_ratio <= 0``, whose sample count
  varies per region): the regions are split into chunks that run torchvision's
  own kernels in parallel threads (the kernels release the GIL), and the
  per-chunk feature gradients are summed.

On CUDA, for quantized input, for too few regions and while a model is traced or
exported (:func:`~detkit.ops.boxes.is_exporting`) it defers to torchvision.

float16/bfloat16 features (a model run under autocast) are pooled in float32, with
float32 boxes, and the result is cast back, as torchvision's autocast kernel does:
torchvision has no half-precision CPU kernel, and the worker threads do not inherit
the caller's autocast state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import torch
import torchvision
from torch import Tensor
from torch.autograd.function import FunctionCtx
from torch.nn import functional as F

from detkit.ops.boxes import HALF_DTYPES, at_least_float32, is_exporting

#: Fewer regions than this per thread are not worth a thread (a 7x7 or 14x14 region of
#: 256 channels takes tens of microseconds; a thread hand-off a few). Below twice this
#: many regions torchvision's kernel runs them (the gather path's index set-up, and its
#: copy of NCHW features, would cost more).
MIN_ROIS_PER_THREAD = 16


@lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detkit-roi-align")


def _chunks(num_rois: int) -> list[slice]:
    workers = min(torch.get_num_threads(), max(1, num_rois // MIN_ROIS_PER_THREAD))
    if workers <= 1:
        return [slice(0, num_rois)]
    step = -(-num_rois // workers)
    return [slice(i, min(i + step, num_rois)) for i in range(0, num_rois, step)]


def _forward(features: Tensor, rois: Tensor, args: tuple[float, int, int, int, bool]) -> Tensor:
    scale, out_h, out_w, sampling_ratio, aligned = args
    return torch.ops.torchvision.roi_align(features, rois, scale, out_h, out_w, sampling_ratio, aligned)


class _ParallelRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, features: Tensor, rois: Tensor, spatial_scale: float, out_h: int, out_w: int,
        sampling_ratio: int, aligned: bool,
    ) -> Tensor:
        args = (spatial_scale, out_h, out_w, sampling_ratio, aligned)
        ctx.save_for_backward(rois)
        ctx.args = args  # type: ignore[attr-defined]
        ctx.feature_shape = features.shape  # type: ignore[attr-defined]
        chunks = _chunks(rois.shape[0])
        if len(chunks) == 1:
            return _forward(features, rois, args)
        parts = list(_pool(len(chunks)).map(lambda s: _forward(features, rois[s], args), chunks))
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (rois,) = ctx.saved_tensors
        scale, out_h, out_w, sampling_ratio, aligned = ctx.args
        n, c, h, w = ctx.feature_shape
        grad_output = grad_output.contiguous()

        def backward_chunk(s: slice) -> Tensor:
            return torch.ops.torchvision._roi_align_backward(
                grad_output[s], rois[s], scale, out_h, out_w, n, c, h, w, sampling_ratio, aligned
            )

        chunks = _chunks(rois.shape[0])
        if len(chunks) == 1:
            grad = backward_chunk(chunks[0])
        else:
            grad = torch.stack(list(_pool(len(chunks)).map(backward_chunk, chunks))).sum(dim=0)
        return grad, None, None, None, None, None, None


def roi_align(
    features: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | Sequence[int],
    *,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign: ``(N, C, H, W)`` features and R regions -> ``(R, C, h, w)``.

    Same arguments and results as :func:`torchvision.ops.roi_align`, except that the
    gather path keeps the memory format: channels-last features in, channels-last out.

    Args:
        features: ``(N, C, H, W)`` feature maps (quantized ones need ``N == 1`` and
            quantized ``boxes``, as in torchvision; float16/bfloat16 ones are pooled
            in float32 and the result cast back to their dtype).
        boxes: ``(R, 5)`` rois ``(image index, x1, y1, x2, y2)``, or one ``(R_n, 4)``
            xyxy tensor per image (``R = sum R_n``).
        output_size: ``h`` and ``w`` as one int (square) or a pair ``(h, w)``.
        spatial_scale: feature map size / input size, e.g. ``1 / stride``.
        sampling_ratio: samples per bin side; ``<= 0`` adapts it to the region size.
        aligned: shift the boxes by half a pixel (Detectron2's RoIAlign).
    """
    if features.dtype in HALF_DTYPES:
        boxes = at_least_float32(boxes) if isinstance(boxes, Tensor) else [at_least_float32(b) for b in boxes]
        pooled = roi_align(
            features.float(), boxes, output_size,
            spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned,
        )
        return pooled.to(features.dtype)
    num_rois = _num_rois(boxes)
    if not _own_path(features, num_rois):
        # torchvision takes the boxes and output_size as given (and checks them)
        return torchvision.ops.roi_align(
            features, boxes if isinstance(boxes, Tensor) else list(boxes), output_size,
            spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned,
        )
    out_h, out_w = _pair(output_size)
    rois = boxes if isinstance(boxes, Tensor) else boxes_to_rois(boxes)
    if sampling_ratio > 0:
        return _gather_roi_align([features], rois, None, [spatial_scale], out_h, out_w, sampling_ratio, aligned)
    return _ParallelRoIAlign.apply(  # one NCHW copy of channels-last features, not one per chunk
        features.contiguous(), rois.contiguous(), float(spatial_scale), out_h, out_w, int(sampling_ratio), bool(aligned)
    )


def multiscale_roi_align(
    maps: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: int | Sequence[int],
    *,
    spatial_scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign of each region on the pyramid level it is assigned: ``(R, C, h, w)`` in the rois' order.

    Equal to :func:`roi_align` of each level's regions on its map. On the CPU with a
    fixed ``sampling_ratio`` all regions are pooled in one gather from all levels,
    with no per-level scatter of results or gradients.

    Args:
        maps: one ``(N, C, H_l, W_l)`` map per level (same N and C).
        rois: ``(R, 5)`` rows ``(image index, x1, y1, x2, y2)``.
        levels: ``(R,)`` int64 index into ``maps`` of each region's level.
        output_size, sampling_ratio, aligned: as in :func:`roi_align`.
        spatial_scales: each level's map size / input size.
    """
    out_h, out_w = _pair(output_size)
    if sampling_ratio > 0 and _own_path(maps[0], rois.shape[0]):
        pooled = _gather_roi_align(
            [at_least_float32(m) for m in maps], at_least_float32(rois), levels, spatial_scales,
            out_h, out_w, sampling_ratio, aligned,
        )
        return pooled.to(maps[0].dtype)

    def pool(feature: Tensor, level_rois: Tensor, level: int) -> Tensor:
        return roi_align(
            feature, level_rois, (out_h, out_w), spatial_scale=spatial_scales[level],
            sampling_ratio=sampling_ratio, aligned=aligned,
        )

    return pool_by_level(maps, rois, levels, pool)


def pool_by_level(
    maps: Sequence[Tensor], rois: Tensor, levels: Tensor, pool: Callable[[Tensor, Tensor, int], Tensor]
) -> Tensor:
    """Each region pooled by ``pool(map, rois, level)`` on the map of its level, in the rois' order.

    One ``pool`` call per level; the results are scattered into place (for poolers
    without a multi-level kernel: RoI max pooling, RoIAlign on CUDA or while exporting).
    """
    pooled: Tensor | None = None
    for level, feature in enumerate(maps):
        idx = torch.where(levels == level)[0]
        part = pool(feature, rois[idx], level)
        if pooled is None:
            pooled = part.new_zeros((rois.shape[0], *part.shape[1:]))
        pooled[idx] = part.to(pooled.dtype)
    assert pooled is not None, "pool_by_level needs at least one map"
    return pooled


def _own_path(features: Tensor, num_rois: int) -> bool:
    """Whether detkit's kernels pool these features (else torchvision's)."""
    return not (
        features.is_quantized
        or features.device.type != "cpu"
        or is_exporting()  # a traced graph or ONNX file holds torchvision's op, not the threads
        or num_rois < 2 * MIN_ROIS_PER_THREAD
    )


def _gather_roi_align(
    maps: Sequence[Tensor], rois: Tensor, levels: Tensor | None, spatial_scales: Sequence[float],
    out_h: int, out_w: int, sampling_ratio: int, aligned: bool,
) -> Tensor:
    """RoIAlign as one weighted gather-and-sum of rows of a ``(sum_l N*H_l*W_l, C)`` table of all levels.

    ``levels`` (``None``: all on the first map) picks each region's map. The result
    has the first map's memory format.
    """
    c = maps[0].shape[1]
    # (N, C, H, W) -> (N*H*W, C) per level: a view of channels-last maps, a copy of NCHW ones
    rows = [m.permute(0, 2, 3, 1).reshape(-1, c) for m in maps]
    table = rows[0].contiguous() if len(rows) == 1 else torch.cat(rows)
    if levels is None:
        levels = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
    sizes = torch.tensor([m.shape[2:] for m in maps], dtype=torch.int64, device=rois.device)  # (L, 2): H, W
    first_row = torch.tensor([0] + [r.shape[0] for r in rows[:-1]], device=rois.device).cumsum(0)
    scales = torch.tensor(list(spatial_scales), dtype=rois.dtype, device=rois.device)
    index, weight = bilinear_taps(
        rois, heights=sizes[levels, 0], widths=sizes[levels, 1], spatial_scales=scales[levels],
        first_rows=first_row[levels], out_h=out_h, out_w=out_w, sampling_ratio=sampling_ratio, aligned=aligned,
    )
    pooled = F.embedding_bag(index, table, mode="sum", per_sample_weights=weight.to(table.dtype).detach())
    pooled = pooled.view(rois.shape[0], out_h, out_w, c).permute(0, 3, 1, 2)
    first = maps[0]
    nchw_in = first.is_contiguous() or not first.is_contiguous(memory_format=torch.channels_last)
    return pooled.contiguous() if nchw_in else pooled


def bilinear_taps(
    rois: Tensor, *, heights: Tensor, widths: Tensor, spatial_scales: Tensor, first_rows: Tensor, out_h: int,
    out_w: int, sampling_ratio: int, aligned: bool,
) -> tuple[Tensor, Tensor]:
    """The rows of a feature table, and their weights, that RoIAlign sums into each bin.

    The table holds each level's ``(N, C, H, W)`` map as ``N*H*W`` rows of ``C``
    channels (row ``(n * H + y) * W + x``), the levels one after another.

    Bin ``(r, i, j)`` of region ``r`` averages ``s x s`` samples (``s = sampling_ratio``),
    each the bilinear blend of 4 neighbouring cells, so it is ``sum_k weight[b, k] *
    table[index[b, k]]`` over ``k < 4 s^2`` for row ``b = (r * out_h + i) * out_w + j``.
    Sample positions, clamping at the border and samples beyond it (weight 0) follow
    torchvision's kernel, operation for operation in the rois' dtype.

    Args:
        rois: ``(R, 5)`` rows ``(image index, x1, y1, x2, y2)``.
        heights, widths, spatial_scales: ``(R,)`` each region's map size and scale.
        first_rows: ``(R,)`` int64 table row where each region's map starts.

    Returns:
        ``index`` (int64) and ``weight`` (the rois' dtype), both ``(R * out_h * out_w, 4 s^2)``.
    """
    offset = 0.5 if aligned else 0.0
    start = rois[:, 1:3] * spatial_scales[:, None] - offset  # (R, 2): x, y of the region's corner in cells
    size = rois[:, 3:5] * spatial_scales[:, None] - offset - start
    if not aligned:
        size = size.clamp(min=1.0)  # unaligned regions are at least one cell wide (torchvision)
    x_samples = _sample_coords(start[:, 0], size[:, 0], out_w, sampling_ratio)
    y_samples = _sample_coords(start[:, 1], size[:, 1], out_h, sampling_ratio)
    x_valid, x_low, x_high, wx_low, wx_high = _linear_taps(x_samples, widths[:, None, None])
    y_valid, y_low, y_high, wy_low, wy_high = _linear_taps(y_samples, heights[:, None, None])

    # per-axis (R, bins, s) -> (R, out_h, out_w, s, s): rows of y first, columns of x second
    def along_y(t: Tensor) -> Tensor:
        return t[:, :, None, :, None]

    def along_x(t: Tensor) -> Tensor:
        return t[:, None, :, None, :]

    image_rows = (rois[:, 0].to(torch.int64) * heights)[:, None, None]
    row_width, first = widths[:, None, None], first_rows[:, None, None]
    row_low = along_y(first + (image_rows + y_low) * row_width)
    row_high = along_y(first + (image_rows + y_high) * row_width)
    col_low, col_high = along_x(x_low), along_x(x_high)
    index = torch.stack([row_low + col_low, row_low + col_high, row_high + col_low, row_high + col_high], dim=-1)
    valid = (along_y(y_valid) & along_x(x_valid)).to(rois.dtype) / float(sampling_ratio * sampling_ratio)
    ay_low, ay_high, ax_low, ax_high = along_y(wy_low), along_y(wy_high), along_x(wx_low), along_x(wx_high)
    weight = torch.stack([ay_low * ax_low, ay_low * ax_high, ay_high * ax_low, ay_high * ax_high], dim=-1)
    weight = weight * valid[..., None]
    bins = rois.shape[0] * out_h * out_w
    return index.reshape(bins, -1), weight.reshape(bins, -1)


def _sample_coords(start: Tensor, size: Tensor, bins: int, samples: int) -> Tensor:
    """``(R,)`` region starts and sizes along one axis -> ``(R, bins, samples)`` sample coordinates.

    Each bin is split into ``samples`` equal sub-bins, sampled at their centres.
    """
    dtype = start.dtype
    bin_size = (size / bins)[:, None, None]
    cell = torch.arange(bins, dtype=dtype, device=start.device)[None, :, None]
    sub = (torch.arange(samples, dtype=dtype, device=start.device) + 0.5)[None, None, :]
    return start[:, None, None] + cell * bin_size + sub * bin_size / samples


def _linear_taps(coord: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sample coordinates along one axis, and the map's size there -> (inside, low cell, high cell, low weight,
    high weight).

    A sample more than one cell outside the map is empty (``inside`` false); others
    clamp to the map, and those on or beyond its last cell read only that cell.
    """
    inside = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0.0)
    low = coord.to(torch.int64)  # floor: coord >= 0
    last = low >= size - 1
    low = torch.minimum(low, size - 1)
    high = torch.where(last, low, low + 1)
    frac = torch.where(last, torch.zeros_like(coord), coord - low.to(coord.dtype))
    return inside, low, high, 1.0 - frac, frac


def boxes_to_rois(boxes_per_image: Sequence[Tensor]) -> Tensor:
    """One ``(R_n, 4)`` xyxy tensor per image -> ``(sum R_n, 5)`` rois ``(image index, x1, y1, x2, y2)``.

    The index column has the boxes' dtype, as in torchvision's conversion.
    """
    for n, boxes in enumerate(boxes_per_image):
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes of image {n}: expected an (R, 4) tensor, got shape {tuple(boxes.shape)}")
    # (R_n, 4) per image -> (R_n, 1 + 4) with the image index in front -> (sum R_n, 5)
    return torch.cat([torch.cat([torch.full_like(b[:, :1], n), b], dim=1) for n, b in enumerate(boxes_per_image)])


def _num_rois(boxes: Tensor | Sequence[Tensor]) -> int:
    """R: rows of an ``(R, 5)`` tensor, or the total of a per-image list."""
    if isinstance(boxes, Tensor):
        return int(boxes.shape[0])
    return sum(int(b.shape[0]) for b in boxes)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``7`` or ``(7, 7)`` -> ``(7, 7)``, as torchvision reads ``output_size``."""
    if isinstance(size, Iterable):
        h, w = size
        return int(h), int(w)
    return int(size), int(size)
