"""detkit_yolo: an anchor-free YOLO of the YOLOX / YOLOv8 family.

A single-stage detector (``model.type: single_stage``, the fixed square input of plugin
``detkit_single_shot``) made of three components this plugin registers:

* backbone ``csp_darknet`` (:class:`~detkit_yolo.backbone.CSPDarknet`): YOLOv8's
  CSP-Darknet, a Conv-BN-SiLU stem and four stages of strided convolution + C2f
  (cross-stage-partial bottlenecks, Wang et al., 2020), SPPF at the end; ``size``
  (n/s/m/l/x) or ``depth`` and ``width`` multipliers; stages ``c3, c4, c5`` at strides 8,
  16, 32;
* neck ``pan`` (:class:`~detkit_yolo.neck.PAN`): YOLOv8's PAN-FPN (Liu et al., 2018),
  a top-down path (upsample, concatenate, C2f) then a bottom-up one (strided conv,
  concatenate, C2f); outputs ``p3, p4, p5``;
* dense head ``yolo`` (:class:`~detkit_yolo.head.YoloHead`): decoupled class and box
  branches per level on anchor-free points at the cell centres, no objectness; each box
  side a distribution over ``reg_max`` bins decoded as its expectation (GFL, Li et al.,
  2020); trained with TOOD's task-aligned assigner (Feng et al., 2021;
  :mod:`detkit_yolo.assigner`), BCE on the soft aligned targets, CIoU and Distribution
  Focal Loss.

Recipes: ``shapes_yolo.yaml`` (the synthetic shapes, CPU minutes), ``bccd_yolo.yaml``
(blood cells) and ``yolo.yaml`` (COCO-sized, 640 px, size n).
"""

from __future__ import annotations

from detkit.hookspecs import Registrar, hookimpl
from detkit_yolo.assigner import Assignment, task_aligned_assign
from detkit_yolo.backbone import CSPDarknet
from detkit_yolo.head import YoloHead, dfl_decode, distribution_focal_loss
from detkit_yolo.neck import PAN

__all__ = [
    "PAN",
    "Assignment",
    "CSPDarknet",
    "YoloHead",
    "detkit_add_components",
    "dfl_decode",
    "distribution_focal_loss",
    "task_aligned_assign",
]


@hookimpl
def detkit_add_components(registry: Registrar) -> None:
    registry.register("backbone", "csp_darknet", CSPDarknet)
    registry.register("neck", "pan", PAN)
    registry.register("dense_head", "yolo", YoloHead)
