"""Evaluation: COCO-style detection and instance-segmentation metrics."""

from __future__ import annotations

from detkit.evaluation.coco import (
    METRIC_NAMES,
    CocoEvaluator,
    encode_masks,
    format_metrics,
    write_results,
)

__all__ = ["METRIC_NAMES", "CocoEvaluator", "encode_masks", "format_metrics", "write_results"]
