"""The ``sliding_window`` detector type: an image pyramid, a backbone and an OverFeat head per scale.

OverFeat (Sermanet et al., 2014) detects with one window size and many image
sizes. In detkit that is a :class:`~detkit.detectors.DenseDetector` whose dense
head asks for an image pyramid (:meth:`OverFeatHead.image_scales
<detkit_sliding_window.head.OverFeatHead.image_scales>`): the detector resizes the
batch by every factor ``s``, runs the backbone once per scale and hands the head all
levels at once, so a location at scale ``s`` stands for a window of
``window_size / s`` pixels of the resized image, and the balanced sample of an
image and the class-wise NMS of the post-processing both see every scale.

:func:`build_sliding_window` is registered as detector ``sliding_window``
(``model.type: sliding_window``): images keep their aspect ratio
(``model.preprocess``'s ``min_size`` / ``max_size``), unlike ``single_stage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detkit import ComponentRegistry
from detkit.detectors import DenseDetector, build_dense, build_preprocess


def build_sliding_window(model: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> DenseDetector:
    """Build the sliding-window :class:`~detkit.detectors.DenseDetector` from the ``model`` config section.

    ``model.dense_head`` is e.g. ``{name: overfeat, window_size: 16, scales: [2, 1, 0.5]}``;
    see :func:`~detkit.detectors.build_dense` for the rest.
    """
    return build_dense(model, registry, num_classes=num_classes, preprocess=build_preprocess(model))


__all__ = ["build_sliding_window"]
