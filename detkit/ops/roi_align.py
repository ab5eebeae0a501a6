"""RoIAlign with multi-threaded CPU forward and backward.

torchvision's CPU RoIAlign kernels run on one thread; on a CPU training step
the backward pass alone can take half the time. This wrapper splits the regions
into chunks and runs torchvision's own kernels on them in parallel threads (the
kernels release the GIL), then sums the per-chunk feature gradients. Results
equal torchvision's up to float summation order. On CUDA, for quantized input, for
fewer than ``2 * MIN_ROIS_PER_THREAD`` regions and while a model is traced or exported
(:func:`~detkit.ops.boxes.is_exporting`) it defers to torchvision.

float16/bfloat16 features (a model run under autocast) are pooled in float32, with
float32 boxes, and the result is cast back, as torchvision's autocast kernel does:
torchvision has no half-precision CPU kernel, and the worker threads do not inherit
the caller's autocast state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import torch
import torchvision
from torch import Tensor
from torch.autograd.function import FunctionCtx

from detkit.ops.boxes import HALF_DTYPES, at_least_float32, is_exporting

#: Fewer regions than this per thread are not worth a thread (a 7x7 or 14x14 region of
#: 256 channels takes tens of microseconds; a thread hand-off a few).
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

    Same arguments and results as :func:`torchvision.ops.roi_align`.

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
    if (
        features.is_quantized
        or features.device.type != "cpu"
        or is_exporting()  # a traced graph or ONNX file holds torchvision's op, not the threads
        or _num_rois(boxes) < 2 * MIN_ROIS_PER_THREAD
    ):
        # torchvision takes the boxes and output_size as given (and checks them)
        return torchvision.ops.roi_align(
            features, boxes if isinstance(boxes, Tensor) else list(boxes), output_size,
            spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned,
        )
    out_h, out_w = _pair(output_size)
    rois = boxes if isinstance(boxes, Tensor) else boxes_to_rois(boxes)
    return _ParallelRoIAlign.apply(  # one NCHW copy of channels-last features, not one per chunk
        features.contiguous(), rois.contiguous(), float(spatial_scale), out_h, out_w, int(sampling_ratio), bool(aligned)
    )


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
