"""Datasets, images, augmentation and batching.

Every dataset follows the protocol of :class:`detkit.data.base.DetectionDataset`:
``dataset[i]`` is a :class:`Sample` (image ``(3, H, W)`` float in ``[0, 1]``,
:class:`~detkit.structures.Targets`, image id, file name), and ``class_names``,
``category_ids``, ``image_ids``, ``image_path(i)`` and ``coco_gt()`` tie labels and
images to COCO-style evaluation.

The dataset factories are registered as components of kind ``"dataset"`` by
:func:`register_datasets`, which the built-in plugin calls (no registration on import).
"""

from __future__ import annotations

from typing import Any, Protocol

from detkit.data.base import DetectionDataset, Sample, coco_from_dict
from detkit.data.coco import CocoDataset
from detkit.data.images import IMAGE_EXTENSIONS, find_images, image_to_tensor, read_image
from detkit.data.loader import Batch, SkipBadItems, build_loader, collate
from detkit.data.shapes import ShapesDataset, generate_shapes
from detkit.data.transforms import Compose, RandomHorizontalFlip, Transform
from detkit.data.via import ViaDataset
from detkit.data.voc import VocDataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "Batch",
    "CocoDataset",
    "Compose",
    "DetectionDataset",
    "RandomHorizontalFlip",
    "Sample",
    "ShapesDataset",
    "SkipBadItems",
    "Transform",
    "ViaDataset",
    "VocDataset",
    "build_loader",
    "coco_from_dict",
    "collate",
    "find_images",
    "generate_shapes",
    "image_to_tensor",
    "read_image",
    "register_datasets",
]


class _Registry(Protocol):
    def register(self, kind: str, name: str, factory: Any) -> None: ...


def register_datasets(registry: _Registry) -> None:
    """Register the built-in dataset factories: ``coco``, ``voc`` and ``shapes``.

    Args:
        registry: anything with ``register(kind, name, factory)``, such as the
            registry handed to the ``detkit_add_components`` hook.
    """
    registry.register("dataset", "coco", CocoDataset)
    registry.register("dataset", "voc", VocDataset)
    registry.register("dataset", "shapes", ShapesDataset)
    registry.register("dataset", "via", ViaDataset)
