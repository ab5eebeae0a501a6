"""Similarity measures and the greedy hierarchical grouping of selective search.

Shapes: n initial regions; m = 2n - 1 regions of a full hierarchy (the n initial
ones, then one per merge); D histogram bins; E adjacent pairs.

Uijlings et al. (IJCV 2013, section 3.2) measure the similarity of two adjacent
regions ``i, j`` with four terms, each in ``[0, 1]``:

- colour: ``sum_k min(c_i[k], c_j[k])`` over the L1-normalized colour histograms;
- texture: the same over the texture histograms;
- size: ``1 - (size_i + size_j) / size_image``, so small regions merge early;
- fill: ``1 - (BB_ij - size_i - size_j) / size_image`` with ``BB_ij`` the area of
  the box around both, so regions that fill each other's gaps merge early.

A strategy is a combination of these terms; like OpenCV's ``ximgproc``, detkit
averages the terms it uses (the order of merges only depends on their sum).
Grouping repeatedly merges the most similar adjacent pair: the merged histograms
are the size-weighted averages of the parts (exactly the histogram of the union),
its box is the union box, and its similarities to its neighbours are computed
anew. A max-heap with lazy deletion holds the candidate pairs; entries that
mention a region already merged are dropped when they surface.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

_TERMS = {"c": "colour", "t": "texture", "s": "size", "f": "fill"}


@dataclass(frozen=True)
class Strategy:
    """Which similarity terms a grouping uses.

    Build one from a string of term letters: ``"ctsf"`` (colour + texture + size
    + fill), ``"tsf"``, ``"f"``, ...
    """

    colour: bool = False
    texture: bool = False
    size: bool = False
    fill: bool = False

    @classmethod
    def parse(cls, spec: str) -> Strategy:
        letters = spec.lower().replace("+", "").replace("-", "").replace(" ", "")
        unknown = sorted(set(letters) - set(_TERMS))
        if unknown or not letters:
            raise ValueError(
                f"bad similarity strategy {spec!r}: use letters c (colour), t (texture), s (size), f (fill)"
            )
        return cls(**{_TERMS[c]: True for c in letters})

    @property
    def num_terms(self) -> int:
        return int(self.colour) + int(self.texture) + int(self.size) + int(self.fill)

    def __str__(self) -> str:
        return "".join(c for c, name in _TERMS.items() if getattr(self, name))


@dataclass
class Hierarchy:
    """The regions of one grouping, in creation order.

    Attributes:
        boxes: ``(m, 4)`` float64 ``x0, y0, x1, y1`` (exclusive ``x1, y1``); rows
            ``0..n-1`` the initial regions, row ``n + t`` the region of merge ``t``.
        merges: ``(m - n, 2)`` int64, the two regions merged at each step.
        similarities: ``(m - n,)`` the similarity of each merged pair.
        num_initial: n.
    """

    boxes: np.ndarray
    merges: np.ndarray
    similarities: np.ndarray
    num_initial: int

    def positions(self) -> np.ndarray:
        """``(m,)`` position of each region in the hierarchy: 1 for the last merged (top) region."""
        m = self.boxes.shape[0]
        return np.arange(m, 0, -1, dtype=np.float64)


def similarity_histogram(hist_i: np.ndarray, hist_j: np.ndarray) -> np.ndarray:
    """Histogram intersection ``sum min(hist_i, hist_j)`` over the last axis."""
    return np.minimum(hist_i, hist_j).sum(axis=-1)


def similarity_size(size_i: np.ndarray, size_j: np.ndarray, image_size: float) -> np.ndarray:
    """``1 - (size_i + size_j) / image_size``."""
    return 1.0 - (np.asarray(size_i, dtype=np.float64) + size_j) / float(image_size)


def union_box_area(box_i: np.ndarray, box_j: np.ndarray) -> np.ndarray:
    """Area of the box around ``box_i`` and ``box_j`` (``(..., 4)`` xyxy, exclusive ends)."""
    box_i = np.asarray(box_i, dtype=np.float64)
    box_j = np.asarray(box_j, dtype=np.float64)
    w = np.maximum(box_i[..., 2], box_j[..., 2]) - np.minimum(box_i[..., 0], box_j[..., 0])
    h = np.maximum(box_i[..., 3], box_j[..., 3]) - np.minimum(box_i[..., 1], box_j[..., 1])
    return w * h


def similarity_fill(
    box_i: np.ndarray, box_j: np.ndarray, size_i: np.ndarray, size_j: np.ndarray, image_size: float
) -> np.ndarray:
    """``1 - (BB_ij - size_i - size_j) / image_size``, ``BB_ij`` the area of the box around both."""
    return 1.0 - (union_box_area(box_i, box_j) - size_i - size_j) / float(image_size)


def strategy_histograms(
    colour_hist: np.ndarray | None, texture_hist: np.ndarray | None, strategy: Strategy
) -> np.ndarray | None:
    """The histograms a strategy compares, concatenated: ``(n, D)``, or ``None`` for neither.

    Colour and texture intersections add up, so one intersection over the
    concatenated histograms gives ``s_colour + s_texture``.
    """
    parts = []
    if strategy.colour:
        if colour_hist is None:
            raise ValueError("the strategy uses colour but no colour histograms were given")
        parts.append(colour_hist)
    if strategy.texture:
        if texture_hist is None:
            raise ValueError("the strategy uses texture but no texture histograms were given")
        parts.append(texture_hist)
    if not parts:
        return None
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def hierarchical_grouping(
    sizes: np.ndarray,
    boxes: np.ndarray,
    pairs: np.ndarray,
    strategy: Strategy,
    *,
    image_size: float,
    colour_hist: np.ndarray | None = None,
    texture_hist: np.ndarray | None = None,
) -> Hierarchy:
    """Greedily merge the most similar adjacent regions until none are left to merge.

    Args:
        sizes: ``(n,)`` pixel counts.
        boxes: ``(n, 4)`` xyxy (exclusive ends).
        pairs: ``(E, 2)`` adjacent region pairs.
        strategy: the similarity terms to use.
        image_size: pixels in the image (H * W).
        colour_hist, texture_hist: ``(n, Dc)``, ``(n, Dt)`` L1-normalized, when the
            strategy uses them.

    Returns:
        The :class:`Hierarchy`: ``2n - 1`` regions when the regions are connected.
    """
    n = int(sizes.shape[0])
    m = max(2 * n - 1, 0)
    hist0 = strategy_histograms(colour_hist, texture_hist, strategy)
    use_hist, use_size, use_fill = hist0 is not None, strategy.size, strategy.fill
    inv_terms = 1.0 / strategy.num_terms
    area = float(image_size)

    hist = np.zeros((m, hist0.shape[1] if hist0 is not None else 0), dtype=np.float32)
    if hist0 is not None:
        hist[:n] = hist0
    size = np.zeros(m, dtype=np.float64)
    size[:n] = sizes
    box = np.zeros((m, 4), dtype=np.float64)
    box[:n] = boxes

    def similarity(i: np.ndarray | int, j: np.ndarray) -> np.ndarray:
        # (E,) similarity of regions i and j, averaged over the strategy's terms
        total = np.zeros(j.shape[0], dtype=np.float64)
        if use_hist:
            total += np.minimum(hist[i], hist[j]).sum(axis=-1)
        if use_size or use_fill:
            both = size[i] + size[j]
            if use_size:
                total += 1.0 - both / area
            if use_fill:
                total += 1.0 - (union_box_area(box[i], box[j]) - both) / area
        return total * inv_terms

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    neighbours: list[set[int] | None] = [set() for _ in range(n)] + [None] * (m - n)
    for a, b in pairs.tolist():
        neighbours[a].add(b)  # type: ignore[union-attr]
        neighbours[b].add(a)  # type: ignore[union-attr]
    initial = similarity(pairs[:, 0], pairs[:, 1]) if len(pairs) else np.zeros(0)
    # max-heap of (-similarity, i, j)
    heap = list(zip((-initial).tolist(), pairs[:, 0].tolist(), pairs[:, 1].tolist()))
    heapq.heapify(heap)
    alive = bytearray(m)
    alive[:n] = b"\x01" * n

    merges: list[tuple[int, int]] = []
    merge_similarity: list[float] = []
    new = n
    while heap:
        neg_sim, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue  # a stale pair: one of the two was merged already
        alive[a] = alive[b] = 0
        alive[new] = 1
        sa, sb = size[a], size[b]
        size[new] = sa + sb
        if use_hist:
            hist[new] = (hist[a] * sa + hist[b] * sb) / (sa + sb)
        ba, bb = box[a], box[b]
        box[new] = (min(ba[0], bb[0]), min(ba[1], bb[1]), max(ba[2], bb[2]), max(ba[3], bb[3]))
        merges.append((a, b))
        merge_similarity.append(-neg_sim)

        around: set[int] = neighbours[a] | neighbours[b]  # type: ignore[operator]
        around.discard(a)
        around.discard(b)
        neighbours[a] = neighbours[b] = None
        neighbours[new] = around
        if around:
            for r in around:
                ring = neighbours[r]
                ring.discard(a)  # type: ignore[union-attr]
                ring.discard(b)  # type: ignore[union-attr]
                ring.add(new)  # type: ignore[union-attr]
            others = np.fromiter(around, dtype=np.int64, count=len(around))
            for s, r in zip((-similarity(new, others)).tolist(), others.tolist()):
                heapq.heappush(heap, (s, new, r))
        new += 1

    return Hierarchy(
        boxes=box[:new],
        merges=np.asarray(merges, dtype=np.int64).reshape(-1, 2),
        similarities=np.asarray(merge_similarity, dtype=np.float64),
        num_initial=n,
    )
