"""Stage contracts and the stages shared by every detector family."""

from detkit.stages.base import (
    Backbone,
    DenseHead,
    MaskHead,
    Neck,
    PostProcess,
    Preprocess,
    Proposer,
    RegionExtractor,
    RoIHead,
)

__all__ = [
    "Backbone",
    "DenseHead",
    "MaskHead",
    "Neck",
    "PostProcess",
    "Preprocess",
    "Proposer",
    "RegionExtractor",
    "RoIHead",
]
