"""Explaining what a classifier or a detector looks at (CS231n lecture 12).

* :mod:`detkit.explain.saliency`: which pixels matter to one score (saliency,
  occlusion) and images that maximise one (class models, DeepDream);
* :mod:`detkit.explain.features`: what a network has learned (first-layer
  filters, activations, penultimate features, nearest neighbours, PCA/t-SNE);
* :mod:`detkit.explain.figures`: :func:`explain_classifier` and
  :func:`explain_detector` run those methods and write one PNG per method;
* :mod:`detkit.explain.cli`: the ``detkit explain`` command.

Drawing that the engine uses (detections, training curves) stays in :mod:`detkit.viz`.
"""

from detkit.explain.features import embed_2d, first_conv, nearest_neighbors, penultimate_features
from detkit.explain.figures import (
    CLASSIFIER_METHODS,
    DETECTOR_METHODS,
    ExplainOptions,
    explain_classifier,
    explain_detector,
)
from detkit.explain.saliency import (
    ClassScore,
    DetectionScore,
    class_model_visualization,
    deep_dream,
    occlusion_map,
    saliency_map,
)

__all__ = [
    "CLASSIFIER_METHODS",
    "DETECTOR_METHODS",
    "ClassScore",
    "DetectionScore",
    "ExplainOptions",
    "class_model_visualization",
    "deep_dream",
    "embed_2d",
    "explain_classifier",
    "explain_detector",
    "first_conv",
    "nearest_neighbors",
    "occlusion_map",
    "penultimate_features",
    "saliency_map",
]
