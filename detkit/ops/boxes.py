"""Elementary box operations (``(M, 4)`` xyxy tensors).

Areas, intersections and IoUs are computed in at least float32 (float16 and bfloat16
boxes are upcast) or int64 (integer boxes), as torchvision does: a 300 px side
squared overflows float16. They return that wider dtype; IoU and IoA are float.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor

#: The half-precision float dtypes autocast computes in.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def at_least_float32(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 when it is float16 or bfloat16, else ``tensor`` itself.

    What a model run under autocast (``--precision bf16``) hands to box decoding,
    scoring and NMS: a half-precision box corner near 600 px is off by up to 2 px,
    and half-precision scores tie. float32 and float64 tensors pass unchanged.
    """
    return tensor.float() if tensor.dtype in HALF_DTYPES else tensor


def _upcast(boxes: Tensor) -> Tensor:
    """Boxes in a dtype whose products do not overflow: float16/bfloat16 -> float32, smaller ints -> int64.

    Like ``torchvision.ops.boxes._upcast``, except that int32 also becomes int64
    (an int32 area overflows beyond 46340 px squared).
    """
    if boxes.is_floating_point():
        return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()
    return boxes.long()


def _ratio_or_zero(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` where ``denominator > 0``, else 0 (not NaN); float for int inputs."""
    tiny = torch.finfo(denominator.dtype).tiny if denominator.is_floating_point() else 1
    ratio = numerator / denominator.clamp(min=tiny)
    return torch.where(denominator > 0, ratio, torch.zeros_like(ratio))


def box_area(boxes: Tensor) -> Tensor:
    """``(M, 4)`` -> ``(M,)`` areas (zero-size boxes have area 0, inverted ones negative).

    float16/bfloat16 boxes give float32 areas, integer boxes int64 (see the module doc).
    """
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union: ``(M, 4), (P, 4) -> (M, P)``.

    Pairs whose union is empty (two degenerate boxes) get IoU 0. Computed in at
    least float32 (see the module doc).
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    inter = box_intersection(boxes1, boxes2)
    union = area1[:, None] + area2[None, :] - inter  # (M, 1) + (1, P) - (M, P) -> (M, P)
    return _ratio_or_zero(inter, union)


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of each box with its partner: ``(..., 4), (..., 4) -> (...)``, shapes broadcast.

    The diagonal of :func:`box_iou` without the ``M x P`` matrix (a prediction
    against its own target). Pairs whose union is empty get IoU 0. Computed in at
    least float32 (see the module doc).
    """
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    top_left = torch.max(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area1 = (boxes1[..., 2:] - boxes1[..., :2]).clamp(min=0).prod(dim=-1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).clamp(min=0).prod(dim=-1)
    union = area1 + area2 - inter
    return _ratio_or_zero(inter, union)


def box_intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection areas: ``(M, 4), (P, 4) -> (M, P)``, in at least float32 or int64."""
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (M, P, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (M, P, 2)
    wh = (bottom_right - top_left).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_ioa(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over the area of ``boxes1``: ``(M, 4), (P, 4) -> (M, P)``.

    How much of each box of ``boxes1`` lies inside each of ``boxes2`` (crowd
    regions: a window mostly inside one is neither object nor background).
    Degenerate ``boxes1`` get 0. Computed in at least float32 (see the module doc).
    """
    area1 = box_area(boxes1)[:, None]  # (M, 1)
    inter = box_intersection(boxes1, boxes2)  # (M, P)
    return _ratio_or_zero(inter, area1)  # (M, P) / (M, 1)


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip boxes (``(..., 4)``) to an image of ``size = (h, w)``."""
    h, w = size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of boxes whose width and height are both at least ``min_size``."""
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


def nonempty_boxes(boxes: Tensor) -> Tensor:
    """Boolean mask of boxes with positive width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Rescale boxes from an image of ``from_size (h, w)`` to one of ``to_size``."""
    ratio_h = torch.tensor(to_size[0], dtype=torch.float32) / torch.tensor(from_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(to_size[1], dtype=torch.float32) / torch.tensor(from_size[1], dtype=torch.float32)
    ratios = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(boxes.device, boxes.dtype)
    return boxes * ratios


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression within each group (class or level).

    Returns the kept indices sorted by decreasing score. Uses torchvision's
    compiled NMS; callers cap the number of candidates first (NMS is quadratic).
    float16/bfloat16 boxes and scores are upcast to float32: torchvision has no CPU
    kernel for them, and its per-group box offsets would not fit their precision.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    return torchvision.ops.batched_nms(at_least_float32(boxes), at_least_float32(scores), groups, iou_threshold)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes by decreasing score.

    A box is dropped when its IoU with a higher-scored kept box exceeds
    ``iou_threshold``. Uses torchvision's compiled NMS (float16/bfloat16 inputs upcast
    to float32, as in :func:`batched_nms`).
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    return torchvision.ops.nms(at_least_float32(boxes), at_least_float32(scores), iou_threshold)
