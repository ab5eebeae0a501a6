"""Checkpoints that tests build instead of training: the demo recipe with seeded random weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.engine.checkpoint import save_checkpoint
from detkit.plugins import load_plugins

#: The shapes dataset's classes, in label order.
SHAPES_CLASSES = ["circle", "square", "triangle", "ellipse"]


def random_shapes_checkpoint(path: Path, overrides: Sequence[str] = ()) -> Path:
    """Save the demo recipe's Faster R-CNN, weights drawn after ``torch.manual_seed(0)``, at ``path``.

    Its post-processing keeps every detection (``score_thresh`` 0), so even random
    weights give detections to compare; ``overrides`` change the config further.
    """
    torch.manual_seed(0)
    config = load_config("detkit:shapes_faster_rcnn.yaml", ["model.postprocess.score_thresh=0.0", *overrides])
    model = build_detector(config, load_plugins().registry, num_classes=len(SHAPES_CLASSES)).eval()
    save_checkpoint(path, model=model, config=config, class_names=SHAPES_CLASSES)
    return path
