"""Stage contracts and the stages shared by every detector family."""

from detkit.stages.base import (
    DenseHead,
    Neck,
    PostProcess,
    Preprocess,
    Proposer,
    RegionExtractor,
    RoIHead,
    Trunk,
)

__all__ = [
    "DenseHead",
    "Neck",
    "PostProcess",
    "Preprocess",
    "Proposer",
    "RegionExtractor",
    "RoIHead",
    "Trunk",
]
