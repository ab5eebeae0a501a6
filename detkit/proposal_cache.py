"""An on-disk cache of proposals per image, for proposers too slow to rerun every epoch.

Selective search takes a second or more per photo; R-CNN and Fast R-CNN train for
many epochs on the same images, so their proposals are computed once and read
back. An entry is keyed by the image's *content* (its resized RGB pixels, so a
flipped or rescaled copy is a different entry) and by the proposer's *settings*
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from detkit.io import atomic_path, write_json


def default_cache_root() -> Path:
    """``$DETKIT_CACHE/proposals``, else ``~/.cache/detkit/proposals``."""
    base = os.environ.get("DETKIT_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "detkit") / "proposals"


def settings_key(settings: Mapping[str, Any]) -> str:
    """A stable hash of JSON-serializable settings (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def image_key(image: np.ndarray) -> str:
    """A hash of an image's pixels, shape and dtype."""
    data = np.ascontiguousarray(image)
    digest = hashlib.sha1(f"{data.shape}{data.dtype}".encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


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

    def get(self, image: np.ndarray) -> np.ndarray | None:
        """The cached boxes of ``image``, or ``None`` (an unreadable entry counts as missing)."""
        path = self._path(image_key(image))
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

    def put(self, image: np.ndarray, boxes: np.ndarray) -> None:
        """Store ``boxes (R, 4)`` for ``image`` (atomically)."""
        if not (self.folder / "settings.json").exists():
            write_json(self.folder / "settings.json", self.settings)
        with atomic_path(self._path(image_key(image))) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
