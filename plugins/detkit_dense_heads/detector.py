"""The ``dense`` detector type: a dense head on pyramid features, images resized as the two-stage models do.

:func:`build_dense_detector` is registered as detector ``dense`` (``model.type: dense``).
It is detkit's :class:`~detkit.detectors.DenseDetector` with the aspect-preserving
resize of the R-CNN family (shorter side to ``model.preprocess.min_size``, longer side
at most ``max_size``, padded to ``size_divisible``), which torchvision's RetinaNet and
FCOS use, unlike the fixed square of ``single_stage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detkit import ComponentRegistry
from detkit.detectors import DenseDetector, build_dense, build_preprocess


def build_dense_detector(model: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> DenseDetector:
    """Build a :class:`~detkit.detectors.DenseDetector` that keeps the images' aspect ratio.

    ``model.dense_head`` is e.g. ``{name: retinanet}`` or ``{name: fcos}`` on a neck
    giving P3-P7 (``{name: fpn, extra_level: p6p7}``); see
    :func:`~detkit.detectors.build_dense` for the rest.
    """
    return build_dense(model, registry, num_classes=num_classes, preprocess=build_preprocess(model))


__all__ = ["build_dense_detector"]
