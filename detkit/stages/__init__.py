"""Stage contracts and the stages shared by every detector family.

The contracts (:mod:`detkit.stages.base`) say what each stage takes and returns;
the shared stages here are the ones every detector reuses: one preprocessing
(:class:`ResizeNormalize`), one post-processing (:class:`DetectionPostProcess`),
region pooling, the Fast R-CNN box head and its proposal sampling. Plugins import
them from this package.
"""

from detkit.stages.base import (
    Backbone,
    ClassRows,
    DenseHead,
    Losses,
    MaskHead,
    Neck,
    PostProcess,
    Preprocess,
    Proposer,
    RegionExtractor,
    RoIHead,
    no_detections,
)
from detkit.stages.postprocess import DetectionPostProcess, paste_masks
from detkit.stages.preprocess import ResizeNormalize
from detkit.stages.region_features import MultiScaleRoIAlign, MultiScaleRoIPool, WarpedCrops
from detkit.stages.roi_heads import BoxPredictor, FastRCNNHead, ProposalSampler, TwoFCHead

__all__ = [
    "Backbone",
    "BoxPredictor",
    "ClassRows",
    "DenseHead",
    "DetectionPostProcess",
    "FastRCNNHead",
    "Losses",
    "MaskHead",
    "MultiScaleRoIAlign",
    "MultiScaleRoIPool",
    "Neck",
    "PostProcess",
    "Preprocess",
    "ProposalSampler",
    "Proposer",
    "RegionExtractor",
    "ResizeNormalize",
    "RoIHead",
    "TwoFCHead",
    "WarpedCrops",
    "no_detections",
    "paste_masks",
]
