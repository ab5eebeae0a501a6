"""Reading image files and finding them on disk.

Every image enters detkit as an ``(H, W, 3)`` uint8 RGB array (:func:`read_image`)
and becomes a ``(3, H, W)`` float32 tensor in ``[0, 1]`` (:func:`image_to_tensor`).

Files are decoded with OpenCV from bytes read by numpy, so paths with non-ASCII
characters work on every platform. OpenCV's own log lines (``[ERROR:0@0.05] ...``
from its decoders) are silenced while decoding: a file that fails is reported once,
by the :class:`~detkit.errors.DataError` that names it. ``IMREAD_UNCHANGED`` ignores the EXIF
orientation tag, which is also how COCO and VOC annotations measure their images.
"""

from __future__ import annotations

import contextlib
import glob
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from detkit.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "find_images", "image_to_tensor", "read_image"]

#: File name extensions (lower case) that :func:`find_images` treats as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)

_GLOB_CHARS = frozenset("*?[")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` uint8 RGB array.

    Grayscale images are repeated to three channels; an alpha channel is composited
    over white; 16-bit images are scaled to 8 bits (``round(v / 257)``); float
    images are taken to be in ``[0, 1]``.

    Raises:
        DataError: the file is missing, empty, not an image or corrupt. The message
            names the file.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"image file '{p}' does not exist; check the path or remove it from the list")
    if not p.is_file():
        raise DataError(f"image path '{p}' is not a file")
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read image '{p}': {e}") from e
    if data.size == 0:
        raise DataError(f"cannot decode image '{p}': the file is empty; remove or replace it")
    try:
        with _opencv_silent():
            decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        decoded = None
        reason = f" ({str(e).strip().splitlines()[-1]})"
    else:
        reason = ""
    if decoded is None or decoded.size == 0:
        raise DataError(f"cannot decode image '{p}': not an image or corrupt{reason}; remove or replace it")
    return _to_rgb_uint8(decoded, p)


@contextlib.contextmanager
def _opencv_silent() -> Iterator[None]:
    """Silence OpenCV's logging (its decoders log corrupt input as ``[ERROR:...]`` lines) for the block."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:  # an OpenCV build without the logging API
        yield
        return
    previous = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(previous)


def _to_rgb_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    """Convert a decoded OpenCV array (BGR order, any depth) to ``(H, W, 3)`` uint8 RGB."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"cannot use image '{path}': unsupported shape {tuple(image.shape)}")
    # Scale every depth to floats in [0, 1] (uint8 stays exact through the fast path).
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    elif image.dtype in (np.float16, np.float32, np.float64):
        scale = 1.0
    else:
        raise DataError(f"cannot use image '{path}': unsupported pixel type {image.dtype}")

    channels = image.shape[2]
    alpha: np.ndarray | None = None
    if channels == 2:  # gray + alpha
        color, alpha = image[:, :, :1], image[:, :, 1:]
    elif channels == 4:  # BGRA
        color, alpha = image[:, :, :3], image[:, :, 3:]
    else:
        color = image
    if color.shape[2] == 1:
        color = np.repeat(color, 3, axis=2)
    else:
        color = color[:, :, ::-1]  # BGR -> RGB

    if alpha is None and image.dtype == np.uint8:
        return np.ascontiguousarray(color)
    if alpha is None and image.dtype == np.uint16:
        # 65535 / 257 == 255 exactly, so this maps the 16-bit range onto the 8-bit one.
        return np.ascontiguousarray(np.rint(color.astype(np.float64) / 257.0).astype(np.uint8))
    rgb = np.clip(color.astype(np.float64) / scale, 0.0, 1.0)
    if alpha is not None:
        a = np.clip(alpha.astype(np.float64) / scale, 0.0, 1.0)
        rgb = rgb * a + (1.0 - a)  # composite over white
    return np.ascontiguousarray(np.rint(rgb * 255.0).astype(np.uint8))


def image_to_tensor(array: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 RGB array -> ``(3, H, W)`` float32 tensor in ``[0, 1]``."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image array, got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {array.dtype}")
    # (H, W, 3) -> (3, H, W)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand image files, folders and glob patterns into a list of image paths.

    * a file is taken as given (whatever its extension);
    * a folder contributes its image files (by :data:`IMAGE_EXTENSIONS`, any case),
      sorted by name, not recursively;
    * a pattern with ``*``, ``?`` or ``[`` is expanded with :mod:`glob` (``**``
      recurses) and contributes the image files it matches, sorted.

    Duplicates are removed, keeping the first occurrence.

    Raises:
        DataError: an input matches nothing (a missing path, a folder without
            images, a pattern without image matches). The message names it.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            matches = [p]
        elif p.is_dir():
            matches = sorted(c for c in p.iterdir() if _is_image_file(c))
            if not matches:
                raise DataError(f"folder '{p}' contains no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        elif any(ch in str(item) for ch in _GLOB_CHARS):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            matches = [m for m in matches if _is_image_file(m)]
            if not matches:
                raise DataError(f"pattern '{item}' matches no image files")
        else:
            raise DataError(f"image input '{item}' does not exist; give an image file, a folder or a glob")
        found.extend(matches)
    return list(dict.fromkeys(found))
