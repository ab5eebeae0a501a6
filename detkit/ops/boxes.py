"""Elementary box operations (``(M, 4)`` xyxy tensors).

Areas, intersections and IoUs are computed in at least float32 (float16 and bfloat16
boxes are upcast) or int64 (integer boxes), as torchvision does: a 300 px side
squared overflows float16. They return that wider dtype; IoU and IoA are float.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torchvision
from torch import Tensor

#: The half-precision float dtypes autocast computes in.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def is_exporting() -> bool:
    """Whether the code runs under ``torch.jit.trace``, ``torch.jit.script`` or ``torch.onnx.export``.

    A traced graph keeps the Python branches taken while tracing, so the ops that pick
    a path by the data (the early-stopping NMS of :func:`batched_nms`, the threaded
    RoIAlign of :func:`~detkit.ops.roi_align`) take their plain torchvision path then,
    which gives the same results for any input (see :mod:`detkit.export`).
    """
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


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


def batched_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, *, max_kept: int | None = None
) -> Tensor:
    """Non-maximum suppression within each group (class or level).

    Returns the kept indices sorted by decreasing score, the first ``max_kept`` of
    them when given. Uses torchvision's compiled NMS (:func:`torchvision.ops.batched_nms`);
    NMS is quadratic, so callers cap the number of candidates first.
    float16/bfloat16 boxes and scores are upcast to float32: torchvision has no CPU
    kernel for them, and its per-group box offsets would not fit their precision.

    With ``max_kept`` the search runs on growing prefixes of the candidates in score
    order and stops once a prefix keeps ``max_kept`` boxes. The result is exact: in
    greedy NMS a box is suppressed only by higher-scored boxes of its group, all of
    which are in any prefix that holds it (ties with the prefix's lowest score are
    taken in whole), so a prefix keeps exactly the boxes the full run keeps among
    them. A post-process keeping 100 of 90,000 candidates then runs NMS on a few
    hundred. While exporting (:func:`is_exporting`) it runs on all the candidates.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes, scores = at_least_float32(boxes), at_least_float32(scores)
    if max_kept is None or is_exporting() or len(scores) <= _PREFIX_GROWTH * max_kept:
        keep = torchvision.ops.batched_nms(boxes, scores, groups, iou_threshold)
        return keep if max_kept is None else keep[:max_kept]
    order = scores.argsort(descending=True)
    size = _PREFIX_GROWTH * max(max_kept, 1)
    while True:
        lowest = scores[order[size - 1]]
        size = int((scores >= lowest).sum())  # every tie of the lowest score, not some of them
        prefix = order[:size]
        keep = prefix[_nms_per_group(boxes[prefix], scores[prefix], groups[prefix], iou_threshold)]
        if len(keep) >= max_kept or size == len(order):
            return keep[:max_kept]
        size = min(size * _PREFIX_GROWTH, len(order))


#: How much larger than ``max_kept`` the first prefix of :func:`batched_nms` is, and how fast it grows.
_PREFIX_GROWTH = 4


def _nms_per_group(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS of each group on its own (no coordinate offsets), kept indices by decreasing score.

    The arithmetic of torchvision's :func:`~torchvision.ops.batched_nms` on large
    inputs, so that a prefix of the candidates gives bit-identical IoUs to the full run.
    """
    kept = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    for group in torch.unique(groups):
        members = torch.where(groups == group)[0]
        kept[members[torchvision.ops.nms(boxes[members], scores[members], iou_threshold)]] = True
    keep = torch.where(kept)[0]
    return keep[scores[keep].sort(descending=True)[1]]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes by decreasing score.

    A box is dropped when its IoU with a higher-scored kept box exceeds
    ``iou_threshold``. Uses torchvision's compiled NMS (float16/bfloat16 inputs upcast
    to float32, as in :func:`batched_nms`).
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    return torchvision.ops.nms(at_least_float32(boxes), at_least_float32(scores), iou_threshold)


# Overlap measures beyond IoU, format conversion and boxes from masks. The pairwise
# measures upcast float16/bfloat16 and integer boxes to float32 and return float32, as
# torchvision does.


def _float_boxes(boxes: Tensor) -> Tensor:
    """``boxes`` in float32, or float64 when they are float64 (float16, bfloat16 and integers -> float32)."""
    return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()


def _overlap_and_enclosure(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection, union and smallest enclosing box size of paired boxes.

    ``(..., 4), (..., 4) -> (...), (...), (..., 2)``; shapes broadcast. The union
    uses signed areas (see :func:`box_area`); the enclosing ``(w, h)`` is at least 0.
    """
    inter_wh = (torch.min(boxes1[..., 2:], boxes2[..., 2:]) - torch.max(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    union = area1 + area2 - inter
    enclosing_wh = (torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2])).clamp(
        min=0
    )
    return inter, union, enclosing_wh


def _centre_distance_penalty(boxes1: Tensor, boxes2: Tensor, enclosing_wh: Tensor, eps: float) -> Tensor:
    """DIoU's penalty ``rho^2 / (c^2 + eps)`` of paired boxes: ``(..., 4), (..., 4), (..., 2) -> (...)``.

    ``rho`` is the distance between the two centres, ``c`` the diagonal of the
    smallest enclosing box (Zheng et al. 2020).
    """
    centre_offset = (boxes1[..., :2] + boxes1[..., 2:] - boxes2[..., :2] - boxes2[..., 2:]) / 2
    centre_distance2 = (centre_offset**2).sum(dim=-1)
    diagonal2 = (enclosing_wh**2).sum(dim=-1)
    return centre_distance2 / (diagonal2 + eps)


def _aspect_ratio_penalty(boxes1: Tensor, boxes2: Tensor, iou: Tensor, eps: float) -> Tensor:
    """CIoU's penalty ``alpha * v`` of paired boxes: ``(..., 4), (..., 4), (...) -> (...)``.

    ``v = 4 / pi^2 * (atan(w1 / h1) - atan(w2 / h2))^2`` measures aspect-ratio
    consistency and ``alpha = v / (1 - iou + v + eps)`` weighs it (Zheng et al. 2020).
    ``alpha`` is a weight, not differentiated (as in the paper's code and torchvision).
    ``atan(w / h)`` is taken as ``atan2(w, h)``: equal for ``h > 0``, and ``pi / 2``
    rather than NaN for a zero-height box.
    """
    wh1 = boxes1[..., 2:] - boxes1[..., :2]
    wh2 = boxes2[..., 2:] - boxes2[..., :2]
    angle1 = torch.atan2(wh1[..., 0], wh1[..., 1])
    angle2 = torch.atan2(wh2[..., 0], wh2[..., 1])
    v = (4 / math.pi**2) * (angle1 - angle2) ** 2
    alpha = (v / (1 - iou + v + eps)).detach()
    return alpha * v


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU: ``(M, 4), (P, 4) -> (M, P)``, in ``[-1, 1]``.

    ``GIoU = IoU - (C - U) / C`` with ``U`` the union and ``C`` the area of the
    smallest box enclosing both (Rezatofighi et al. 2019): negative for disjoint
    boxes, the more so the farther apart. Pairs with an empty union or enclosure
    get 0 for that term (not NaN). float32 for float16/bfloat16/integer boxes.
    """
    boxes1, boxes2 = _float_boxes(boxes1), _float_boxes(boxes2)
    inter, union, enclosing_wh = _overlap_and_enclosure(boxes1[:, None, :], boxes2[None, :, :])  # (M, P)
    enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    return _ratio_or_zero(inter, union) - _ratio_or_zero(enclosing - union, enclosing)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise distance IoU: ``(M, 4), (P, 4) -> (M, P)``, in ``(-1, 1]``.

    ``DIoU = IoU - rho^2 / (c^2 + eps)`` with ``rho`` the distance between the
    centres and ``c`` the diagonal of the smallest enclosing box (Zheng et al.
    2020). Pairs with an empty union get IoU 0. float32 for float16/bfloat16/integer boxes.
    """
    boxes1, boxes2 = _float_boxes(boxes1)[:, None, :], _float_boxes(boxes2)[None, :, :]  # (M, 1, 4), (1, P, 4)
    inter, union, enclosing_wh = _overlap_and_enclosure(boxes1, boxes2)
    return _ratio_or_zero(inter, union) - _centre_distance_penalty(boxes1, boxes2, enclosing_wh, eps)


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise complete IoU: ``(M, 4), (P, 4) -> (M, P)``.

    ``CIoU = DIoU - alpha * v``, ``v`` the aspect-ratio inconsistency and ``alpha``
    its weight (Zheng et al. 2020; see :func:`distance_box_iou`). ``alpha`` is not
    differentiated. float32 for float16/bfloat16/integer boxes.
    """
    boxes1, boxes2 = _float_boxes(boxes1)[:, None, :], _float_boxes(boxes2)[None, :, :]  # (M, 1, 4), (1, P, 4)
    inter, union, enclosing_wh = _overlap_and_enclosure(boxes1, boxes2)
    iou = _ratio_or_zero(inter, union)
    diou = iou - _centre_distance_penalty(boxes1, boxes2, enclosing_wh, eps)
    return diou - _aspect_ratio_penalty(boxes1, boxes2, iou, eps)


_BOX_FORMATS = ("xyxy", "xywh", "cxcywh")

# (in_fmt, out_fmt) -> function of the two halves (..., 2), (..., 2) of an in_fmt box
# giving the two halves of the out_fmt box.
_CONVERSIONS: dict[tuple[str, str], Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    ("xyxy", "xywh"): lambda top_left, bottom_right: (top_left, bottom_right - top_left),
    ("xyxy", "cxcywh"): lambda top_left, bottom_right: ((top_left + bottom_right) / 2, bottom_right - top_left),
    ("xywh", "xyxy"): lambda top_left, size: (top_left, top_left + size),
    ("xywh", "cxcywh"): lambda top_left, size: (top_left + size / 2, size),
    ("cxcywh", "xyxy"): lambda centre, size: (centre - size / 2, centre + size / 2),
    ("cxcywh", "xywh"): lambda centre, size: (centre - size / 2, size),
}


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``(..., 4)`` boxes from ``in_fmt`` to ``out_fmt``.

    Formats: ``"xyxy"`` is ``(x1, y1, x2, y2)``, ``"xywh"`` ``(x1, y1, w, h)`` and
    ``"cxcywh"`` ``(cx, cy, w, h)``. Returns a new tensor (a copy when the formats are equal).
    float16/bfloat16 boxes are converted in float32 and returned in their own dtype;
    integer boxes stay integer between xyxy and xywh and become float32 to or from
    cxcywh (halves), as in torchvision.

    Raises:
        ValueError: ``in_fmt`` or ``out_fmt`` is not one of these three.
    """
    for argument, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in _BOX_FORMATS:
            known = ", ".join(repr(name) for name in _BOX_FORMATS)
            raise ValueError(f"box_convert: unknown box format {fmt!r} for {argument}; use one of {known}")
    if in_fmt == out_fmt:
        return boxes.clone()
    wide = at_least_float32(boxes)
    first, second = _CONVERSIONS[(in_fmt, out_fmt)](wide[..., :2], wide[..., 2:])
    converted = torch.cat((first, second), dim=-1)
    return converted.to(boxes.dtype) if boxes.dtype in HALF_DTYPES else converted


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight xyxy boxes around masks: ``(N, H, W)`` -> ``(N, 4)`` float32.

    A pixel is in a mask where the mask is nonzero (bool, integer or float masks).
    Corners are inclusive pixel indices, as in torchvision: ``x1``/``x2`` are the
    smallest and largest column index of the mask, ``y1``/``y2`` of its rows, so a
    one-pixel mask at row 2, column 5 gives ``[5, 2, 5, 2]`` (add 1 to ``x2`` and
    ``y2`` for the box of pixel edges). An empty mask gives ``[0, 0, 0, 0]``, as in
    torchvision 0.29; so does every mask of a stack with ``H`` or ``W`` zero (where
    torchvision returns a ``(0, 4)`` tensor).
    """
    n, height, width = masks.shape
    boxes = torch.zeros((n, 4), dtype=torch.float32, device=masks.device)
    if height == 0 or width == 0:
        return boxes
    filled = masks != 0
    rows = filled.any(dim=2)  # (N, H, W) -> (N, H)
    columns = filled.any(dim=1)  # (N, H, W) -> (N, W)
    x1, x2 = _first_and_last_index(columns)
    y1, y2 = _first_and_last_index(rows)
    boxes = torch.stack((x1, y1, x2, y2), dim=1).float()  # four (N,) -> (N, 4)
    nonempty = rows.any(dim=1)  # (N,)
    return torch.where(nonempty[:, None], boxes, torch.zeros_like(boxes))


def _first_and_last_index(hits: Tensor) -> tuple[Tensor, Tensor]:
    """Smallest and largest index of a True entry along dim 1: ``(N, L) bool -> (N,), (N,)`` int64.

    Rows without a True entry give ``L`` and ``-1``.
    """
    length = hits.shape[1]
    index = torch.arange(length, device=hits.device).expand_as(hits)
    first = torch.where(hits, index, length).amin(dim=1)
    last = torch.where(hits, index, -1).amax(dim=1)
    return first, last
