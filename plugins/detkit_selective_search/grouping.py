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
anew. A heap with lazy deletion holds every live region's best pair (most
similar; ties go to the smaller indices); entries that mention a region already
merged are dropped when they surface.

Selective search runs a dozen groupings per image (colour spaces x ``k`` x
strategies), each a few hundred merges of a few neighbours, too small for numpy
to pay off one merge at a time. :func:`hierarchical_groupings` therefore steps
all of them together: at each step every unfinished grouping pops its best pair
and updates its neighbour sets in Python, then one batch of numpy calls does the
merges of all of them (sizes, boxes, histograms) and scores every new pair.
Each grouping's merges are exactly those of running it alone: the batch applies
the same float64 operations, element by element, as :func:`pair_similarities`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from itertools import chain
from typing import Any

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


def pair_similarities(
    hist: np.ndarray | None,
    sizes: np.ndarray,
    boxes: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    strategy: Strategy,
    image_size: float,
) -> np.ndarray:
    """``(E,)`` float64 similarity of regions ``i[e]`` and ``j[e]``: the strategy's terms, averaged.

    Args:
        hist: ``(m, D)`` the histograms the strategy compares (:func:`strategy_histograms`), or ``None``.
        sizes: ``(m,)`` pixel counts.
        boxes: ``(m, 4)`` xyxy (exclusive ends).
        i, j: ``(E,)`` region indices.
        strategy: the similarity terms to use.
        image_size: pixels in the image.
    """
    total = np.zeros(len(j), dtype=np.float64)
    if hist is not None:
        total += np.minimum(hist[i], hist[j]).sum(axis=-1)
    if strategy.size or strategy.fill:
        both = sizes[i] + sizes[j]
        if strategy.size:
            total += 1.0 - both / image_size
        if strategy.fill:
            total += 1.0 - (union_box_area(boxes[i], boxes[j]) - both) / image_size
    return total * (1.0 / strategy.num_terms)


@dataclass(frozen=True)
class RegionGraph:
    """The initial regions of one grouping and the strategy that merges them.

    Attributes:
        sizes: ``(n,)`` pixel counts.
        boxes: ``(n, 4)`` xyxy (exclusive ends).
        pairs: ``(E, 2)`` adjacent region pairs.
        strategy: the similarity terms to use.
        colour_hist, texture_hist: ``(n, Dc)``, ``(n, Dt)`` L1-normalized, when the
            strategy uses them.
    """

    sizes: np.ndarray
    boxes: np.ndarray
    pairs: np.ndarray
    strategy: Strategy
    colour_hist: np.ndarray | None = None
    texture_hist: np.ndarray | None = None


#: The best pair of a region without neighbours (never in a heap).
_NO_PAIR: tuple[float, int, int] = (float("inf"), -1, -1)


class _Grouping:
    """The Python side of one grouping: its live regions, their pairs and a heap of candidate pairs.

    Its region ``i`` is row ``base + i`` of the :class:`_SharedRegions`. A pair is
    keyed ``(-similarity, i, j)`` (``i, j`` as the pair was made: the new region
    first), and the heap's order on keys is the grouping's order of merges. The
    heap holds, for every live region, the smallest key of its pairs (its best
    pair), pushed when it became the best; entries of merged regions are dropped
    when they surface. Every live pair's key is at least its regions' best key,
    so the first entry of two live regions is the next merge.
    """

    def __init__(self, graph: RegionGraph, initial: np.ndarray, base: int) -> None:
        n = int(graph.sizes.shape[0])
        m = max(2 * n - 1, 0)
        self.n, self.new, self.base = n, n, base
        pairs = np.asarray(graph.pairs, dtype=np.int64).reshape(-1, 2)
        self.pairs: list[dict[int, tuple[float, int, int]]] = [{} for _ in range(m)]
        for key in zip((-initial).tolist(), pairs[:, 0].tolist(), pairs[:, 1].tolist()):
            self.pairs[key[1]][key[2]] = key
            self.pairs[key[2]][key[1]] = key
        self.best = [min(d.values()) if d else _NO_PAIR for d in self.pairs]
        self.heap = [key for key in self.best if key is not _NO_PAIR]
        heapq.heapify(self.heap)
        self.alive = bytearray(m)
        self.alive[:n] = b"\x01" * n
        self.merges: list[tuple[int, int]] = []
        self.similarities: list[float] = []

    def pop_best(self) -> tuple[int, int] | None:
        """The most similar pair of live regions, recorded as the next merge; ``None`` when none is left."""
        heap, alive = self.heap, self.alive
        if self.new == len(alive):
            return None  # one region is left
        while heap:
            neg_sim, a, b = heapq.heappop(heap)
            if alive[a] and alive[b]:
                alive[a] = alive[b] = 0
                alive[self.new] = 1
                self.merges.append((a, b))
                self.similarities.append(-neg_sim)
                return a, b
        return None  # no pair of live regions is left

    def join_neighbours(self, a: int, b: int) -> list[int]:
        """The neighbours of ``a`` and ``b``, to become those of region ``new``."""
        around = self.pairs[a].keys() | self.pairs[b].keys()
        around.discard(a)
        around.discard(b)
        return list(around)

    def add_pairs(self, new: int, others: list[int], negated: list[float]) -> None:
        """Give region ``new`` (of the last merge) its pairs with ``others``, keyed ``-similarity`` ``negated``."""
        a, b = self.merges[-1]
        pairs, best, heap = self.pairs, self.best, self.heap
        pairs[a] = pairs[b] = {}
        mine = pairs[new]
        push = heapq.heappush
        gone = {a, b}
        for r, neg in zip(others, negated):
            key = (neg, new, r)
            mine[r] = key
            ring = pairs[r]
            if a in ring:
                del ring[a]
            if b in ring:
                del ring[b]
            ring[new] = key
            _, i, j = current = best[r]
            if i in gone or j in gone:  # its best pair is gone
                best[r] = current = min(ring.values())
                push(heap, current)
            elif key < current:
                best[r] = key
                push(heap, key)
        if mine:
            best[new] = current = min(mine.values())
            push(heap, current)


class _Step:
    """The merges of one step of every grouping, and the new region's neighbours in each."""

    def __init__(self) -> None:
        self.grouping: list[int] = []  # index of each merge's grouping, increasing
        self.new: list[int] = []  # the merged region and its two parts, as rows of the shared arrays
        self.a: list[int] = []
        self.b: list[int] = []
        self.neighbours: list[list[int]] = []  # the new region's neighbours, in the grouping's own indices

    def pairs(self, bases: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``owners, i, j``: the new pairs (new region ``i``, neighbour ``j``) as rows of the shared arrays."""
        counts = [len(others) for others in self.neighbours]
        owners = np.repeat(np.asarray(self.grouping, dtype=np.int64), counts)
        i = np.repeat(np.asarray(self.new, dtype=np.int64), counts)
        j = np.fromiter(chain.from_iterable(self.neighbours), dtype=np.int64, count=len(owners)) + bases[owners]
        return owners, i, j


class _SharedRegions:
    """Sizes, boxes and histograms of the regions of every grouping, one array each (per width for histograms).

    Region ``i`` of grouping ``g`` is row ``bases[g] + i``. The groupings come in
    order of histogram width, so those of one width own a block of consecutive rows,
    the block's first row being row 0 of that width's histogram array (``blocks``).
    A box is kept as ``x0, y0, -x1, -y1``: the box around two is their elementwise
    minimum.
    """

    def __init__(self, graphs: list[RegionGraph], hists: list[np.ndarray | None], image_size: float) -> None:
        widths = [0 if h is None else h.shape[1] for h in hists]
        if widths != sorted(widths):
            raise ValueError("the groupings must come in order of histogram width")
        slots = [max(2 * int(g.sizes.shape[0]) - 1, 0) for g in graphs]
        self.bases = np.concatenate([[0], np.cumsum(slots)]).astype(np.int64)
        self.size = np.zeros(int(self.bases[-1]), dtype=np.float64)
        self.box = np.zeros((int(self.bases[-1]), 4), dtype=np.float64)
        for g, base in zip(graphs, self.bases.tolist()):
            n = int(g.sizes.shape[0])
            self.size[base : base + n] = g.sizes
            self.box[base : base + n] = np.asarray(g.boxes, dtype=np.float64).reshape(-1, 4) * [1, 1, -1, -1]
        # (width, first grouping, grouping past the last, first row, histograms) of each width but 0
        self.blocks: list[tuple[int, int, int, int, np.ndarray]] = []
        for width in sorted(set(widths) - {0}):
            first, last = widths.index(width), len(widths) - widths[::-1].index(width)
            start, stop = int(self.bases[first]), int(self.bases[last])
            block = np.zeros((stop - start, width), dtype=np.float32)
            for index in range(first, last):
                hist = hists[index]
                assert hist is not None
                row = int(self.bases[index]) - start
                block[row : row + len(hist)] = hist
            self.blocks.append((width, first, last, start, block))
        self.use_size = _uniform_or_array([g.strategy.size for g in graphs])
        self.use_fill = _uniform_or_array([g.strategy.fill for g in graphs])
        self.inv_terms = _uniform_or_array([1.0 / g.strategy.num_terms for g in graphs])
        self.area = float(image_size)

    def boxes(self, grouping: int, count: int) -> np.ndarray:
        """``(count, 4)`` xyxy boxes of the first ``count`` regions of ``grouping``."""
        start = int(self.bases[grouping])
        return self.box[start : start + count] * [1, 1, -1, -1]

    def merge(self, step: _Step) -> None:
        """Sizes, boxes and size-weighted histograms of the regions merged at ``step``."""
        new, a, b = (np.asarray(rows, dtype=np.int64) for rows in (step.new, step.a, step.b))
        size, box = self.size, self.box
        sa, sb = size[a], size[b]
        size[new] = sa + sb
        box[new] = np.minimum(box[a], box[b])
        owners = np.asarray(step.grouping, dtype=np.int64)
        for _, first, last, start, hist in self.blocks:
            p0, p1 = np.searchsorted(owners, [first, last]).tolist()
            if p0 == p1:
                continue
            wa, wb = sa[p0:p1, None], sb[p0:p1, None]
            # the float32 rows are averaged in float64, then stored as float32
            hist[new[p0:p1] - start] = (hist[a[p0:p1] - start] * wa + hist[b[p0:p1] - start] * wb) / (wa + wb)

    def negated_similarities(self, owners: np.ndarray, i: np.ndarray, j: np.ndarray) -> list[float]:
        """``-similarity`` of regions ``i`` and ``j`` (rows, of groupings ``owners``, increasing), as heap keys.

        The float64 operations of :func:`pair_similarities`, element by element.
        """
        total = np.zeros(len(i), dtype=np.float64)
        for _, first, last, start, hist in self.blocks:
            p0, p1 = np.searchsorted(owners, [first, last]).tolist()
            if p0 < p1:
                total[p0:p1] = np.minimum(hist[i[p0:p1] - start], hist[j[p0:p1] - start]).sum(axis=-1)
        both = self.size[i] + self.size[j]
        # an unused term adds 0.0, which leaves the float64 sum unchanged
        if self.use_size is not False:
            total += _where(self.use_size, owners, 1.0 - both / self.area)
        if self.use_fill is not False:
            around = np.minimum(self.box[i], self.box[j])  # x0, y0, -x1, -y1 of the box around both
            union = (-around[:, 2] - around[:, 0]) * (-around[:, 3] - around[:, 1])
            total += _where(self.use_fill, owners, 1.0 - (union - both) / self.area)
        inv_terms = self.inv_terms if isinstance(self.inv_terms, float) else self.inv_terms[owners]
        return (-(total * inv_terms)).tolist()


def _uniform_or_array(values: list[Any]) -> Any:
    """The common value of ``values`` when they are all equal, else them as an array."""
    if values and all(v == values[0] for v in values):
        return values[0]
    return np.asarray(values)


def _where(use: bool | np.ndarray, owners: np.ndarray, term: np.ndarray) -> np.ndarray:
    """``term`` where the pair's grouping uses it, else 0.0."""
    return term if use is True else np.where(use[owners], term, 0.0)  # type: ignore[index]


def hierarchical_groupings(graphs: list[RegionGraph], *, image_size: float) -> list[Hierarchy]:
    """The hierarchies of :func:`hierarchical_grouping` for every graph of one image, stepped together.

    Args:
        graphs: the groupings to run (any strategies; histograms of any widths).
        image_size: pixels in the image (H * W).

    Returns:
        One :class:`Hierarchy` per graph, in order, each equal to running it alone.
    """
    hists = [strategy_histograms(g.colour_hist, g.texture_hist, g.strategy) for g in graphs]
    # the groupings of one histogram width side by side (see _SharedRegions)
    order = sorted(range(len(graphs)), key=lambda g: 0 if hists[g] is None else hists[g].shape[1])  # type: ignore[union-attr]
    graphs, hists = [graphs[g] for g in order], [hists[g] for g in order]
    regions = _SharedRegions(graphs, hists, image_size)
    groupings = []
    for g, hist, base in zip(graphs, hists, regions.bases.tolist()):
        pairs = np.asarray(g.pairs, dtype=np.int64).reshape(-1, 2)
        boxes = np.asarray(g.boxes, dtype=np.float64).reshape(-1, 4)
        initial = pair_similarities(
            hist, regions.size[base:], boxes, pairs[:, 0], pairs[:, 1], g.strategy, regions.area
        )
        groupings.append(_Grouping(g, initial, base))

    active = list(range(len(graphs)))
    while active:
        step = _Step()
        still = []
        for index in active:
            grouping = groupings[index]
            pair = grouping.pop_best()
            if pair is None:
                continue  # this grouping is done
            still.append(index)
            a, b = pair
            base = grouping.base
            step.grouping.append(index)
            step.new.append(base + grouping.new)
            step.a.append(base + a)
            step.b.append(base + b)
            step.neighbours.append(grouping.join_neighbours(a, b))
            grouping.new += 1
        active = still
        if not active:
            break
        regions.merge(step)
        keys = regions.negated_similarities(*step.pairs(regions.bases))
        start = 0
        for index, new, others in zip(step.grouping, step.new, step.neighbours):
            grouping, end = groupings[index], start + len(others)
            grouping.add_pairs(new - grouping.base, others, keys[start:end])
            start = end

    found = [
        Hierarchy(
            boxes=regions.boxes(index, g.new),
            merges=np.asarray(g.merges, dtype=np.int64).reshape(-1, 2),
            similarities=np.asarray(g.similarities, dtype=np.float64),
            num_initial=g.n,
        )
        for index, g in enumerate(groupings)
    ]
    position = {g: p for p, g in enumerate(order)}
    return [found[position[g]] for g in range(len(found))]


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

    Ties between equal similarities go to the smaller pair ``(i, j)``, ``i`` the
    pair's first region: the smaller index of an initial pair, the new region of a
    merge.

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
    graph = RegionGraph(sizes, boxes, pairs, strategy, colour_hist, texture_hist)
    return hierarchical_groupings([graph], image_size=image_size)[0]
