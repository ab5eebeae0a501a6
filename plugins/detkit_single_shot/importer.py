"""torchvision ``ssd300_vgg16`` -> ``configs/ssd300_vgg16.yaml`` (importer ``ssd300_vgg16``)."""

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


__all__ = ["ssd300_vgg16"]
