"""Draw detections on images, and write images atomically.

Images here are numpy arrays ``(H, W, 3)`` uint8 in RGB order (OpenCV draws
whatever channel order it is given, so colours are RGB tuples throughout; only
:func:`save_image` converts to OpenCV's BGR for encoding).

Shape glossary: H/W image size, D detections.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import cv2
import numpy as np
import torch

from detkit.errors import DataError
from detkit.io import atomic_write
from detkit.structures import Detections

RGB = tuple[int, int, int]

#: Class colours (RGB), chosen to be distinct from each other and from black and
#: white; class ``k`` gets ``PALETTE[k % len(PALETTE)]``.
PALETTE: tuple[RGB, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 200, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)

MASK_THRESHOLD = 0.5
MASK_ALPHA = 0.45
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(label: int) -> RGB:
    """The palette colour of class index ``label``."""
    return PALETTE[int(label) % len(PALETTE)]


def _check_image(image: np.ndarray, name: str = "image") -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        desc = (
            f"{image.dtype} {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB array, got {desc}")


def _style(height: int, width: int) -> tuple[int, float, int]:
    """Box line thickness, font scale and text thickness for an image size."""
    short = min(height, width)
    thickness = max(1, round(short / 300))
    font_scale = max(0.35, short / 1000)
    text_thickness = max(1, round(font_scale * 1.5))
    return thickness, font_scale, text_thickness


def _box_pixels(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int] | None:
    """Inclusive pixel corners of an xyxy box clipped to the image, or None when outside."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box) or x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return None
    px1 = min(max(math.floor(x1), 0), width - 1)
    py1 = min(max(math.floor(y1), 0), height - 1)
    px2 = min(max(math.ceil(x2) - 1, px1), width - 1)
    py2 = min(max(math.ceil(y2) - 1, py1), height - 1)
    return px1, py1, px2, py2


def _text_color(background: RGB) -> RGB:
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _draw_mask(canvas: np.ndarray, mask: np.ndarray, color: RGB, thickness: int) -> None:
    """Blend ``color`` over the True pixels of ``mask`` (H, W) and outline them, in place."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return
    # Work on the mask's bounding region only: masks of huge images are mostly empty.
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    region = canvas[y0:y1, x0:x1]
    sub = mask[y0:y1, x0:x1]
    tint = np.asarray(color, dtype=np.float32)
    region[sub] = ((1.0 - MASK_ALPHA) * region[sub] + MASK_ALPHA * tint).round().astype(np.uint8)
    contours, _ = cv2.findContours(sub.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(region, contours, -1, color, thickness, lineType=cv2.LINE_AA)


def _draw_label(
    canvas: np.ndarray,
    text: str,
    anchor: tuple[int, int],
    color: RGB,
    font_scale: float,
    text_thickness: int,
) -> None:
    """A filled label with ``text`` above the box corner ``anchor`` (inside the image), in place."""
    height, width = canvas.shape[:2]
    (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, text_thickness)
    pad = max(1, text_thickness)
    lw, lh = tw + 2 * pad, th + baseline + 2 * pad
    x, y = anchor
    top = y - lh if y - lh >= 0 else y  # above the box, or inside it at the image top
    top = max(0, min(top, height - lh))
    left = max(0, min(x, width - lw))
    cv2.rectangle(canvas, (left, top), (left + lw - 1, top + lh - 1), color, thickness=cv2.FILLED)
    cv2.putText(
        canvas,
        text,
        (left + pad, top + pad + th),
        _FONT,
        font_scale,
        _text_color(color),
        text_thickness,
        lineType=cv2.LINE_AA,
    )


def _binary_masks(masks: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``(D, Hm, Wm)`` probabilities or bools -> ``(D, H, W)`` bool, resized if needed."""
    masks = masks.detach().cpu()
    if masks.dtype != torch.bool:
        masks = masks.float()
    if tuple(masks.shape[-2:]) != (height, width):
        # (D, Hm, Wm) -> (D, 1, H, W) -> (D, H, W)
        masks = torch.nn.functional.interpolate(
            masks.float()[:, None], size=(height, width), mode="bilinear", align_corners=False
        )[:, 0]
    if masks.dtype == torch.bool:
        return masks.numpy()
    return (masks >= MASK_THRESHOLD).numpy()


def draw_detections(
    image: np.ndarray,
    dets: Detections,
    *,
    class_names: Sequence[str],
    score_thresh: float = 0.0,
    min_size: int | None = None,
) -> np.ndarray:
    """Draw boxes, labels and masks of ``dets`` on a copy of ``image``.

    Each class has its palette colour (:func:`class_color`). Every detection with
    ``score >= score_thresh`` gets its mask (when ``dets.masks`` is not None,
    thresholded at :data:`MASK_THRESHOLD`) as a translucent overlay with an
    outline, a box, and a filled label ``"name 0.93"`` kept inside the image.
    Higher scores are drawn last (on top). Line width and text size grow with the
    image size; boxes are clipped to the image and boxes entirely outside it are
    skipped. Text cannot shrink with the image below a few pixels, so on a small
    image (shorter side under ``min_size``) everything is drawn on a copy enlarged by
    the smallest integer factor that reaches ``min_size`` (pixels repeated, not
    smoothed); otherwise labels would cover the objects they name.

    Args:
        image: ``(H, W, 3)`` uint8 RGB; not modified.
        dets: boxes ``(D, 4)`` xyxy in the pixels of ``image``, scores ``(D,)``,
            labels ``(D,)``, optional masks ``(D, H, W)``.
        class_names: name of each label index (indices beyond it show as ``"class k"``).
        score_thresh: detections scoring below it are not drawn.
        min_size: enlarge images whose shorter side is below it (None: never).

    Returns:
        A new ``(f*H, f*W, 3)`` uint8 RGB array; ``f`` is 1 unless the image was enlarged.
    """
    _check_image(image)
    canvas = np.ascontiguousarray(image).copy()
    height, width = canvas.shape[:2]
    if height == 0 or width == 0:
        return canvas
    factor = max(1, math.ceil(min_size / min(height, width))) if min_size else 1
    if factor > 1:
        height, width = height * factor, width * factor
        canvas = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_NEAREST)
    if len(dets) == 0:
        return canvas
    scores = dets.scores.detach().cpu().float()
    keep = torch.nonzero(scores >= score_thresh).flatten()
    keep = keep[torch.argsort(scores[keep], stable=True)]  # low scores first, high on top
    if keep.numel() == 0:
        return canvas
    boxes = (dets.boxes.detach().cpu().float()[keep] * factor).tolist()
    labels = dets.labels.detach().cpu()[keep].tolist()
    kept_scores = scores[keep].tolist()
    thickness, font_scale, text_thickness = _style(height, width)

    if dets.masks is not None:
        masks = _binary_masks(dets.masks[keep.to(dets.masks.device)], height, width)
        for mask, label in zip(masks, labels):
            _draw_mask(canvas, mask, class_color(label), thickness)

    for box, label, score in zip(boxes, labels, kept_scores):
        corners = _box_pixels(box, height, width)
        if corners is None:
            continue
        x1, y1, x2, y2 = corners
        color = class_color(label)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, lineType=cv2.LINE_8)
        name = class_names[label] if 0 <= label < len(class_names) else f"class {label}"
        _draw_label(canvas, f"{name} {score:.2f}", (x1, y1), color, font_scale, text_thickness)
    return canvas


def save_image(path: str | os.PathLike[str], image_rgb: np.ndarray) -> Path:
    """Atomically write an ``(H, W, 3)`` uint8 RGB image as PNG or JPEG (by extension).

    Raises:
        DataError: the extension is not ``.png``, ``.jpg`` or ``.jpeg``, or encoding failed.
    """
    target = Path(path)
    ext = target.suffix.lower()
    if ext not in (".png", ".jpg", ".jpeg"):
        raise DataError(f"cannot save image {str(target)!r}: use a .png, .jpg or .jpeg file name")
    _check_image(image_rgb, "image_rgb")
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext != ".png" else []
    try:
        ok, encoded = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params)
    except cv2.error as exc:
        raise DataError(f"cannot encode image {str(target)!r}: {exc}") from exc
    if not ok:
        raise DataError(f"cannot encode image {str(target)!r} ({image_rgb.shape}) as {ext}")
    data = encoded.tobytes()

    def write(f: IO[bytes]) -> None:
        f.write(data)

    atomic_write(target, write, binary=True)
    return target
