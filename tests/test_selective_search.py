"""Tests of the selective search plugin against hand-computed fixtures and slow references."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from detkit_selective_search import (
    SelectiveSearch,
    cached_selective_search,
    features,
    make_cache,
    make_config,
    selective_search,
)
from detkit_selective_search.features import (
    COLOUR_BINS,
    TEXTURE_BINS,
    adjacency,
    colour_histograms,
    oriented_responses,
    region_boxes,
    region_sizes,
    segmentation_boxes,
    segmentation_sizes,
    texture_bin_scales,
    texture_codes,
    texture_histograms,
)
from detkit_selective_search.grouping import (
    RegionGraph,
    Strategy,
    hierarchical_grouping,
    hierarchical_groupings,
    similarity_fill,
    similarity_histogram,
    similarity_size,
    strategy_histograms,
    union_box_area,
)
from detkit_selective_search.search import first_occurrences, rank_boxes, run_search
from detkit_selective_search.segmentation import (
    Segmentation,
    convert_colour,
    nearest_map,
    prepare_segmentation,
    segment,
    segment_at_scale,
)
from detkit_selective_search.suppression import greedy_nms_keep, overlapping_pairs
from skimage.segmentation import felzenszwalb

from detkit.ops import nms
from detkit.plugins import load_plugins
from detkit.stages.preprocess import ResizeNormalize
from detkit.structures import ImageBatch

# ----------------------------------------------------------------------------- segmentation


def _quadrants() -> np.ndarray:
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[:20, :20] = (200, 30, 30)
    image[:20, 20:] = (30, 200, 30)
    image[20:, :20] = (30, 30, 200)
    image[20:, 20:] = (220, 220, 40)
    return image


def test_segment_flat_quadrants() -> None:
    labels = segment(_quadrants(), k=50, sigma=0.8, min_size=60)
    assert labels.max() + 1 == 4
    quads = [labels[:20, :20], labels[:20, 20:], labels[20:, :20], labels[20:, 20:]]
    assert all((q == q[0, 0]).all() for q in quads)
    assert len({int(q[0, 0]) for q in quads}) == 4


def test_segment_noisy_flat_image_is_one_region() -> None:
    rng = np.random.default_rng(0)
    image = np.clip(128 + rng.integers(-3, 4, size=(30, 40, 3)), 0, 255).astype(np.uint8)
    assert segment(image, k=100, sigma=0.8, min_size=20).max() == 0


def test_segment_at_half_scale_keeps_quadrants_and_compact_labels() -> None:
    labels = segment_at_scale(_quadrants(), k=50, sigma=0.8, min_size=60, scale=0.5)
    assert labels.shape == (40, 40)
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))  # compact 0..n-1
    interiors = [labels[2:14, 2:14], labels[2:14, 26:38], labels[26:38, 2:14], labels[26:38, 26:38]]
    assert all((q == q[0, 0]).all() for q in interiors)
    assert len({int(q[0, 0]) for q in interiors}) == 4


def _photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour blobs with noise: segments of many sizes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3)).astype(np.float32)
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR) + rng.normal(0, 6, size=(h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape,scale,channels", [((37, 51), 0.5, 3), ((40, 40), 1.0, 3), ((45, 29), 0.4, 1)])
def test_prepared_segmentation_is_felzenszwalb_of_the_resized_image(shape, scale, channels) -> None:
    # the slow path: felzenszwalb smoothing the resized uint8 image itself, labels enlarged by cv2
    image = _photo_like(*shape, seed=4)[:, :, :channels]
    h, w = shape
    prepared = prepare_segmentation(image, sigma=0.8, scale=scale)
    small_w, small_h = (max(1, round(w * scale)), max(1, round(h * scale))) if scale < 1 else (w, h)
    small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA).reshape(small_h, small_w, -1)
    area = small_w * small_h / (w * h)
    for k in (50.0, 150.0, 400.0):
        ref = felzenszwalb(small, scale=k * area, sigma=0.8, min_size=max(1, round(20 * area)), channel_axis=-1)
        ref = cv2.resize(ref.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
        found = prepared.segment(k=k, min_size=20)
        assert np.array_equal(found.full_labels(), ref)
        assert np.array_equal(found.labels[found.rows][:, found.cols], ref)
        assert np.array_equal(np.unique(ref), np.arange(found.num_regions))  # enlarging keeps every label


@pytest.mark.parametrize("size,new_size", [(5, 5), (5, 9), (7, 13), (1, 4), (64, 127), (213, 427)])
def test_nearest_map_is_cv2_nearest_enlargement(size, new_size) -> None:
    rng = np.random.default_rng(size)
    grid = rng.integers(0, 1000, size=(size, size + 3)).astype(np.int32)
    rows, cols = nearest_map(size, new_size), nearest_map(size + 3, new_size + 5)
    big = cv2.resize(grid, (new_size + 5, new_size), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(grid[rows][:, cols], big)
    assert (np.diff(rows) >= 0).all() and np.array_equal(np.unique(rows), np.arange(size))


@pytest.mark.parametrize("seed", range(4))
def test_sizes_boxes_adjacency_on_the_grid_equal_those_of_the_full_labels(seed) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(3, 14, size=2)
    n = int(rng.integers(1, 7))
    grid = rng.integers(0, n, size=(h, w)).astype(np.int32)
    grid[0, :n] = np.arange(n)[: min(n, w)] if n <= w else grid[0, :n]
    grid = np.unique(grid, return_inverse=True)[1].reshape(h, w).astype(np.int32)  # compact
    big_h, big_w = int(h + rng.integers(0, 20)), int(w + rng.integers(0, 20))
    seg = Segmentation(labels=grid, rows=nearest_map(int(h), big_h), cols=nearest_map(int(w), big_w))
    full = seg.full_labels()
    assert full.shape == (big_h, big_w)
    assert np.array_equal(segmentation_sizes(seg), region_sizes(full, seg.num_regions))
    assert np.array_equal(segmentation_boxes(seg), region_boxes(full, seg.num_regions))
    assert np.array_equal(adjacency(grid), adjacency(full))


@pytest.mark.parametrize("space,channels", [("rgb", 3), ("hsv", 3), ("lab", 3), ("I", 1), ("h", 1), ("rgI", 3)])
def test_colour_spaces_are_uint8(space: str, channels: int) -> None:
    out = convert_colour(_quadrants(), space)
    assert out.dtype == np.uint8 and out.shape == (40, 40, channels)


# ----------------------------------------------------------------------------- features


def _random_labels(h: int = 12, w: int = 15, n: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n, size=(h, w))
    labels[0, :n] = np.arange(n)  # every label present
    return labels.astype(np.int32)


def test_sizes_boxes_against_per_region_reference() -> None:
    labels = _random_labels()
    n = 5
    sizes, boxes = region_sizes(labels, n), region_boxes(labels, n)
    for r in range(n):
        ys, xs = np.nonzero(labels == r)
        assert sizes[r] == len(xs)
        assert boxes[r].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_colour_histograms_against_per_region_reference() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(12, 15, 3), dtype=np.uint8)
    labels = _random_labels()
    hist = colour_histograms(image, labels, 5)
    assert hist.shape == (5, 3 * COLOUR_BINS)
    for r in range(5):
        pixels = image[labels == r]
        ref = np.concatenate([np.histogram(pixels[:, c], bins=COLOUR_BINS, range=(0, 256))[0] for c in range(3)])
        np.testing.assert_allclose(hist[r], ref / ref.sum(), atol=1e-6)


def test_texture_histograms_against_per_region_reference() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(12, 15, 3), dtype=np.uint8)
    labels = _random_labels()
    hist = texture_histograms(texture_codes(image), labels, 5)
    responses = oriented_responses(image).reshape(12 * 15, 3 * 8)
    peak = responses.max(axis=0)
    assert hist.shape == (5, 3 * 8 * TEXTURE_BINS)
    for r in range(5):
        mine = responses[labels.ravel() == r]
        ref = []
        for m in range(mine.shape[1]):
            bins = np.minimum((mine[:, m] / peak[m] * TEXTURE_BINS).astype(int), TEXTURE_BINS - 1)
            ref.append(np.bincount(bins, minlength=TEXTURE_BINS))
        ref_hist = np.concatenate(ref).astype(np.float64)
        np.testing.assert_allclose(hist[r], ref_hist / ref_hist.sum(), atol=1e-6)


def _texture_codes_reference(image: np.ndarray) -> set[tuple[int, int]]:
    """(pixel, code) of every bin above 0, binned from the full (H, W, C, 8) response array."""
    responses = oriented_responses(image)
    h, w, c, o = responses.shape
    flat = responses.reshape(h * w, c * o)
    bins = np.minimum((flat * texture_bin_scales(flat.max(axis=0))).astype(np.int32), TEXTURE_BINS - 1)
    pixel, map_index = np.nonzero(bins)
    return set(zip(pixel.tolist(), (map_index * TEXTURE_BINS + bins[pixel, map_index]).tolist()))


@pytest.mark.parametrize("shape", [(12, 15, 3), (31, 20, 1), (9, 40, 3), (16, 16, 2)])
def test_texture_codes_match_the_dense_reference(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    for image in (rng.integers(0, 256, size=shape, dtype=np.uint8), _photo_like(*shape[:2], seed=1)[:, :, : shape[2]]):
        codes = texture_codes(image)
        assert codes.num_channels == shape[2]
        assert set(zip(codes.pixel.tolist(), codes.code.tolist())) == _texture_codes_reference(image)
        assert len(codes.pixel) == len(_texture_codes_reference(image))  # no pixel counted twice
    flat = np.full(shape, 77, dtype=np.uint8)  # responses of float rounding only, the same everywhere
    codes = texture_codes(flat)
    assert set(zip(codes.pixel.tolist(), codes.code.tolist())) == _texture_codes_reference(flat)
    zero = np.zeros(shape, dtype=np.uint8)  # no response anywhere: every peak is 0
    assert len(texture_codes(zero).pixel) == 0 == len(_texture_codes_reference(zero))


def test_oriented_responses_steer_with_the_gradient() -> None:
    # a ramp increasing along x: only the 0 degree (and 45/315 partly) responses, none at 180
    image = np.tile(np.arange(0, 200, 10, dtype=np.uint8), (20, 1))[:, :, None]
    resp = oriented_responses(image)[5:-5, 5:-5, 0]  # (h, w, 8), away from the borders
    assert (resp[..., 0] > 0).all() and np.allclose(resp[..., 4], 0)
    assert np.allclose(resp[..., 2], 0, atol=1e-4)  # 90 degrees: no vertical change


@pytest.mark.parametrize("dense", [True, False])
def test_adjacency_against_pixel_loop(dense: bool, monkeypatch) -> None:
    if not dense:  # the sorting path of many labels
        monkeypatch.setattr(features, "_DENSE_PAIR_KEYS", 0)
    labels = _random_labels(9, 11, 6, seed=3)
    ref = set()
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0)):
                if y + dy < h and x + dx < w and labels[y, x] != labels[y + dy, x + dx]:
                    a, b = sorted((int(labels[y, x]), int(labels[y + dy, x + dx])))
                    ref.add((a, b))
    assert {tuple(p) for p in adjacency(labels).tolist()} == ref


# ----------------------------------------------------------------------------- similarities


def test_similarity_measures_by_formula() -> None:
    a = np.array([0.5, 0.25, 0.25, 0.0])
    b = np.array([0.1, 0.6, 0.0, 0.3])
    assert similarity_histogram(a, b) == pytest.approx(0.1 + 0.25 + 0.0 + 0.0)
    assert similarity_size(30, 50, 400) == pytest.approx(1 - 80 / 400)
    box_a, box_b = np.array([0, 0, 4, 5]), np.array([6, 2, 10, 8])  # union box 10 x 8
    assert similarity_fill(box_a, box_b, 20, 24, 400) == pytest.approx(1 - (80 - 20 - 24) / 400)


def test_strategy_parse() -> None:
    assert Strategy.parse("ctsf") == Strategy(colour=True, texture=True, size=True, fill=True)
    assert str(Strategy.parse("f+s")) == "sf" and Strategy.parse("tsf").num_terms == 3
    with pytest.raises(ValueError, match="bad similarity strategy"):
        Strategy.parse("cx")


# ----------------------------------------------------------------------------- grouping


def _strips() -> np.ndarray:
    # four vertical strips of widths 1, 2, 3, 4 (sizes 2, 4, 6, 8 in a 2 x 10 image)
    return np.repeat(np.array([[0, 1, 1, 2, 2, 2, 3, 3, 3, 3]]), 2, axis=0).astype(np.int32)


def test_grouping_by_size_follows_hand_computed_order() -> None:
    labels = _strips()
    n = 4
    hier = hierarchical_grouping(
        region_sizes(labels, n), region_boxes(labels, n), adjacency(labels), Strategy.parse("s"), image_size=20
    )
    # s_size: (0,1) 0.7 > (1,2) 0.5 > (2,3) 0.3; then {01}=4 with 2: 1 - 12/20 = 0.4 > 0.3; then 5 with 3
    assert [sorted(m) for m in hier.merges.tolist()] == [[0, 1], [2, 4], [3, 5]]
    np.testing.assert_allclose(hier.similarities, [0.7, 0.4, 0.0])
    assert hier.boxes.shape == (2 * n - 1, 4)
    assert hier.boxes[-1].tolist() == [0, 0, 10, 2]  # the last region is the whole image
    assert hier.positions().tolist() == [7, 6, 5, 4, 3, 2, 1]


def test_grouping_by_colour_merges_most_similar_first_with_weighted_histograms() -> None:
    labels = _strips()
    n = 4
    colour = np.array([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.0, 0.5, 0.5], [0.0, 0.1, 0.9]], dtype=np.float32)
    hier = hierarchical_grouping(
        region_sizes(labels, n),
        region_boxes(labels, n),
        adjacency(labels),
        Strategy.parse("c"),
        image_size=20,
        colour_hist=colour,
    )
    # pairs: (0,1) 0.6, (1,2) 0.4, (2,3) 0.6 -> tie, then the other 0.6 pair
    first_two = {tuple(sorted(m)) for m in hier.merges[:2].tolist()}
    assert first_two == {(0, 1), (2, 3)}
    # the merged histograms are size-weighted: {0,1} = (2*h0 + 4*h1) / 6, {2,3} = (6*h2 + 8*h3) / 14
    h01 = (2 * colour[0] + 4 * colour[1]) / 6
    h23 = (6 * colour[2] + 8 * colour[3]) / 14
    assert hier.similarities[2] == pytest.approx(np.minimum(h01, h23).sum(), abs=1e-6)


def test_grouping_single_region_and_no_regions() -> None:
    one = hierarchical_grouping(
        np.array([9]), np.array([[0, 0, 3, 3]]), np.zeros((0, 2)), Strategy.parse("sf"), image_size=9
    )
    assert one.boxes.tolist() == [[0, 0, 3, 3]] and len(one.merges) == 0


def _grouping_reference(graph: RegionGraph, image_size: float) -> tuple[list, list, list]:
    """Merges, similarities and boxes of one grouping: a heap, numpy similarities for each merge."""
    import heapq

    n = len(graph.sizes)
    hist = strategy_histograms(graph.colour_hist, graph.texture_hist, graph.strategy)
    hists = {} if hist is None else dict(enumerate(hist))
    size = dict(enumerate(np.asarray(graph.sizes, dtype=np.float64).tolist()))
    box = dict(enumerate(np.asarray(graph.boxes, dtype=np.float64)))
    st = graph.strategy

    def similarity(i: int, j: int) -> float:
        total = np.zeros(1)
        if hist is not None:
            total += np.minimum(hists[i][None], hists[j][None]).sum(axis=-1)
        both = np.float64(size[i] + size[j])
        if st.size:
            total += 1.0 - both / image_size
        if st.fill:
            total += 1.0 - (union_box_area(box[i], box[j]) - both) / image_size
        return float(total[0] * (1.0 / st.num_terms))

    neighbours = {i: set() for i in range(n)}
    for a, b in graph.pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    heap = [(-similarity(a, b), a, b) for a, b in graph.pairs.tolist()]
    heapq.heapify(heap)
    merges, sims, new = [], [], n
    while heap:
        neg, a, b = heapq.heappop(heap)
        if a not in neighbours or b not in neighbours:
            continue
        merges.append([a, b])
        sims.append(-neg)
        size[new] = size[a] + size[b]
        if hist is not None:
            hists[new] = ((hists[a] * np.float64(size[a]) + hists[b] * np.float64(size[b])) / size[new]).astype(
                np.float32
            )
        box[new] = np.concatenate([np.minimum(box[a][:2], box[b][:2]), np.maximum(box[a][2:], box[b][2:])])
        around = (neighbours.pop(a) | neighbours.pop(b)) - {a, b}
        for r in around:
            neighbours[r] -= {a, b}
            neighbours[r].add(new)
        neighbours[new] = around
        for r in around:
            heapq.heappush(heap, (-similarity(new, r), new, r))
        new += 1
    return merges, sims, [box[i].tolist() for i in range(new)]


def _random_graph(seed: int, strategy: str) -> RegionGraph:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(6, 20, size=2)
    labels = segment(_photo_like(int(h) * 3, int(w) * 3, seed), k=float(rng.uniform(5, 60)), min_size=3)
    n = int(labels.max()) + 1
    colour = colour_histograms(_photo_like(int(h) * 3, int(w) * 3, seed), labels, n)
    texture = texture_histograms(texture_codes(_photo_like(int(h) * 3, int(w) * 3, seed + 1)), labels, n)
    if seed % 2:  # coarse histograms give exact ties between pairs
        colour = np.round(colour * 4) / 4
    return RegionGraph(
        region_sizes(labels, n), region_boxes(labels, n), adjacency(labels), Strategy.parse(strategy), colour, texture
    )


def test_groupings_stepped_together_equal_a_reference_one_at_a_time() -> None:
    graphs = [_random_graph(seed, strategy) for seed in range(6) for strategy in ("ctsf", "tsf", "sf", "c", "f", "ts")]
    isolated = _random_graph(3, "ctsf")  # region 0 touches nothing: the hierarchy ends with two regions
    graphs.append(replace(isolated, pairs=isolated.pairs[(isolated.pairs != 0).all(axis=1)]))
    image_size = 1234.0
    together = hierarchical_groupings(graphs, image_size=image_size)
    assert len(together) == len(graphs)
    assert any(len(g.sizes) > 20 for g in graphs)
    for graph, hierarchy in zip(graphs, together):
        merges, sims, boxes = _grouping_reference(graph, image_size)
        assert hierarchy.merges.tolist() == merges
        assert hierarchy.similarities.tolist() == sims  # exactly: the same float operations
        assert hierarchy.boxes.tolist() == boxes
        alone = hierarchical_grouping(
            graph.sizes,
            graph.boxes,
            graph.pairs,
            graph.strategy,
            image_size=image_size,
            colour_hist=graph.colour_hist,
            texture_hist=graph.texture_hist,
        )
        assert np.array_equal(alone.merges, hierarchy.merges) and np.array_equal(alone.boxes, hierarchy.boxes)
    assert hierarchical_groupings([], image_size=10.0) == []


# ----------------------------------------------------------------------------- ranking


def test_rank_boxes_seeded_dedup_min_size_and_cap() -> None:
    boxes = [np.array([[0, 0, 10, 10], [0, 0, 5, 5], [0, 0, 2, 8]]), np.array([[0, 0, 10, 10], [1, 1, 9, 9]])]
    positions = [np.array([3.0, 2.0, 1.0]), np.array([2.0, 1.0])]
    a = rank_boxes(boxes, positions, seed=3)
    assert np.array_equal(a, rank_boxes(boxes, positions, seed=3))
    assert len(a) == 4  # the duplicate [0, 0, 10, 10] kept once
    assert len({tuple(b) for b in a.tolist()}) == 4
    orders = {tuple(map(tuple, rank_boxes(boxes, positions, seed=s).tolist())) for s in range(20)}
    assert len(orders) > 1  # the ranking is randomized across seeds
    small = rank_boxes(boxes, positions, seed=3, min_box_size=4)
    assert [0, 0, 2, 8] not in small.tolist() and len(small) == 3
    assert np.array_equal(rank_boxes(boxes, positions, seed=3, max_proposals=2), a[:2])


def test_rank_boxes_dedup_keeps_best_rank() -> None:
    # the top region (position 1 -> value < 1) is always ahead of a position-1000 copy drawn high
    boxes = [np.array([[0, 0, 4, 4]] + [[0, 0, 4 + i, 4] for i in range(1, 50)])]
    positions = [np.arange(1, 51, dtype=float)]
    ranked = rank_boxes(boxes, positions, seed=0)
    assert len(ranked) == 50 and ranked.dtype == np.float32


def _greedy_nms_reference(boxes: np.ndarray, threshold: float) -> list[int]:
    """Slow greedy suppression in rank order: keep a box unless it overlaps a kept one by more."""
    kept: list[int] = []
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        suppressed = False
        for j in kept:
            a0, b0, a1, b1 = boxes[j].tolist()
            inter = max(0.0, min(x1, a1) - max(x0, a0)) * max(0.0, min(y1, b1) - max(y0, b0))
            union = (x1 - x0) * (y1 - y0) + (a1 - a0) * (b1 - b0) - inter
            suppressed = suppressed or inter / union > threshold
        if not suppressed:
            kept.append(i)
    return kept


def test_rank_boxes_demotes_near_duplicates_hand_case() -> None:
    # IoU([0,0,10,10], [0,0,10,9]) = 0.9, with [0,0,10,5] = 0.5, [20,20,30,30] disjoint
    boxes = [np.array([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 5], [20, 20, 30, 30]])]
    positions = [np.array([1.0, 2.0, 3.0, 4.0])]
    everything = rank_boxes(boxes, positions, seed=0)
    assert len(everything) == 4
    assert np.array_equal(rank_boxes(boxes, positions, seed=0, nms_iou=0.95), everything)  # 0.9 <= 0.95
    reordered = rank_boxes(boxes, positions, seed=0, nms_iou=0.7).tolist()
    pair = [b for b in everything.tolist() if b in ([0, 0, 10, 10], [0, 0, 10, 9])]
    # IoU 0.9 > 0.7: the worse-ranked of the pair goes last; IoU 0.5, 0.56 and 0 keep their places
    assert reordered == [b for b in everything.tolist() if b != pair[1]] + [pair[1]]


def test_rank_boxes_demotes_near_duplicates_like_a_slow_reference() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, size=(300, 2))
    wh = rng.uniform(5, 40, size=(300, 2))
    boxes = np.round(np.concatenate([xy, xy + wh], axis=1))
    boxes = np.concatenate([boxes, boxes[:100] + rng.integers(-1, 2, size=(100, 4))])  # near-duplicates
    positions = rng.uniform(1, 100, size=400)
    ranked = rank_boxes([boxes], [positions], seed=4)
    for threshold in (0.5, 0.7, 0.9):
        kept = _greedy_nms_reference(ranked.astype(np.float64), threshold)
        expected = np.concatenate([ranked[kept], np.delete(ranked, kept, axis=0)])
        reordered = rank_boxes([boxes], [positions], seed=4, nms_iou=threshold)
        assert 0 < len(kept) < len(ranked) and np.array_equal(reordered, expected)
        capped = rank_boxes([boxes], [positions], seed=4, nms_iou=threshold, max_proposals=7)
        assert np.array_equal(capped, reordered[:7])


def _near_duplicate_boxes(seed: int, count: int = 400) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 200, size=(count, 2))
    wh = np.exp(rng.uniform(0, np.log(150), size=(count, 2))).round() + 1
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float64)
    jitter = boxes[: count // 2] + rng.integers(-3, 4, size=(count // 2, 4))
    jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
    # [0, 0, 10, 10] and [0, 0, 10, 7] overlap by exactly 0.7
    exact = np.array([[0, 0, 10, 10], [0, 0, 10, 7], [300, 300, 310, 310], [300, 300, 307, 310]], dtype=np.float64)
    return np.concatenate([boxes, jitter, exact])


@pytest.mark.parametrize("threshold", [0.5, 0.6, 0.7, 0.8, 0.95])
def test_sparse_nms_keeps_what_torchvision_nms_keeps(threshold: float) -> None:
    for seed in range(3):
        boxes = _near_duplicate_boxes(seed)
        scores = torch.arange(len(boxes), 0, -1, dtype=torch.float32)
        ref = np.zeros(len(boxes), dtype=bool)
        ref[nms(torch.from_numpy(boxes.astype(np.float32)), scores, threshold).numpy()] = True
        keep = greedy_nms_keep(boxes, threshold)
        assert 0 < ref.sum() < len(boxes) and np.array_equal(keep, ref)
        # the pairs against every pair, with torchvision's float32 IoU
        b = torch.from_numpy(boxes.astype(np.float32))
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        lt, rb = torch.maximum(b[:, None, :2], b[None, :, :2]), torch.minimum(b[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)
        iou = (inter / (area[:, None] + area[None, :] - inter)).double().numpy()
        expected = np.argwhere(np.triu(iou > threshold, k=1))
        found = overlapping_pairs(boxes, threshold)
        assert sorted(map(tuple, found.tolist())) == sorted(map(tuple, expected.tolist()))


def test_greedy_nms_keep_falls_back_to_torchvision() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [5, 5, 5, 9], [0, 0, 9, 10]], dtype=np.float64)
    for threshold in (0.3, 0.7):  # a low threshold, and a box of no width
        ref = np.zeros(len(boxes), dtype=bool)
        ref[nms(torch.from_numpy(boxes.astype(np.float32)), torch.arange(4.0, 0, -1), threshold).numpy()] = True
        assert np.array_equal(greedy_nms_keep(boxes, threshold), ref)
    assert greedy_nms_keep(np.zeros((0, 4)), 0.7).shape == (0,)


def test_first_occurrences_against_unique_rows() -> None:
    rng = np.random.default_rng(5)
    boxes = rng.integers(0, 6, size=(500, 4)).astype(np.float64)
    for b in (boxes, boxes + 0.5, boxes - 3, np.zeros((0, 4))):
        _, first = np.unique(b, axis=0, return_index=True)
        assert np.array_equal(first_occurrences(b), np.sort(first))


def test_selective_search_deterministic_and_empty() -> None:
    image = _scene()
    a = selective_search(image, preset="single", seed=1)
    assert np.array_equal(a, selective_search(image, preset="single", seed=1))
    assert a.dtype == np.float32 and a.shape[1] == 4
    assert len(selective_search(image, preset="single", max_proposals=5)) == 5
    assert run_search(np.zeros((0, 5, 3), np.uint8), make_config("single")).shape == (0, 4)
    with pytest.raises(ValueError, match="uint8 RGB"):
        selective_search(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="unknown selective search preset"):
        make_config("slow")
    with pytest.raises(ValueError, match="nms_iou"):
        make_config("fast", nms_iou=0.0)


def test_presets_mirror_opencv() -> None:
    fast = make_config("fast")
    assert fast.colour_spaces == ("hsv", "lab") and fast.ks == (150, 300, 450) and fast.sigma == 0.8
    assert fast.strategies == ("ctsf", "tsf") and fast.min_size == 100
    quality = make_config("quality")
    assert quality.colour_spaces == ("hsv", "lab", "gray", "h", "rgi")
    assert quality.ks == (150, 300, 450, 600, 750) and quality.strategies == ("ctsf", "tsf", "f", "s")
    single = make_config("single")
    assert single.colour_spaces == ("hsv",) and single.ks == (200,) and single.strategies == ("ctsf",)
    assert fast.nms_iou == quality.nms_iou == single.nms_iou == 0.7
    assert make_config("fast", nms_iou=1.0).settings()["nms_iou"] == 1.0  # a setting: it keys the cache


# ----------------------------------------------------------------------------- recall sanity


def _scene() -> tuple[np.ndarray, list[list[int]]] | np.ndarray:
    return _scene_with_objects()[0]


def _scene_with_objects() -> tuple[np.ndarray, list[list[int]]]:
    rng = np.random.default_rng(0)
    h, w = 96, 128
    # a smooth gradient background with mild noise
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([60 + xx * 0.3, 90 + yy * 0.2, np.full((h, w), 110.0)], axis=-1)
    image = np.clip(image + rng.normal(0, 2, size=image.shape), 0, 255)
    objects = [[8, 10, 40, 50], [60, 8, 110, 36], [70, 50, 118, 90]]
    colours = [(220, 40, 40), (40, 200, 60), (240, 230, 60)]
    for (x0, y0, x1, y1), colour in zip(objects, colours):
        image[y0:y1, x0:x1] = colour
    return image.astype(np.uint8), objects


def test_recall_on_synthetic_objects() -> None:
    image, objects = _scene_with_objects()
    boxes = selective_search(image, preset="fast")
    gt = np.array(objects, dtype=np.float64)
    lt = np.maximum(gt[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(gt[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    iou = inter / (area(gt)[:, None] + area(boxes)[None, :] - inter)
    assert (iou.max(axis=1) >= 0.7).all()


# ----------------------------------------------------------------------------- proposer


def test_registered() -> None:
    plugins = load_plugins(["detkit_selective_search"], autoload=False)
    assert plugins.registry.get("proposer", "selective_search").factory is SelectiveSearch


def _batch() -> ImageBatch:
    image, _ = _scene_with_objects()
    first = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    second = torch.from_numpy(np.ascontiguousarray(image[:70, :50])).permute(2, 0, 1).float() / 255
    preprocess = ResizeNormalize(min_size=64, max_size=100, size_divisible=32).eval()
    batch, _ = preprocess([first, second])
    return batch


def test_proposer_batch_boxes_inside_images_and_cache(tmp_path) -> None:
    batch = _batch()
    assert batch.image_sizes[0] != batch.image_sizes[1]
    proposer = SelectiveSearch(preset="single", max_proposals=50, cache_dir=str(tmp_path))
    assert proposer.needs_features is False
    proposals, losses = proposer(batch, None)
    assert losses == {} and len(proposals) == 2
    for p, (h, w) in zip(proposals, batch.image_sizes):
        assert 0 < len(p) <= 50
        assert (p.boxes[:, 0] >= 0).all() and (p.boxes[:, 1] >= 0).all()
        assert (p.boxes[:, 2] <= w).all() and (p.boxes[:, 3] <= h).all()
        assert (p.boxes[:, 2] > p.boxes[:, 0]).all() and (p.boxes[:, 3] > p.boxes[:, 1]).all()
        assert p.objectness[0] == 1.0 and (p.objectness > 0).all() and (p.objectness.diff() < 0).all()
    assert proposer.cache is not None and proposer.cache.misses == 2 and proposer.cache.hits == 0
    with pytest.MonkeyPatch.context() as mp:  # hits never convert the pixels
        mp.setattr(ImageBatch, "rgb_uint8", lambda *_: pytest.fail("pixels read on a cache hit"))
        again, _ = proposer(batch, None)
    assert proposer.cache.hits == 2
    assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(proposals, again))
    # a second proposer with the same settings reads the same entries; another seed misses
    same = SelectiveSearch(preset="single", max_proposals=50, cache_dir=str(tmp_path))
    same(batch, None)
    assert same.cache is not None and same.cache.hits == 2
    other = SelectiveSearch(preset="single", max_proposals=50, seed=1, cache_dir=str(tmp_path))
    other(batch, None)
    assert other.cache is not None and other.cache.misses == 2 and other.cache.hits == 0


def test_proposer_without_cache_workers_and_empty_batch(tmp_path) -> None:
    batch = _batch()
    proposer = SelectiveSearch(preset="single", max_proposals=20, cache=False, workers=2)
    assert proposer.cache is None
    threaded, _ = proposer(batch, None)
    sequential, _ = SelectiveSearch(preset="single", max_proposals=20, cache=False)(batch, None)
    assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(threaded, sequential))
    empty = ImageBatch(torch.zeros(0, 3, 32, 32), [], [])
    assert proposer(empty, None) == ([], {})
    with pytest.raises(ValueError, match="workers"):
        SelectiveSearch(workers=-1)


def test_cached_selective_search_of_a_numpy_image(tmp_path) -> None:
    image, _ = _scene_with_objects()
    config = make_config("single", max_proposals=30)
    cache = make_cache(config, tmp_path)
    first = cached_selective_search(image, config, cache=cache)
    np.testing.assert_array_equal(first, run_search(image, config))
    np.testing.assert_array_equal(cached_selective_search(image, config, cache=cache), first)
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(cached_selective_search(image, config), first)  # no cache
