"""An on-disk cache of proposals per image, for proposers too slow to rerun every epoch.

Selective search takes a second or more per photo; R-CNN and Fast R-CNN train for
many epochs on the same images, so their proposals are computed once and read
back. An entry is keyed by the image's *content* (its resized RGB pixels, so a
flipped or rescaled copy is a different entry: :func:`batch_image_key` hashes the
image as given plus its resized size, because resampled pixels can differ in the
last bit between thread counts) and by the proposer's *settings*
(every parameter that changes the boxes, plus a version string), so changing a
setting never serves stale boxes. Layout::

    <root>/<name>-<settings hash>/settings.json     the settings, for people
    <root>/<name>-<settings hash>/<aa>/<content hash>.npy   (R, 4) float32 xyxy, ranked

Every file is written to a temporary name and renamed, so an interrupted run
leaves only complete entries; the whole folder is safe to delete at any time.
The default root is ``$DETKIT_CACHE/proposals`` or ``~/.cache/detkit/proposals``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.io import atomic_path, write_json
from detkit.structures import ImageBatch


def default_cache_root() -> Path:
    """``$DETKIT_CACHE/proposals``, else ``~/.cache/detkit/proposals``."""
    base = os.environ.get("DETKIT_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "detkit") / "proposals"


def settings_key(settings: Mapping[str, Any]) -> str:
    """A stable hash of JSON-serializable settings (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def image_key(image: np.ndarray, *extra: object) -> str:
    """A hash of an image's pixels, shape and dtype (and of ``extra`` values)."""
    data = np.ascontiguousarray(image)
    digest = hashlib.sha1(f"{data.shape}{data.dtype}{extra}".encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


def batch_image_key(images: ImageBatch, index: int) -> str:
    """The content key of image ``index`` of a batch as a proposer sees it.

    The image as given to the preprocessing and its resized size when the batch
    keeps the originals (exact whatever the thread count), else the resized pixels.
    """
    if images.originals is not None:
        original = images.originals[index].detach().to("cpu", torch.float32).numpy()
        return image_key(original, tuple(images.image_sizes[index]))
    return image_key(images.rgb_uint8(index))


class ProposalCache:
    """Boxes per image for one proposer configuration.

    Args:
        name: the proposer's name (the folder prefix, for people browsing the cache).
        settings: every parameter that changes the output (JSON-serializable).
        root: the cache root (default :func:`default_cache_root`).
    """

    def __init__(self, name: str, settings: Mapping[str, Any], root: str | os.PathLike[str] | None = None) -> None:
        self.settings = dict(settings)
        self.folder = Path(root if root is not None else default_cache_root()) / f"{name}-{settings_key(settings)}"
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached boxes of an image's ``key`` (:func:`image_key`, :func:`batch_image_key`),
        or ``None`` (an unreadable entry counts as missing)."""
        path = self._path(key)
        try:
            boxes = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            self.misses += 1
            return None
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            self.misses += 1
            return None
        self.hits += 1
        return boxes.astype(np.float32, copy=False)

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached boxes of ``key``; on a miss ``compute()`` them, store them and return them.

        ``compute`` runs only on a miss, so a proposer reads an image's pixels only
        when they are needed.
        """
        boxes = self.get(key)
        if boxes is None:
            boxes = np.asarray(compute(), dtype=np.float32).reshape(-1, 4)
            self.put(key, boxes)
        return boxes

    def put(self, key: str, boxes: np.ndarray) -> None:
        """Store ``boxes (R, 4)`` for the image of ``key`` (atomically)."""
        if not (self.folder / "settings.json").exists():
            write_json(self.folder / "settings.json", self.settings)
        with atomic_path(self._path(key)) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
