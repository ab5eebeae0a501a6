"""detkit_single_shot: single-stage detectors and SSD (Liu et al., 2016).

Registers the detector ``single_stage`` (``model.type: single_stage``: preprocess ->
backbone -> dense head -> post-process), the dense heads ``ssd``, ``yolo_v1`` and
``yolo_grid`` (YOLO's grids, :mod:`detkit_single_shot.yolo`), the backbone
``ssd300_vgg16`` (VGG-16 with SSD's conv4_3 L2 norm, atrous fc6/fc7 and extra layers)
and the importer ``ssd300_vgg16`` (``detkit import-torchvision ssd300_vgg16 IN OUT``);
SSDlite (:mod:`detkit_single_shot.ssdlite`): the dense head ``ssdlite``, the backbone
``ssdlite_mobilenet_v3_large`` and the importer ``ssdlite320_mobilenet_v3_large``.
"""

from __future__ import annotations

from detkit.hookspecs import Registrar, hookimpl
from detkit_single_shot.backbone import SSDVGG
from detkit_single_shot.default_boxes import DefaultBoxes
from detkit_single_shot.detector import build_single_stage
from detkit_single_shot.importer import ssd300_vgg16, ssdlite320_mobilenet_v3_large
from detkit_single_shot.ssd import SSDHead, hard_negative_mask, match_default_boxes
from detkit_single_shot.ssdlite import SSDLiteHead, SSDLiteMobileNetV3
from detkit_single_shot.yolo import YoloGridHead, YoloV1Head

__all__ = [
    "SSDVGG",
    "DefaultBoxes",
    "SSDHead",
    "SSDLiteHead",
    "SSDLiteMobileNetV3",
    "YoloGridHead",
    "YoloV1Head",
    "build_single_stage",
    "detkit_add_components",
    "hard_negative_mask",
    "match_default_boxes",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
]


@hookimpl
def detkit_add_components(registry: Registrar) -> None:
    registry.register("detector", "single_stage", build_single_stage)
    registry.register("dense_head", "ssd", SSDHead)
    registry.register("dense_head", "yolo_v1", YoloV1Head)
    registry.register("dense_head", "yolo_grid", YoloGridHead)
    registry.register("backbone", "ssd300_vgg16", SSDVGG)
    registry.register("importer", "ssd300_vgg16", ssd300_vgg16)
    registry.register("dense_head", "ssdlite", SSDLiteHead)
    registry.register("backbone", "ssdlite_mobilenet_v3_large", SSDLiteMobileNetV3)
    registry.register("importer", "ssdlite320_mobilenet_v3_large", ssdlite320_mobilenet_v3_large)
