"""torchvision ``retinanet_resnet50_fpn`` and ``fcos_resnet50_fpn`` -> detkit checkpoints.

Both torchvision models classify 91 COCO slots with one sigmoid each. Slot 0 is the
``__background__`` of torchvision's label list: never a training target, so a trained
model never scores it, and detkit (labels ``0..K-1``, no background in a sigmoid head)
has no such class. The importers drop its row from every anchor's block of classifier
rows; the 90 others are :func:`~detkit.importers.torchvision_coco_classes`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from detkit import CheckpointError
from detkit.importers import TorchvisionImporter, torchvision_coco_classes

#: torchvision's COCO detection models: 91 label slots, slot 0 the background.
TORCHVISION_COCO_SLOTS = 91


@dataclass(frozen=True)
class SigmoidHeadImporter(TorchvisionImporter):
    """A :class:`~detkit.importers.TorchvisionImporter` for heads with one sigmoid per class.

    Attributes:
        unused_slot_rows: regexes of (renamed) classifier keys whose rows come in blocks of
            :data:`TORCHVISION_COCO_SLOTS` per anchor; slot 0 of every block is removed.
    """

    unused_slot_rows: Sequence[str] = ()

    def convert(
        self, state_dict: dict[str, Tensor], *, config_path: str | Path | None = None
    ) -> tuple[dict[str, Any], list[str], dict[str, Tensor]]:
        config, class_names, converted = super().convert(state_dict, config_path=config_path)
        for key, value in converted.items():
            if not any(re.search(p, key) for p in self.unused_slot_rows):
                continue
            if value.shape[0] % TORCHVISION_COCO_SLOTS:
                raise CheckpointError(
                    f"{key} has {value.shape[0]} rows, not a multiple of torchvision's {TORCHVISION_COCO_SLOTS} "
                    "COCO classes; this importer reads COCO models (num_classes=91)"
                )
            # (A * 91, ...) -> (A, 91, ...) -> (A, 90, ...) -> (A * 90, ...)
            blocks = value.reshape(-1, TORCHVISION_COCO_SLOTS, *value.shape[1:])
            converted[key] = blocks[:, 1:].reshape(-1, *value.shape[1:]).clone()
        return config, class_names, converted


def _backbone_and_fpn() -> list[tuple[str, str]]:
    """Renames of the ResNet-50 body and the FPN with P6 and P7 (``extra_level: p6p7``)."""
    return [
        (r"^backbone\.body\.", "backbone."),
        (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"neck.lateral_convs.\1."),
        (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"neck.output_convs.\1."),
        (r"^backbone\.fpn\.extra_blocks\.p6\.", "neck.extra_convs.0."),
        (r"^backbone\.fpn\.extra_blocks\.p7\.", "neck.extra_convs.1."),
    ]


def retinanet_resnet50_fpn() -> TorchvisionImporter:
    """torchvision ``retinanet_resnet50_fpn`` (v1) -> ``configs/retinanet_r50_fpn.yaml``.

    torchvision's towers are ``conv.i.0`` (conv, then ReLU); detkit's are flat
    (conv ``i`` at index ``2 i``).
    """
    towers = [
        (rf"^head\.{branch}_head\.conv\.{i}\.0\.", f"dense_head.{tower}.{2 * i}.")
        for branch, tower in (("classification", "cls_tower"), ("regression", "box_tower"))
        for i in range(4)
    ]
    return SigmoidHeadImporter(
        config="retinanet_r50_fpn.yaml",
        renames=[
            *_backbone_and_fpn(),
            *towers,
            (r"^head\.classification_head\.cls_logits\.", "dense_head.cls_logits."),
            (r"^head\.regression_head\.bbox_reg\.", "dense_head.bbox_deltas."),
        ],
        class_names=torchvision_coco_classes(),
        drop=[r"num_batches_tracked$"],
        unused_slot_rows=[r"^dense_head\.cls_logits\."],
    )


def fcos_resnet50_fpn() -> TorchvisionImporter:
    """torchvision ``fcos_resnet50_fpn`` -> ``configs/fcos_r50_fpn.yaml``.

    The towers are flat on both sides (conv, GroupNorm, ReLU), so their indices carry over.
    """
    return SigmoidHeadImporter(
        config="fcos_r50_fpn.yaml",
        renames=[
            *_backbone_and_fpn(),
            (r"^head\.classification_head\.conv\.", "dense_head.cls_tower."),
            (r"^head\.classification_head\.cls_logits\.", "dense_head.cls_logits."),
            (r"^head\.regression_head\.conv\.", "dense_head.box_tower."),
            (r"^head\.regression_head\.bbox_reg\.", "dense_head.bbox_distances."),
            (r"^head\.regression_head\.bbox_ctrness\.", "dense_head.centerness."),
        ],
        class_names=torchvision_coco_classes(),
        drop=[r"num_batches_tracked$"],
        unused_slot_rows=[r"^dense_head\.cls_logits\."],
    )


__all__ = ["TORCHVISION_COCO_SLOTS", "SigmoidHeadImporter", "fcos_resnet50_fpn", "retinanet_resnet50_fpn"]
