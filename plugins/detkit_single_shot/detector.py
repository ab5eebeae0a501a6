"""The ``single_stage`` detector type: preprocess -> backbone -> dense head -> post-process, no proposals.

:func:`build_single_stage` is registered as detector ``single_stage``
(``model.type: single_stage``). It is detkit's
:class:`~detkit.detectors.DenseDetector` with a fixed square input, as SSD and YOLO
use: every image is resized to ``model.preprocess.min_size`` pixels on a side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detkit import ComponentRegistry, ConfigError
from detkit.detectors import DenseDetector, build_dense, build_preprocess


def build_single_stage(model: Mapping[str, Any], registry: ComponentRegistry, *, num_classes: int) -> DenseDetector:
    """Build a single-stage :class:`~detkit.detectors.DenseDetector` from the ``model`` config section.

    ``model.preprocess``: every image is resized to the square ``min_size`` x ``min_size``
    (``max_size`` must equal it). ``model.neck`` is built when set (SSD sets it to
    null); see :func:`~detkit.detectors.build_dense` for the rest.
    """
    pre = model["preprocess"]
    if not isinstance(pre["min_size"], int) or pre["min_size"] != pre["max_size"]:
        raise ConfigError(
            "model.preprocess: the single_stage detector resizes to a fixed square; "
            f"set min_size and max_size to one number (got {pre['min_size']!r} and {pre['max_size']!r})"
        )
    size = pre["min_size"]
    return build_dense(
        model, registry, num_classes=num_classes, preprocess=build_preprocess(model, fixed_size=(size, size))
    )


__all__ = ["build_single_stage"]
