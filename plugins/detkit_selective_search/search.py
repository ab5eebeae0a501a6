"""Selective search (Uijlings, van de Sande, Gevers, Smeulders, IJCV 2013).

Selective search proposes object boxes from a bottom-up grouping of image
regions:

1. over-segment the image with the graph segmentation of Felzenszwalb and
   Huttenlocher (:mod:`.segmentation`);
2. describe every region by its size, box, colour and texture histograms
   (:mod:`.features`);
3. greedily merge the most similar pair of adjacent regions until one region
   covers the image; every region created on the way is a proposal
   (:mod:`.grouping`);
4. diversify: repeat 1-3 in several colour spaces, with several segmentation
   thresholds ``k`` and several similarity strategies, and pool all hierarchies;
5. rank the pool with the paper's randomized ranking: the region at position
   ``i`` of its hierarchy (``i = 1`` the top region, the last merged) gets the
   value ``i * U(0, 1)``; all regions are sorted by increasing value, duplicate
   boxes keep their best rank;
6. demote near-duplicates: a box whose IoU with a better-ranked kept box
   exceeds ``nms_iou`` (default 0.7) moves behind every kept box, the greedy
   non-maximum suppression of EdgeBoxes (Zitnick and Dollar, ECCV 2014, its
   ``beta``) with the suppressed boxes kept at the end instead of dropped. The
   twelve hierarchies of ``fast`` propose many boxes a few pixels apart; moving
   them back leaves room in a proposal budget for boxes elsewhere (on tiny_coco
   val, recall at IoU 0.5 of the top 1000 rises from 0.62 to 0.68), while a
   budget larger than the kept boxes still gets the near-duplicates, which
   detector training uses as jittered positives. ``nms_iou=1.0`` keeps the
   paper's order.

The presets mirror OpenCV's ``ximgproc`` ``SelectiveSearchSegmentation``:

- ``single``: HSV, ``k = 200``, strategy colour+texture+size+fill;
- ``fast``: HSV and Lab, ``k = 150, 300, 450``, strategies colour+texture+size+fill
  and texture+size+fill (12 hierarchies);
- ``quality``: HSV, Lab, intensity, hue and rgI, ``k = 150, 300, ..., 750``,
  strategies colour+texture+size+fill, texture+size+fill, fill and size
  (100 hierarchies);

all with ``sigma = 0.8`` and segments of at least 100 pixels.

One detkit choice departs from a literal reading: the graph segmentation (the
dominant cost) runs on the image halved in each side, with ``k`` and the minimum
segment size scaled by 1/4 to keep segment sizes in full-resolution pixels, and
its labels are enlarged back; colour and texture features, boxes and grouping use
the full image. This is about 4x faster and, on the benchmarks of
``tools/bench_selective_search.py``, finds more objects; ``segmentation_scale=1.0``
segments the full image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from detkit_selective_search.features import (
    adjacency,
    colour_codes,
    colour_histograms,
    segmentation_boxes,
    segmentation_sizes,
    texture_codes,
    texture_histograms,
)
from detkit_selective_search.grouping import Hierarchy, RegionGraph, Strategy, hierarchical_groupings
from detkit_selective_search.segmentation import canonical_colour_space, convert_colour, prepare_segmentation
from detkit_selective_search.suppression import greedy_nms_keep

#: Bumped whenever a change of the code changes the boxes (it keys the proposal cache).
VERSION = "3"


@dataclass(frozen=True)
class SearchConfig:
    """Every setting that changes the boxes of :func:`selective_search`.

    Attributes:
        colour_spaces: names from :data:`.segmentation.COLOUR_SPACES`.
        ks: the segmentation thresholds ``k`` (8-bit colour units).
        sigma: Gaussian smoothing of the segmentation.
        min_size: smallest segment, in pixels.
        strategies: similarity strategies, strings of ``c t s f`` letters.
        min_box_size: boxes with a side shorter than this (pixels) are dropped.
        nms_iou: boxes overlapping a better-ranked kept box by a larger IoU
            move behind all kept boxes (1.0: the paper's order).
        max_proposals: keep at most this many of the best ranked boxes (``None``: all).
        seed: seed of the randomized ranking.
        segmentation_scale: the graph segmentation runs on the image resized by
            this factor (``k`` and ``min_size`` rescaled to match), its labels
            brought back to full size; 1.0 segments the full image. Features,
            boxes and grouping always use the full image.
    """

    colour_spaces: tuple[str, ...]
    ks: tuple[float, ...]
    sigma: float = 0.8
    min_size: int = 100
    strategies: tuple[str, ...] = ("ctsf",)
    min_box_size: float = 0.0
    nms_iou: float = 0.7
    max_proposals: int | None = None
    seed: int = 0
    segmentation_scale: float = 0.5

    def settings(self) -> dict[str, object]:
        """JSON-ready settings plus the code version (the proposal cache key)."""
        return {
            "version": VERSION,
            "colour_spaces": list(self.colour_spaces),
            "ks": [float(k) for k in self.ks],
            "sigma": float(self.sigma),
            "min_size": int(self.min_size),
            "strategies": list(self.strategies),
            "min_box_size": float(self.min_box_size),
            "nms_iou": float(self.nms_iou),
            "max_proposals": self.max_proposals,
            "seed": int(self.seed),
            "segmentation_scale": float(self.segmentation_scale),
        }


PRESETS: dict[str, SearchConfig] = {
    "single": SearchConfig(colour_spaces=("hsv",), ks=(200.0,), strategies=("ctsf",)),
    "fast": SearchConfig(colour_spaces=("hsv", "lab"), ks=(150.0, 300.0, 450.0), strategies=("ctsf", "tsf")),
    "quality": SearchConfig(
        colour_spaces=("hsv", "lab", "gray", "h", "rgi"),
        ks=(150.0, 300.0, 450.0, 600.0, 750.0),
        strategies=("ctsf", "tsf", "f", "s"),
    ),
}


def make_config(
    preset: str = "fast",
    *,
    colour_spaces: Sequence[str] | None = None,
    ks: Sequence[float] | None = None,
    sigma: float | None = None,
    min_size: int | None = None,
    strategies: Sequence[str] | None = None,
    min_box_size: float = 0.0,
    nms_iou: float | None = None,
    max_proposals: int | None = None,
    seed: int = 0,
    segmentation_scale: float | None = None,
) -> SearchConfig:
    """A preset (``single``, ``fast``, ``quality``) with the given overrides, validated.

    Args:
        preset: ``single``, ``fast`` or ``quality`` (see the module docstring).
        colour_spaces, ks, sigma, min_size, strategies: override the preset's
            colour spaces, segmentation thresholds, smoothing, minimum segment
            size and similarity strategies (strings of ``c t s f`` letters).
        min_box_size: drop boxes with a side shorter than this many pixels.
        nms_iou: boxes whose IoU with a better-ranked kept box exceeds this
            move behind all others (default 0.7; 1.0: the paper's order).
        max_proposals: keep at most this many boxes (``None``: all).
        seed: seed of the randomized ranking (same seed, same boxes).
        segmentation_scale: resize factor of the image the graph segmentation
            runs on (default 0.5, about 4x faster; 1.0: full resolution).

    Raises:
        ValueError: an unknown preset or colour space, or a value out of range.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown selective search preset {preset!r}; known: {', '.join(PRESETS)}")
    base = PRESETS[preset]
    config = replace(
        base,
        colour_spaces=tuple(canonical_colour_space(c) for c in (colour_spaces or base.colour_spaces)),
        ks=tuple(float(k) for k in (ks or base.ks)),
        sigma=float(base.sigma if sigma is None else sigma),
        min_size=int(base.min_size if min_size is None else min_size),
        strategies=tuple(str(Strategy.parse(s)) for s in (strategies or base.strategies)),
        min_box_size=float(min_box_size),
        nms_iou=float(base.nms_iou if nms_iou is None else nms_iou),
        max_proposals=None if max_proposals is None else int(max_proposals),
        seed=int(seed),
        segmentation_scale=float(base.segmentation_scale if segmentation_scale is None else segmentation_scale),
    )
    if not 0.0 < config.segmentation_scale <= 1.0:
        raise ValueError(f"segmentation_scale must be in (0, 1], got {config.segmentation_scale}")
    if any(k <= 0 for k in config.ks):
        raise ValueError(f"segmentation thresholds ks must be positive, got {list(config.ks)}")
    if config.sigma < 0 or config.min_size < 1:
        raise ValueError(f"need sigma >= 0 and min_size >= 1, got sigma={config.sigma}, min_size={config.min_size}")
    if not 0.0 < config.nms_iou <= 1.0:
        raise ValueError(f"nms_iou must be in (0, 1], got {config.nms_iou}")
    if config.max_proposals is not None and config.max_proposals < 0:
        raise ValueError(f"max_proposals must be >= 0 or None, got {config.max_proposals}")
    return config


def hierarchies(image: np.ndarray, config: SearchConfig) -> list[Hierarchy]:
    """All hierarchies of ``image (H, W, 3)`` uint8 RGB, in a fixed order.

    Order: colour space, then ``k``, then strategy (the ranking draws its random
    numbers in this order).
    """
    h, w = image.shape[:2]
    strategies = [Strategy.parse(s) for s in config.strategies]
    need_colour = any(s.colour for s in strategies)
    need_texture = any(s.texture for s in strategies)
    graphs: list[RegionGraph] = []
    for space in config.colour_spaces:
        converted = convert_colour(image, space)
        # everything that does not depend on k, once per colour space
        prepared = prepare_segmentation(converted, sigma=config.sigma, scale=config.segmentation_scale)
        colours = colour_codes(converted) if need_colour else None
        textures = texture_codes(converted) if need_texture else None
        for k in config.ks:
            segmentation = prepared.segment(k=k, min_size=config.min_size)
            n = segmentation.num_regions
            sizes = segmentation_sizes(segmentation)
            boxes = segmentation_boxes(segmentation)
            pairs = adjacency(segmentation.labels)  # the enlargement keeps the adjacency
            labels = segmentation.full_labels()
            colour = colour_histograms(converted, labels, n, codes=colours) if colours is not None else None
            texture = texture_histograms(textures, labels, n) if textures is not None else None
            graphs.extend(RegionGraph(sizes, boxes, pairs, strategy, colour, texture) for strategy in strategies)
    return hierarchical_groupings(graphs, image_size=h * w)


def rank_boxes(
    boxes_per_hierarchy: Sequence[np.ndarray],
    positions_per_hierarchy: Sequence[np.ndarray],
    *,
    seed: int = 0,
    min_box_size: float = 0.0,
    nms_iou: float = 1.0,
    max_proposals: int | None = None,
) -> np.ndarray:
    """Pool hierarchies and rank their boxes: ``(R, 4)`` float32, best first.

    Each box gets ``position * U(0, 1)`` (``position`` 1 = the top region of its
    hierarchy), drawn from ``numpy.random.default_rng(seed)`` hierarchy by
    hierarchy; boxes are sorted by increasing value (ties keep pool order),
    duplicates keep their best rank, then boxes with a side shorter than
    ``min_box_size`` are dropped, boxes whose IoU with a better-ranked kept box
    exceeds ``nms_iou`` (greedy, in rank order) move behind all the others,
    keeping their order, and the first ``max_proposals`` are returned.
    """
    if not boxes_per_hierarchy:
        return np.zeros((0, 4), dtype=np.float32)
    rng = np.random.default_rng(seed)
    values = np.concatenate([np.asarray(p, dtype=np.float64) * rng.random(len(p)) for p in positions_per_hierarchy])
    boxes = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes_per_hierarchy])
    order = np.argsort(values, kind="stable")
    boxes = boxes[order]
    boxes = boxes[first_occurrences(boxes)]
    if min_box_size > 0:
        keep = ((boxes[:, 2] - boxes[:, 0]) >= min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_box_size)
        boxes = boxes[keep]
    if nms_iou < 1.0 and len(boxes) > 1:
        boxes = boxes[demote_near_duplicates(boxes, nms_iou)]
    if max_proposals is not None:
        boxes = boxes[:max_proposals]
    return boxes.astype(np.float32)


def first_occurrences(boxes: np.ndarray) -> np.ndarray:
    """Sorted row indices of the first occurrence of every distinct row of ``boxes (R, 4)``.

    Boxes of small non-negative integers (every box of a hierarchy) are packed
    into one int64 each, which sorts much faster than rows.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    whole = np.rint(boxes)
    top = float(boxes.max()) + 1.0
    if (whole == boxes).all() and float(boxes.min()) >= 0 and top**4 < 2.0**62:
        ints = whole.astype(np.int64)
        k = int(top)
        keys = ((ints[:, 0] * k + ints[:, 1]) * k + ints[:, 2]) * k + ints[:, 3]
        _, first = np.unique(keys, return_index=True)
    else:
        _, first = np.unique(boxes, axis=0, return_index=True)
    return np.sort(first)


def demote_near_duplicates(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """A reordering of ``boxes`` (best first): those kept by greedy NMS at ``iou_threshold``, then the rest.

    Both groups keep their rank order.
    """
    kept = greedy_nms_keep(boxes, iou_threshold)
    return np.concatenate([np.flatnonzero(kept), np.flatnonzero(~kept)])


def run_search(image: np.ndarray, config: SearchConfig) -> np.ndarray:
    """Selective search with a resolved :class:`SearchConfig`: ``(R, 4)`` float32 xyxy, best first."""
    image = _check_image(image)
    if image.shape[0] == 0 or image.shape[1] == 0:
        return np.zeros((0, 4), dtype=np.float32)
    found = hierarchies(image, config)
    return rank_boxes(
        [h.boxes for h in found],
        [h.positions() for h in found],
        seed=config.seed,
        min_box_size=config.min_box_size,
        nms_iou=config.nms_iou,
        max_proposals=config.max_proposals,
    )


def selective_search(image: np.ndarray, *, preset: str = "fast", **overrides: Any) -> np.ndarray:
    """Selective search proposals of one image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        preset: ``single``, ``fast`` or ``quality`` (see the module docstring).
        overrides: any keyword of :func:`make_config` (``ks``, ``nms_iou``,
            ``max_proposals``, ``seed``, ...).

    Returns:
        ``(R, 4)`` float32 xyxy boxes in pixels (exclusive right/bottom), best first.
    """
    return run_search(image, make_config(preset, **overrides))


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"selective search expects an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)
