"""detkit_sliding_window: sliding windows, as proposals and as an OverFeat detector (Sermanet et al., 2014).

Registers:

* the proposer ``sliding_window`` (:class:`SlidingWindowProposer`): every window of a
  few sizes and aspect ratios on a regular grid, a learning-free baseline for
  proposal recall next to selective search and the RPN;
* the detector ``sliding_window`` (``model.type: sliding_window``,
  :func:`build_sliding_window`): an image pyramid, the backbone once per scale and a
  dense head over the merged locations, then detkit's post-processing;
* the dense head ``overfeat`` (:class:`OverFeatHead`): a window classifier and box
  regressor whose fully connected layers are convolutions, so it slides for free.
"""

from __future__ import annotations

from detkit.hookspecs import Registrar, hookimpl
from detkit_sliding_window.detector import build_sliding_window
from detkit_sliding_window.head import OverFeatHead, label_windows, window_boxes
from detkit_sliding_window.proposer import SlidingWindowProposer, grid_positions

__all__ = [
    "OverFeatHead",
    "SlidingWindowProposer",
    "build_sliding_window",
    "detkit_add_components",
    "grid_positions",
    "label_windows",
    "window_boxes",
]


@hookimpl
def detkit_add_components(registry: Registrar) -> None:
    registry.register("proposer", "sliding_window", SlidingWindowProposer)
    registry.register("detector", "sliding_window", build_sliding_window)
    registry.register("dense_head", "overfeat", OverFeatHead)
