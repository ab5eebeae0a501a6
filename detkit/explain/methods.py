"""The names of the explanation methods (no heavy imports, so the command line can list them)."""

from __future__ import annotations

#: Every method, in the order they run.
CLASSIFIER_METHODS: tuple[str, ...] = (
    "saliency", "occlusion", "filters", "activations", "neighbors", "embedding", "class_model", "deepdream",
)
#: The methods that apply to a detector (the others need a classifier and its dataset).
DETECTOR_METHODS: tuple[str, ...] = ("saliency", "occlusion", "filters", "activations", "deepdream")

__all__ = ["CLASSIFIER_METHODS", "DETECTOR_METHODS"]
