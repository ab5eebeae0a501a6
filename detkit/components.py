"""The built-in plugin: detkit's own backbones, necks, region extractors, heads, datasets, importers.

Listed first in :data:`detkit.plugins.BUILTIN_PLUGINS`; it registers through the
same hook as any third-party plugin.
"""

from __future__ import annotations

from detkit import backbones, importers
from detkit.data import register_datasets
from detkit.detectors import build_rcnn, build_two_stage
from detkit.hookspecs import Registrar, hookimpl
from detkit.stages.postprocess import DetectionPostProcess
from detkit.stages.rcnn_head import RCNNHead
from detkit.stages.region_features import MultiScaleRoIAlign, MultiScaleRoIPool, WarpedCrops
from detkit.stages.roi_heads import FastRCNNHead


@hookimpl
def detkit_add_components(registry: Registrar) -> None:
    for depth in (18, 34, 50, 101, 152):
        registry.register("backbone", f"resnet{depth}", getattr(backbones.resnet, f"resnet{depth}"))
    registry.register("backbone", "lenet5", backbones.LeNet5)
    registry.register("backbone", "alexnet", backbones.AlexNet)
    for name, vgg in backbones.VGG_VARIANTS.items():
        registry.register("backbone", name, vgg)
    registry.register("backbone", "googlenet", backbones.GoogLeNet)
    registry.register("backbone", "mobilenet_v3_large", backbones.mobilenet_v3_large)
    registry.register("backbone", "mobilenet_v3_small", backbones.mobilenet_v3_small)
    registry.register("neck", "fpn", backbones.FPN)
    registry.register("region_extractor", "multiscale_roi_align", MultiScaleRoIAlign)
    registry.register("region_extractor", "multiscale_roi_pool", MultiScaleRoIPool)
    registry.register("region_extractor", "warped_crops", WarpedCrops)
    registry.register("roi_head", "fast_rcnn", FastRCNNHead)
    registry.register("roi_head", "rcnn", RCNNHead)
    registry.register("postprocess", "nms", DetectionPostProcess)
    registry.register("detector", "two_stage", build_two_stage)
    registry.register("detector", "rcnn", build_rcnn)
    registry.register("importer", "fasterrcnn_resnet50_fpn", importers.fasterrcnn_resnet50_fpn)
    registry.register("importer", "maskrcnn_resnet50_fpn", importers.maskrcnn_resnet50_fpn)
    registry.register("importer", "fasterrcnn_mobilenet_v3_large_fpn", importers.fasterrcnn_mobilenet_v3_large_fpn)
    registry.register(
        "importer", "fasterrcnn_mobilenet_v3_large_320_fpn", importers.fasterrcnn_mobilenet_v3_large_320_fpn
    )
    register_datasets(registry)
