"""Convert torchvision detection state dicts into detkit checkpoints.

An importer pairs a detkit config (the equivalent architecture and test-time
settings) with a table of key renames. Importers are components of kind
``importer``, so a plugin adds one for its own model family with
``registry.register("importer", NAME, factory)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detkit.config import RECIPES_DIR, config_file, load_config
from detkit.errors import CheckpointError, ConfigError

#: The recipes shipped with detkit (:data:`detkit.config.RECIPES_DIR`); importers name their config there.
CONFIG_DIR = RECIPES_DIR

#: COCO 2017 category id -> name (ids 1..90 with gaps, as torchvision's label indices).
COCO_CATEGORIES: dict[int, str] = dict(enumerate(
    [
        "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
        "traffic light", "fire hydrant", "", "stop sign", "parking meter", "bench", "bird", "cat",
        "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "", "backpack",
        "umbrella", "", "", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
        "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
        "tennis racket", "bottle", "", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
        "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
        "cake", "chair", "couch", "potted plant", "bed", "", "dining table", "", "", "toilet", "",
        "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster",
        "sink", "refrigerator", "", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
        "toothbrush",
    ],
    start=1,
))


def torchvision_coco_classes() -> list[str]:
    """detkit class names of a torchvision COCO model: label ``i`` is torchvision label ``i + 1``.

    Unused category ids are named ``"N/A <id>"`` so that names stay unique.
    """
    return [name or f"N/A {cid}" for cid, name in COCO_CATEGORIES.items()]


def spread_random_weights(model: nn.Module, *, seed: int) -> None:
    """Redraw a randomly initialised model's convolutions and batch norms from a seeded generator, in place.

    Some of torchvision's initialisations let the activations vanish (MobileNetV3's fan-out
    init of depthwise convolutions ignores their groups; SSDlite draws N(0, 0.03)), so in
    eval mode every map is ~0 and every score ties: a comparison of two models on such
    weights would accept any order of detections. He fan-in convolutions (bias N(0, 0.1)) and
    batch norms with scales U(0.5, 1.5), shifts and means N(0, 0.1) and variances U(0.5, 2)
    carry the image through, so scores and boxes differ from detection to detection.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)


@dataclass(frozen=True)
class TorchvisionImporter:
    """Renames a torchvision state dict into a detkit model's.

    Attributes:
        config: config file name in :data:`CONFIG_DIR` describing the model.
        renames: ``(regex, replacement)`` applied in order to every key.
        class_names: the model's class names, in detkit label order.
        drop: regexes of keys that have no detkit counterpart (dropped).
        drop_background: regexes of (renamed) keys whose first row is torchvision's
            background class, which the detkit layer does not have (the row is removed).
        vanishing_init: torchvision's random initialisation of the model lets its activations
            vanish, so comparisons on random weights (``detkit benchmark --against
            torchvision``) first redraw them with :func:`spread_random_weights`.
    """

    config: str
    renames: Sequence[tuple[str, str]]
    class_names: Sequence[str]
    drop: Sequence[str] = ()
    drop_background: Sequence[str] = ()
    vanishing_init: bool = False

    def rename(self, key: str) -> str:
        for pattern, replacement in self.renames:
            key = re.sub(pattern, replacement, key)
        return key

    def convert(
        self, state_dict: dict[str, Tensor], *, config_path: str | Path | None = None
    ) -> tuple[dict[str, Any], list[str], dict[str, Tensor]]:
        """Return ``(resolved config, class names, detkit state dict)``."""
        path = config_file(config_path) if config_path is not None else CONFIG_DIR / self.config
        if not path.is_file():
            raise ConfigError(
                f"importer config {str(path)!r} not found; pass --config with the path to {self.config}"
            )
        config = load_config(path)
        config["model"]["class_names"] = list(self.class_names)
        config["model"]["num_classes"] = len(self.class_names)
        converted = {}
        for key, value in state_dict.items():
            if any(re.search(p, key) for p in self.drop):
                continue
            new_key = self.rename(key)
            if any(re.search(p, new_key) for p in self.drop_background):
                value = value[1:]
            converted[new_key] = value
        if not converted:
            raise CheckpointError("the state dict is empty after conversion")
        return config, list(self.class_names), converted


def fasterrcnn_resnet50_fpn() -> TorchvisionImporter:
    """torchvision ``fasterrcnn_resnet50_fpn`` (v1) -> ``configs/faster_rcnn_r50_fpn.yaml``."""
    return TorchvisionImporter(
        config="faster_rcnn_r50_fpn.yaml",
        renames=[
            (r"^backbone\.body\.", "backbone."),
            (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"neck.lateral_convs.\1."),
            (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"neck.output_convs.\1."),
            (r"^rpn\.head\.conv\.(\d+)\.0\.", r"proposer.head.conv.\1."),
            (r"^rpn\.head\.cls_logits\.", "proposer.head.objectness."),
            (r"^rpn\.head\.bbox_pred\.", "proposer.head.deltas."),
            (r"^roi_heads\.box_head\.", "roi_head.box_head."),
            (r"^roi_heads\.box_predictor\.", "roi_head.predictor."),
        ],
        class_names=torchvision_coco_classes(),
        drop=[r"num_batches_tracked$"],
    )


def maskrcnn_resnet50_fpn() -> TorchvisionImporter:
    """torchvision ``maskrcnn_resnet50_fpn`` (v1) -> ``configs/mask_rcnn_r50_fpn.yaml``.

    The box part is renamed as for :func:`fasterrcnn_resnet50_fpn`; torchvision's mask
    predictor has a background channel, which detkit's mask head does not.
    """
    boxes = fasterrcnn_resnet50_fpn()
    return TorchvisionImporter(
        config="mask_rcnn_r50_fpn.yaml",
        renames=[
            *boxes.renames,
            (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"roi_head.mask_head.convs.\1."),
            (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_head.mask_head.upsample.conv."),
            (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_head.mask_head.predictor."),
        ],
        class_names=boxes.class_names,
        drop=boxes.drop,
        drop_background=[r"^roi_head\.mask_head\.predictor\."],
    )


def fasterrcnn_mobilenet_v3_large_fpn() -> TorchvisionImporter:
    """torchvision ``fasterrcnn_mobilenet_v3_large_fpn`` -> ``configs/faster_rcnn_mobilenet_v3_large_fpn.yaml``.

    torchvision's ``backbone.body`` is its MobileNetV3's ``features`` (``backbone.body.13``
    is ``features.13``); the FPN, RPN and box head are renamed as for
    :func:`fasterrcnn_resnet50_fpn`.
    """
    return _mobilenet_v3_fpn("faster_rcnn_mobilenet_v3_large_fpn.yaml")


def fasterrcnn_mobilenet_v3_large_320_fpn() -> TorchvisionImporter:
    """torchvision ``fasterrcnn_mobilenet_v3_large_320_fpn`` -> ``configs/faster_rcnn_mobilenet_v3_large_320_fpn.yaml``.

    The weights are laid out as :func:`fasterrcnn_mobilenet_v3_large_fpn`'s; the config
    has its test-time settings (320 px images, 150 proposals).
    """
    return _mobilenet_v3_fpn("faster_rcnn_mobilenet_v3_large_320_fpn.yaml")


def _mobilenet_v3_fpn(config: str) -> TorchvisionImporter:
    boxes = fasterrcnn_resnet50_fpn()
    return TorchvisionImporter(
        config=config,
        renames=[(r"^backbone\.body\.", "backbone.features."), *boxes.renames],
        class_names=boxes.class_names,
        drop=boxes.drop,
        vanishing_init=True,
    )


__all__ = [
    "COCO_CATEGORIES",
    "CONFIG_DIR",
    "TorchvisionImporter",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
    "spread_random_weights",
    "torchvision_coco_classes",
]
