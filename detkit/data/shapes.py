"""The built-in synthetic shapes dataset: circles, squares, triangles and ellipses.

:func:`generate_shapes` writes a small COCO-format dataset::

    root/train/000000.png ...           root/val/000000.png ...
    root/annotations/instances_train.json
    root/annotations/instances_val.json
    root/.complete                      the parameters; written last

Each image has a textured background (a random mixture of a smooth gradient,
low-frequency noise and stripes, from one of several palettes) and 1-6 flat
coloured objects, from about 8 px to half the image across, squares, triangles and
ellipses rotated. Object colours are picked to stand out from the background under
them and from the objects they touch; the class does not depend on the colour.

Later objects occlude earlier ones. Every annotation describes the *visible* part
of its object: the polygon(s) are traced from the visible mask, and bbox and area
are measured on it. A placement that would leave an earlier object less than half
visible, or punch a hole into it (which a COCO polygon cannot describe), is
re-drawn elsewhere, so no painted object is left unannotated. The polygons are
traced on pixel edges, so pycocotools rasterizes them back to exactly the painted
pixels (drawing uses no anti-aliasing).

Generation is deterministic given the parameters: image ``i`` of a split is drawn
from ``numpy.random.default_rng([seed, split_index, i])``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detkit.data.coco import CocoDataset
from detkit.errors import ConfigError, DataError
from detkit.io import write_json, write_text
from detkit.progress import progress

__all__ = ["CLASS_NAMES", "ShapesDataset", "generate_shapes"]

#: Category names; their COCO ids are 1..4 in this order.
CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "ellipse")

_FORMAT_VERSION = 1
_SPLITS = ("train", "val")
_FILE_PATTERN = re.compile(r"^\d{6}\.png$")
_MAX_TRIES = 20
_MIN_VISIBLE = 0.5  # an earlier object must stay at least this visible

# Background palettes: per-channel (low, high) of the colours a background is mixed from.
_BG_PALETTES: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((0, 0, 0), (80, 80, 80)),  # dark
    ((170, 170, 170), (250, 250, 250)),  # light
    ((70, 70, 70), (170, 170, 170)),  # mid grey
    ((60, 40, 20), (170, 135, 90)),  # earth
    ((20, 40, 60), (100, 150, 180)),  # cool
    ((150, 160, 120), (230, 240, 200)),  # pastel
)
# Object colours (RGB), jittered per object: the ``bright`` palette (the default) ...
_OBJ_COLORS = np.array(
    [
        (220, 40, 40),
        (40, 170, 60),
        (40, 80, 220),
        (240, 215, 40),
        (210, 50, 200),
        (40, 200, 220),
        (245, 140, 30),
        (245, 245, 245),
        (20, 20, 20),
        (120, 50, 180),
    ],
    dtype=np.float32,
)
# ... and ``pastel``: soft, desaturated colours, for a dataset whose objects look different.
_PASTEL_COLORS = np.array(
    [
        (230, 160, 160),
        (160, 210, 170),
        (160, 180, 230),
        (235, 225, 160),
        (215, 170, 215),
        (160, 215, 220),
        (240, 200, 160),
        (110, 110, 130),
        (150, 120, 100),
        (190, 175, 215),
    ],
    dtype=np.float32,
)
PALETTES: dict[str, np.ndarray] = {"bright": _OBJ_COLORS, "pastel": _PASTEL_COLORS}


def generate_shapes(
    root: str | Path,
    *,
    num_train: int,
    num_val: int,
    image_size: int = 128,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    palette: str = "bright",
) -> dict[str, Path]:
    """Write the shapes dataset under ``root`` unless an identical one is already there.

    Args:
        root: output folder.
        num_train / num_val: number of images per split.
        image_size: side of the square images in pixels (at least 32).
        seed: the random seed; the output is a function of all the parameters.
        classes: the shapes drawn, a subset of :data:`CLASS_NAMES` in the order of their
            label indices (default: all four).
        palette: the objects' colours, ``bright`` (default) or ``pastel``.

    Returns:
        ``{"train": ann_json, "val": ann_json}``; the images of split ``s`` are in
        ``root / s`` (where :class:`~detkit.data.coco.CocoDataset` looks by default).
    """
    if image_size < 32:
        raise ConfigError(f"shapes image_size must be at least 32, got {image_size}")
    if num_train < 0 or num_val < 0:
        raise ConfigError(f"shapes num_train/num_val must be >= 0, got {num_train}/{num_val}")
    names = list(classes) if classes is not None else list(CLASS_NAMES)
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(f"shapes classes must be distinct names among {', '.join(CLASS_NAMES)}, got {names}")
    if palette not in PALETTES:
        raise ConfigError(f"shapes palette must be one of {', '.join(PALETTES)}, got {palette!r}")
    root = Path(root)
    params: dict[str, Any] = {
        "version": _FORMAT_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    if names != list(CLASS_NAMES):  # the defaults leave the marker (and the images) as they always were
        params["classes"] = names
    if palette != "bright":
        params["palette"] = palette
    labels = [CLASS_NAMES.index(n) for n in names]
    outputs = {split: root / "annotations" / f"instances_{split}.json" for split in _SPLITS}
    marker = root / ".complete"
    if _marker_matches(marker, params) and all(p.is_file() for p in outputs.values()):
        return outputs

    marker.unlink(missing_ok=True)
    counts = {"train": int(num_train), "val": int(num_val)}
    with progress(total=sum(counts.values()), desc=f"generating shapes in {root}", unit="img") as bar:
        for split_index, split in enumerate(_SPLITS):
            folder = root / split
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.iterdir():
                if _FILE_PATTERN.match(stale.name):
                    stale.unlink()
            images: list[dict[str, Any]] = []
            annotations: list[dict[str, Any]] = []
            for i in range(counts[split]):
                rng = np.random.default_rng([int(seed), split_index, i])
                image, objects = render_shapes_image(rng, image_size, labels=labels, palette=palette)
                file_name = f"{i:06d}.png"
                _write_png(folder / file_name, image)
                images.append({"id": i + 1, "file_name": file_name, "width": image_size, "height": image_size})
                for obj in objects:
                    category = labels.index(obj.label) + 1
                    annotations.append(_annotation(obj, image_id=i + 1, ann_id=len(annotations) + 1, category=category))
                bar.update(1)
            categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(names)]
            info = {"description": "detkit synthetic shapes", **params, "split": split}
            write_json(
                outputs[split],
                {
                    "info": info,
                    "images": images,
                    "annotations": annotations,
                    "categories": categories,
                },
                indent=None,
            )
    write_text(marker, json.dumps(params, sort_keys=True))
    return outputs


def _marker_matches(marker: Path, params: dict[str, int]) -> bool:
    try:
        return bool(json.loads(marker.read_text(encoding="utf-8")) == params)
    except (OSError, ValueError):
        return False


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise DataError(f"cannot encode image '{path}'")
    buf.tofile(str(path))


# --------------------------------------------------------------------------- drawing


@dataclass
class ShapeObject:
    """One painted object of a synthetic image.

    Attributes:
        label: class index into :data:`CLASS_NAMES`.
        mask: ``(H, W)`` bool, the full drawn shape.
        visible: ``(H, W)`` bool, the part not covered by later objects.
        color: ``(3,)`` float RGB.
    """

    label: int
    mask: np.ndarray
    visible: np.ndarray
    color: np.ndarray


def render_shapes_image(
    rng: np.random.Generator,
    image_size: int,
    *,
    labels: Sequence[int] = tuple(range(len(CLASS_NAMES))),
    palette: str = "bright",
) -> tuple[np.ndarray, list[ShapeObject]]:
    """Draw one image and its objects.

    Args:
        labels: the classes (indices into :data:`CLASS_NAMES`) to draw from.
        palette: the object colours (a key of :data:`PALETTES`).

    Returns:
        ``(H, W, 3)`` uint8 RGB image (H = W = image_size) and its objects, in
        painting order (at least one).
    """
    size = image_size
    image = _background(rng, size)
    objects: list[ShapeObject] = []
    for _ in range(int(rng.integers(1, 7))):
        placed = _place_object(rng, size, objects, labels)
        if placed is None:
            continue
        label, mask = placed
        color = _pick_color(rng, image, mask, objects, PALETTES[palette])
        image[mask] = color
        for obj in objects:
            obj.visible &= ~mask
        objects.append(ShapeObject(label=label, mask=mask, visible=mask.copy(), color=color))
    sigma = rng.uniform(0.0, 5.0)
    if sigma > 0.5:
        image += rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def _place_object(
    rng: np.random.Generator, size: int, objects: list[ShapeObject], labels: Sequence[int]
) -> tuple[int, np.ndarray] | None:
    """A new shape (of one of ``labels``) that keeps every earlier object mostly visible and hole-free, or None."""
    for _ in range(_MAX_TRIES):
        label = int(labels[int(rng.integers(len(labels)))])
        mask = _draw_shape(rng, label, size)
        if mask.sum() < 12:
            continue
        if all(_still_fine(obj, mask) for obj in objects):
            return label, mask
    return None


def _still_fine(obj: ShapeObject, occluder: np.ndarray) -> bool:
    covered = obj.visible & occluder
    if not covered.any():
        return True
    rest = obj.visible & ~occluder
    if rest.sum() < _MIN_VISIBLE * obj.mask.sum():
        return False
    return not _has_hole(rest)


def _has_hole(mask: np.ndarray) -> bool:
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8)
    crop = np.pad(crop, 1)
    _, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    # hierarchy: (1, n, 4) of [next, previous, first_child, parent]; a parent means a hole
    return hierarchy is not None and bool((hierarchy[0, :, 3] >= 0).any())


def _draw_shape(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """``(size, size)`` bool mask of one random shape of class ``label``."""
    extent = math.exp(rng.uniform(math.log(8.0), math.log(size / 2)))  # log-uniform, 8 px .. size/2
    half = extent / 2
    cx, cy = rng.uniform(half, size - half, 2)
    rotate = rng.random() < 0.7
    mask = np.zeros((size, size), dtype=np.uint8)
    name = CLASS_NAMES[label]
    if name == "circle":
        cv2.circle(mask, (round(cx), round(cy)), max(3, round(half)), 1, -1, cv2.LINE_8)
    elif name == "square":
        angle = rng.uniform(0, math.pi / 2) if rotate else 0.0
        corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64) * half
        _fill_polygon(mask, corners, angle, cx, cy)
    elif name == "triangle":
        angle = rng.uniform(0, 2 * math.pi) if rotate else -math.pi / 2
        radius = extent / math.sqrt(3)  # circumradius of an equilateral triangle of side `extent`
        theta = np.arange(3) * (2 * math.pi / 3)
        corners = np.stack([np.cos(theta), np.sin(theta)], axis=1) * radius
        corners += rng.uniform(-0.08, 0.08, corners.shape) * extent
        _fill_polygon(mask, corners, angle, cx, cy)
    else:  # ellipse
        axes = (max(3, round(half)), max(2, round(half * rng.uniform(0.4, 0.7))))
        angle_deg = rng.uniform(0, 180) if rotate else 0.0
        cv2.ellipse(mask, (round(cx), round(cy)), axes, angle_deg, 0, 360, 1, -1, cv2.LINE_8)
    return mask.astype(bool)


def _fill_polygon(mask: np.ndarray, corners: np.ndarray, angle: float, cx: float, cy: float) -> None:
    c, s = math.cos(angle), math.sin(angle)
    rotated = corners @ np.array([[c, s], [-s, c]])  # (P, 2) rows rotated by `angle`
    points = np.rint(rotated + np.array([cx, cy])).astype(np.int32)
    cv2.fillPoly(mask, [points], 1, cv2.LINE_8)


_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size not in _GRID_CACHE:
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
        _GRID_CACHE[size] = (xs, ys)
    return _GRID_CACHE[size]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float32 RGB texture in [0, 255]."""
    xs, ys = _grid(size)
    low, high = (np.asarray(v, dtype=np.float32) for v in _BG_PALETTES[int(rng.integers(len(_BG_PALETTES)))])
    c1, c2 = rng.uniform(low, high, (2, 3)).astype(np.float32)

    angle = rng.uniform(0, 2 * math.pi)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    gradient = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)

    cells = int(rng.integers(2, 7))
    coarse = rng.random((cells, cells)).astype(np.float32)
    noise = np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)

    angle = rng.uniform(0, 2 * math.pi)
    freq = rng.uniform(2.0, 8.0)
    phase = rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xs * math.cos(angle) + ys * math.sin(angle)) + phase)

    w = rng.dirichlet(np.ones(3)).astype(np.float32)
    mix = w[0] * gradient + w[1] * noise + w[2] * stripes  # (H, W) in [0, 1]
    return c1 + (c2 - c1) * mix[:, :, None]


def _pick_color(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, objects: list[ShapeObject], colors: np.ndarray
) -> np.ndarray:
    """A jittered palette colour far from the background under ``mask`` and from touching objects.

    Returns ``(3,)`` float32 RGB.
    """
    under = image[mask].mean(axis=0)  # (3,)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    neighbours = [o.color for o in objects if (o.visible & ring).any()]
    best, best_score = colors[0], -1.0
    for _ in range(12):
        color = colors[int(rng.integers(len(colors)))] + rng.uniform(-20, 20, 3).astype(np.float32)
        color = np.clip(color, 0, 255)
        distances = [float(np.linalg.norm(color - under)) / 110.0]
        distances += [float(np.linalg.norm(color - n)) / 90.0 for n in neighbours]
        score = min(distances)
        if score >= 1.0:
            return color
        if score > best_score:
            best, best_score = color, score
    return best


# --------------------------------------------------------------------------- annotations


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` tracing the pixel edges of a ``(H, W)`` mask.

    The mask is upsampled 2x so that contours run through the quarter-pixel points
    just inside the pixel edges; pycocotools rasterizes these back to exactly the
    mask (for hole-free masks).
    """
    big = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if len(contour) < 3:
            continue
        points = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0  # (P, 2) in image pixels
        polygons.append([float(v) for v in points.ravel()])
    return polygons


def _annotation(obj: ShapeObject, *, image_id: int, ann_id: int, category: int) -> dict[str, Any]:
    ys, xs = np.nonzero(obj.visible)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": int(obj.visible.sum()),
        "segmentation": mask_to_polygons(obj.visible),
        "iscrowd": 0,
    }


# --------------------------------------------------------------------------- dataset


class ShapesDataset(CocoDataset):
    """The synthetic shapes dataset, generated under ``root`` when needed.

    Args:
        root: where the dataset lives (generated there if missing or different).
        split: ``"train"`` or ``"val"``.
        num_train / num_val / image_size / seed: see :func:`generate_shapes`.
        masks: also load instance masks ``(G, H, W)`` uint8.
        classes / palette: which shapes, in what colours (see :func:`generate_shapes`).
    """

    def __init__(
        self,
        *,
        root: str | Path = "runs/shapes",
        split: str = "train",
        num_train: int = 600,
        num_val: int = 100,
        image_size: int = 128,
        seed: int = 0,
        masks: bool = False,
        classes: Sequence[str] | None = None,
        palette: str = "bright",
    ) -> None:
        if split not in _SPLITS:
            raise ConfigError(f"shapes dataset split must be one of {list(_SPLITS)}, got {split!r}")
        outputs = generate_shapes(
            root, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, classes=classes,
            palette=palette,
        )
        self.root = Path(root)
        self.split = split
        super().__init__(ann_file=outputs[split], images=self.root / split, masks=masks)
