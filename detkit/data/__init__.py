"""Datasets, images, augmentation and batching.

Every dataset follows the protocol of :class:`detkit.data.base.DetectionDataset`:
``dataset[i]`` is a :class:`Sample` (image ``(3, H, W)`` float in ``[0, 1]``,
:class:`~detkit.structures.Targets`, image id, file name), and ``class_names``,
``category_ids``, ``image_ids``, ``image_path(i)`` and ``coco_gt()`` tie labels and
images to COCO-style evaluation.

The dataset factories are registered as components of kind ``"dataset"`` by
:func:`register_datasets`, which the built-in plugin calls (no registration on import).

The package imports its modules when a name is first used (``from detkit.data import
CocoDataset``), so that ``detkit.data.cli`` builds the command line without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from detkit.data.augment import Mosaic, RandomAffine, RandomHSV, ResizeLongest, training_transforms
    from detkit.data.base import DetectionDataset, Sample, coco_from_dict
    from detkit.data.coco import CocoDataset
    from detkit.data.images import IMAGE_EXTENSIONS, find_images, image_to_tensor, read_image
    from detkit.data.loader import Batch, SkipBadItems, build_loader, collate
    from detkit.data.shapes import ShapesDataset, generate_shapes
    from detkit.data.split import SubsetDataset, split_dataset, split_indices
    from detkit.data.transforms import Compose, RandomHorizontalFlip, Transform
    from detkit.data.via import ViaDataset
    from detkit.data.voc import VocDataset
    from detkit.data.yolo import YoloDataset

#: Public name -> the module that defines it (imported on first use).
_EXPORTS: dict[str, str] = {
    "IMAGE_EXTENSIONS": "images",
    "Batch": "loader",
    "CocoDataset": "coco",
    "Compose": "transforms",
    "DetectionDataset": "base",
    "Mosaic": "augment",
    "RandomAffine": "augment",
    "RandomHSV": "augment",
    "ResizeLongest": "augment",
    "RandomHorizontalFlip": "transforms",
    "Sample": "base",
    "ShapesDataset": "shapes",
    "SkipBadItems": "loader",
    "SubsetDataset": "split",
    "Transform": "transforms",
    "ViaDataset": "via",
    "VocDataset": "voc",
    "YoloDataset": "yolo",
    "build_loader": "loader",
    "coco_from_dict": "base",
    "collate": "loader",
    "find_images": "images",
    "generate_shapes": "shapes",
    "image_to_tensor": "images",
    "read_image": "images",
    "split_dataset": "split",
    "split_indices": "split",
    "training_transforms": "augment",
}

__all__ = [
    "IMAGE_EXTENSIONS",
    "Batch",
    "CocoDataset",
    "Compose",
    "DetectionDataset",
    "Mosaic",
    "RandomAffine",
    "RandomHSV",
    "RandomHorizontalFlip",
    "ResizeLongest",
    "Sample",
    "ShapesDataset",
    "SkipBadItems",
    "SubsetDataset",
    "Transform",
    "ViaDataset",
    "VocDataset",
    "YoloDataset",
    "build_loader",
    "coco_from_dict",
    "collate",
    "find_images",
    "generate_shapes",
    "image_to_tensor",
    "read_image",
    "register_datasets",
    "split_dataset",
    "split_indices",
    "training_transforms",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'detkit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"detkit.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Registry(Protocol):
    def register(self, kind: str, name: str, factory: Any) -> None: ...


def register_datasets(registry: _Registry) -> None:
    """Register the built-in dataset factories: ``coco``, ``voc``, ``shapes``, ``via``, ``yolo`` and ``split``.

    ``split`` (a held-out fraction of another ``data`` section) gets its source
    dataset from :func:`detkit.engine.build.build_dataset`.

    Args:
        registry: anything with ``register(kind, name, factory)``, such as the
            registry handed to the ``detkit_add_components`` hook.
    """
    from detkit.data.coco import CocoDataset
    from detkit.data.shapes import ShapesDataset
    from detkit.data.split import split_dataset
    from detkit.data.via import ViaDataset
    from detkit.data.voc import VocDataset
    from detkit.data.yolo import YoloDataset

    registry.register("dataset", "coco", CocoDataset)
    registry.register("dataset", "voc", VocDataset)
    registry.register("dataset", "shapes", ShapesDataset)
    registry.register("dataset", "via", ViaDataset)
    registry.register("dataset", "yolo", YoloDataset)
    registry.register("dataset", "split", split_dataset)
