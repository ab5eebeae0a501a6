"""RoIAlign with multi-threaded CPU forward and backward.

torchvision's CPU RoIAlign kernels run on one thread; on a CPU training step
the backward pass alone can take half the time. This wrapper splits the regions
into chunks and runs torchvision's own kernels on them in parallel threads (the
kernels release the GIL), then sums the per-chunk feature gradients. Results
equal torchvision's up to float summation order. On CUDA it defers to torchvision.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import torch
import torchvision
from torch import Tensor
from torch.autograd.function import FunctionCtx

#: Fewer regions than this per thread are not worth a thread.
MIN_ROIS_PER_THREAD = 64


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
    rois: Tensor,
    output_size: tuple[int, int],
    *,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign: ``(N, C, H, W)`` features, ``(R, 5)`` rois ``(image index, x1, y1, x2, y2)`` -> ``(R, C, h, w)``.

    Same arguments and results as :func:`torchvision.ops.roi_align`.
    """
    if features.device.type != "cpu" or rois.shape[0] < 2 * MIN_ROIS_PER_THREAD:
        return torchvision.ops.roi_align(
            features, rois, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned
        )
    return _ParallelRoIAlign.apply(
        features, rois.contiguous(), float(spatial_scale), int(output_size[0]), int(output_size[1]),
        int(sampling_ratio), bool(aligned),
    )
