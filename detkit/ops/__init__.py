"""Box math on plain tensors, RoIAlign and detkit's CPU convolutions: no detector knowledge here.

Boxes are ``(M, 4)`` float tensors in absolute ``xyxy`` pixels unless a function
says otherwise.
"""

from detkit.ops.anchors import cell_anchors, grid_anchors, level_strides
from detkit.ops.box_coder import BoxCoder
from detkit.ops.boxes import (
    HALF_DTYPES,
    at_least_float32,
    batched_nms,
    box_area,
    box_convert,
    box_intersection,
    box_ioa,
    box_iou,
    clip_boxes,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
    masks_to_boxes,
    nms,
    nonempty_boxes,
    paired_box_iou,
    remove_small_boxes,
    scale_boxes,
)
from detkit.ops.gemm_conv import GemmGradConv2d, conv2d_gemm_grad
from detkit.ops.losses import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)
from detkit.ops.matcher import Matcher
from detkit.ops.roi_align import multiscale_roi_align, pool_by_level, roi_align
from detkit.ops.sampler import BalancedSampler
from detkit.ops.winograd import WinogradConv2d, use_winograd, winograd_conv2d

__all__ = [
    "HALF_DTYPES",
    "BalancedSampler",
    "BoxCoder",
    "GemmGradConv2d",
    "Matcher",
    "WinogradConv2d",
    "at_least_float32",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_intersection",
    "box_ioa",
    "box_iou",
    "cell_anchors",
    "clip_boxes",
    "complete_box_iou",
    "complete_box_iou_loss",
    "conv2d_gemm_grad",
    "distance_box_iou",
    "distance_box_iou_loss",
    "generalized_box_iou",
    "generalized_box_iou_loss",
    "grid_anchors",
    "level_strides",
    "masks_to_boxes",
    "multiscale_roi_align",
    "nms",
    "nonempty_boxes",
    "paired_box_iou",
    "pool_by_level",
    "remove_small_boxes",
    "roi_align",
    "scale_boxes",
    "sigmoid_focal_loss",
    "use_winograd",
    "winograd_conv2d",
]
