"""torchvision ``ssd300_vgg16`` -> ``configs/ssd300_vgg16.yaml`` (importer ``ssd300_vgg16``), and
``ssdlite320_mobilenet_v3_large`` -> ``configs/ssdlite320_mobilenet_v3_large.yaml``."""

from __future__ import annotations

from detkit.importers import TorchvisionImporter, torchvision_coco_classes


def ssd300_vgg16() -> TorchvisionImporter:
    """torchvision ``ssd300_vgg16``: the backbone keys are kept, the head's predictors renamed.

    torchvision's 91 logits (background first) are detkit's background plus the 90
    COCO label slots of :func:`~detkit.importers.torchvision_coco_classes`.
    """
    return TorchvisionImporter(
        config="ssd300_vgg16.yaml",
        renames=[
            (r"^head\.classification_head\.module_list\.", "dense_head.cls_logits."),
            (r"^head\.regression_head\.module_list\.", "dense_head.bbox_deltas."),
        ],
        class_names=torchvision_coco_classes(),
    )


def ssdlite320_mobilenet_v3_large() -> TorchvisionImporter:
    """torchvision ``ssdlite320_mobilenet_v3_large``: renamed as :func:`ssd300_vgg16`, the config is SSDlite320's.

    The config has torchvision's reduced tail (what it builds without ImageNet
    weights, and what its COCO weights were trained with).
    """
    ssd = ssd300_vgg16()
    return TorchvisionImporter(
        config="ssdlite320_mobilenet_v3_large.yaml", renames=ssd.renames, class_names=ssd.class_names,
        vanishing_init=True,
    )


__all__ = ["ssd300_vgg16", "ssdlite320_mobilenet_v3_large"]
