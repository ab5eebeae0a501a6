"""The ``selective_search`` proposer: selective search as a detkit pipeline stage.

Selective search reads raw pixels (no backbone features) and takes most of a second
per photo on one core, so the proposer reads and writes the on-disk
:class:`detkit_selective_search.cache.ProposalCache`, keyed by each image's content at
its resized size (:func:`detkit_selective_search.cache.batch_image_key`) and by every
setting that changes the boxes: training epochs after the first read their
proposals back, without converting the pixels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from detkit.stages import Proposer
from detkit.structures import FeatureMaps, ImageBatch, Proposals, Targets
from detkit_selective_search.cache import ProposalCache, batch_image_key, image_key
from detkit_selective_search.search import SearchConfig, make_config, run_search

CACHE_NAME = "selective_search"


def make_cache(config: SearchConfig, cache_dir: str | os.PathLike[str] | None = None) -> ProposalCache:
    """The proposal cache of ``config`` (its folder depends on every setting and the code version)."""
    return ProposalCache(name=CACHE_NAME, settings=config.settings(), root=cache_dir)


def cached_selective_search(
    image: np.ndarray,
    config: SearchConfig,
    *,
    cache: ProposalCache | None = None,
) -> np.ndarray:
    """Selective search of ``image (H, W, 3)`` uint8 RGB through ``cache`` (``None``: no cache).

    Build ``config`` with :func:`detkit_selective_search.make_config` and the cache
    with :func:`make_cache`; the entry is keyed by the image's pixels. Returns
    ``(R, 4)`` float32 xyxy, best first.
    """
    if cache is None:
        return run_search(image, config)
    return cache.get_or_compute(image_key(image), lambda: run_search(image, config))


def rank_scores(num: int) -> Tensor:
    """``(num,)`` decreasing scores in ``(0, 1]``: ``1, (R-1)/R, ..., 1/R``."""
    return torch.arange(num, 0, -1, dtype=torch.float32) / max(num, 1)


class SelectiveSearch(Proposer):
    """Selective search proposals, computed on each image's resized RGB pixels.

    Args:
        preset: ``single``, ``fast`` or ``quality`` (OpenCV ``ximgproc``'s presets).
        colour_spaces, ks, sigma, min_size, strategies: override the preset (see
            :func:`detkit_selective_search.make_config`).
        min_box_size: drop boxes with a side shorter than this (resized pixels).
        nms_iou: boxes whose IoU with a better-ranked kept box exceeds this
            move behind all others (default 0.7; 1.0: the paper's order).
        max_proposals: keep at most this many best-ranked boxes per image.
        seed: seed of the randomized ranking.
        segmentation_scale: resize factor for the graph segmentation (default 0.5).
        cache: read and write the on-disk proposal cache.
        cache_dir: the cache root (default ``$DETKIT_CACHE/proposals``).
        workers: threads across the images of a batch (0 or 1: sequential).
    """

    needs_features = False

    def __init__(
        self,
        *,
        preset: str = "fast",
        colour_spaces: Sequence[str] | None = None,
        ks: Sequence[float] | None = None,
        sigma: float | None = None,
        min_size: int | None = None,
        strategies: Sequence[str] | None = None,
        min_box_size: float = 0.0,
        nms_iou: float | None = None,
        max_proposals: int | None = 2000,
        seed: int = 0,
        segmentation_scale: float | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
        workers: int = 0,
    ) -> None:
        super().__init__()
        self.config = make_config(
            preset,
            colour_spaces=colour_spaces,
            ks=ks,
            sigma=sigma,
            min_size=min_size,
            strategies=strategies,
            min_box_size=min_box_size,
            nms_iou=nms_iou,
            max_proposals=max_proposals,
            seed=seed,
            segmentation_scale=segmentation_scale,
        )
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = int(workers)
        self.cache = make_cache(self.config, cache_dir) if cache else None

    def forward(
        self, images: ImageBatch, features: FeatureMaps | None, targets: list[Targets] | None = None
    ) -> tuple[list[Proposals], dict[str, Tensor]]:
        device = images.tensor.device
        boxes_per_image = self._map(lambda i: self._search(images, i), range(len(images)))
        proposals = [
            Proposals(boxes=torch.from_numpy(boxes).to(device), objectness=rank_scores(len(boxes)).to(device))
            for boxes in boxes_per_image
        ]
        return proposals, {}  # nothing to learn

    def _search(self, images: ImageBatch, index: int) -> np.ndarray:
        """Boxes of image ``index``: from the cache, else searched on its pixels (read only then)."""
        if self.cache is None:
            return run_search(images.rgb_uint8(index), self.config)
        return self.cache.get_or_compute(
            batch_image_key(images, index), lambda: run_search(images.rgb_uint8(index), self.config)
        )

    def _map(self, fn: Callable[[int], np.ndarray], indices: range) -> list[np.ndarray]:
        """``fn`` over the images, on ``workers`` threads when there are several."""
        if self.workers > 1 and len(indices) > 1:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(indices))) as pool:
                return list(pool.map(fn, indices))
        return [fn(i) for i in indices]

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"colour_spaces={list(c.colour_spaces)}, ks={list(c.ks)}, sigma={c.sigma}, "
            f"strategies={list(c.strategies)}, nms_iou={c.nms_iou}, max_proposals={c.max_proposals}"
        )
