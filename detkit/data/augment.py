"""Photometric and geometric augmentation for training detectors: HSV gains, random affine, mosaic.

These are the augmentations that YOLOv4 (Bochkovskiy et al., 2020, "YOLOv4: Optimal Speed
and Accuracy of Object Detection", section 3.3) and YOLOv5 train with, written as detkit
transforms (``Sample -> Sample``, see :mod:`detkit.data.transforms`), so any detector can
use them:

* :class:`RandomHSV` multiplies hue, saturation and value by random gains
  ``1 + U(-1, 1) * gain`` (hue modulo 360 degrees, the others clipped), in torch.
* :class:`RandomAffine` draws one 2x3 matrix per sample (rotation, isotropic scale,
  shear, translation; YOLOv5's ``random_perspective`` without the perspective terms) and
  warps the image (bilinear) and the masks (nearest) with ``cv2.warpAffine``. Boxes map
  through their four corners, or, when the sample has masks, are re-measured on the warped
  masks (tight under rotation). Objects left with less than ``min_visible`` of their
  transformed area inside the output, or thinner than ``min_size`` pixels, are dropped
  with their labels, masks and crowd flags. ``RandomAffine(translate=0, scale=(a, b))`` is
  plain scale jitter.
* :class:`Mosaic` puts the sample and three others drawn from the dataset into the four
  quadrants around a random centre of a ``2S x 2S`` canvas and hands the canvas to a
  :class:`RandomAffine` that warps it back to ``S x S``.

Coordinates: boxes are continuous pixel edges (pixel ``(i, j)`` covers ``[j, j + 1) x [i,
i + 1)``); OpenCV maps pixel centres, so the matrix given to ``cv2.warpAffine`` is the box
matrix conjugated by the half-pixel shift (:func:`pixel_matrix`), which keeps boxes and
pixels in register at any scale.

Every random number comes from torch's global RNG, so inside
:class:`~detkit.data.loader.SkipBadItems`' per-item seeding a sample's augmentation is a
function of ``(seed, epoch, index)`` and a resumed run sees the same images.

Shape glossary: G objects, H x W input image, Ho x Wo output image, S mosaic tile size
(the canvas is 2S x 2S).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch import Tensor

from detkit.data.base import Sample
from detkit.data.transforms import Compose, RandomHorizontalFlip, Transform
from detkit.errors import DataError
from detkit.ops import masks_to_boxes
from detkit.structures import Targets

__all__ = [
    "YOLO_FILL",
    "Mosaic",
    "RandomAffine",
    "RandomHSV",
    "ResizeLongest",
    "adjust_hsv",
    "hsv_to_rgb",
    "pixel_matrix",
    "resize_sample",
    "rgb_to_hsv",
    "training_transforms",
]

logger = logging.getLogger(__name__)

#: The grey YOLOv5 pads and fills with, 114/255.
YOLO_FILL = 114 / 255

# cv2.warpAffine takes at most this many channels at once
_CV2_MAX_CHANNELS = 128


# --------------------------------------------------------------------------- HSV


def rgb_to_hsv(image: Tensor) -> Tensor:
    """RGB to HSV in OpenCV's float convention: ``(3, H, W)`` in ``[0, 1]`` -> hue in degrees
    ``[0, 360)``, saturation and value in ``[0, 1]`` (``cv2.COLOR_RGB2HSV`` on float32)."""
    red, green, blue = image.unbind(0)
    value, _ = image.max(dim=0)  # (3, H, W) -> (H, W)
    chroma = value - image.min(dim=0).values
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    safe = chroma.clamp_min(1e-12)
    # the sector formula of the largest channel; where two channels tie, their formulas agree
    hue = torch.where(
        value == red,
        (green - blue) / safe,
        torch.where(value == green, 2.0 + (blue - red) / safe, 4.0 + (red - green) / safe),
    )
    hue = torch.where(chroma > 0, (60.0 * hue) % 360.0, torch.zeros_like(hue))
    return torch.stack((hue, saturation, value))


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """The inverse of :func:`rgb_to_hsv`: ``(3, H, W)`` hue in degrees, saturation and value in
    ``[0, 1]`` -> RGB in ``[0, 1]``."""
    hue, saturation, value = hsv.unbind(0)
    sector = hue[None] / 60.0  # (H, W) -> (1, H, W)
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device)[:, None, None]  # R, G, B
    k = (offsets + sector) % 6.0  # (3, H, W)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return value[None] - value[None] * saturation[None] * ramp


def adjust_hsv(image: Tensor, *, hue_gain: float, saturation_gain: float, value_gain: float) -> Tensor:
    """Multiply an RGB image's hue (modulo 360 degrees), saturation and value by gains.

    Saturation and value are clipped to ``[0, 1]``, so the result stays in ``[0, 1]``.
    Gains of 1 give the image back (up to float rounding).

    Args:
        image: ``(3, H, W)`` float RGB in ``[0, 1]``.
    """
    hue, saturation, value = rgb_to_hsv(image).unbind(0)
    hsv = torch.stack(
        (
            (hue * hue_gain) % 360.0,
            (saturation * saturation_gain).clamp(0.0, 1.0),
            (value * value_gain).clamp(0.0, 1.0),
        )
    )
    return hsv_to_rgb(hsv)


class RandomHSV:
    """Random gains on hue, saturation and value (YOLOv5's colour augmentation).

    Each sample draws three gains ``1 + U(-1, 1) * (h, s, v)``; see :func:`adjust_hsv`.
    Hue is scaled, not shifted, as in YOLOv5 (``h=0.015`` moves a hue of 180 degrees by up
    to 2.7 degrees).

    Args:
        h: hue gain amplitude, in ``[0, 1]``.
        s: saturation gain amplitude, in ``[0, 1]``.
        v: value gain amplitude, in ``[0, 1]``.
    """

    def __init__(self, *, h: float = 0.015, s: float = 0.7, v: float = 0.4) -> None:
        for name, gain in (("h", h), ("s", s), ("v", v)):
            if not 0.0 <= gain <= 1.0:
                raise ValueError(f"RandomHSV: {name} must be in [0, 1], got {gain}")
        self.h, self.s, self.v = float(h), float(s), float(v)

    def __call__(self, sample: Sample) -> Sample:
        """The sample with its colours changed (targets untouched)."""
        gains = (torch.rand(3, dtype=torch.float64) * 2.0 - 1.0) * torch.tensor([self.h, self.s, self.v]) + 1.0
        hue_gain, saturation_gain, value_gain = gains.tolist()
        image = adjust_hsv(
            sample.image, hue_gain=hue_gain, saturation_gain=saturation_gain, value_gain=value_gain
        )
        return dataclasses.replace(sample, image=image.to(sample.image.dtype))

    def __repr__(self) -> str:
        return f"RandomHSV(h={self.h}, s={self.s}, v={self.v})"


# --------------------------------------------------------------------------- affine


def pixel_matrix(matrix: np.ndarray) -> np.ndarray:
    """The ``cv2.warpAffine`` matrix of a 2x3 affine map of continuous coordinates.

    A box edge at ``x`` is the pixel centre ``x - 0.5`` for OpenCV, so the map
    ``y = A x + t`` on edges is ``y = A x + (t + A c - c)`` on centres, ``c = (0.5, 0.5)``.
    """
    linear, shift = matrix[:, :2], matrix[:, 2]
    half = np.array([0.5, 0.5])
    return np.concatenate([linear, (shift + linear @ half - half)[:, None]], axis=1)


def _image_to_numpy(image: Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())  # (3, H, W) -> (H, W, 3)


def _image_from_numpy(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(dtype)  # (H, W, 3) -> (3, H, W)


def _warp_masks(masks: Tensor, matrix: np.ndarray, size: tuple[int, int]) -> Tensor:
    """``(G, H, W)`` masks warped with ``cv2`` matrix ``matrix`` (nearest) -> ``(G, Ho, Wo)``, same dtype."""
    height, width = size
    if masks.shape[0] == 0:
        return torch.zeros((0, height, width), dtype=masks.dtype)
    planes = masks.to(torch.uint8).permute(1, 2, 0).numpy()  # (G, H, W) -> (H, W, G)
    chunks = []
    for start in range(0, planes.shape[2], _CV2_MAX_CHANNELS):
        part = np.ascontiguousarray(planes[:, :, start : start + _CV2_MAX_CHANNELS])
        warped = cv2.warpAffine(part, matrix, (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
        chunks.append(warped.reshape(height, width, -1))  # one channel comes back (Ho, Wo)
    stacked = torch.from_numpy(np.concatenate(chunks, axis=2)).permute(2, 0, 1).contiguous()  # -> (G, Ho, Wo)
    return stacked.to(masks.dtype)


def _transform_boxes(boxes: Tensor, matrix: np.ndarray) -> Tensor:
    """``(G, 4)`` xyxy boxes -> ``(G, 4)``: the box around each box's four mapped corners."""
    if boxes.shape[0] == 0:
        return boxes.clone()
    b = boxes.to(torch.float64)
    corners = torch.stack(
        (b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]), dim=1
    )  # (G, 4, 2): top-left, top-right, bottom-left, bottom-right
    m = torch.from_numpy(matrix)
    mapped = corners @ m[:, :2].T + m[:, 2]  # (G, 4, 2)
    return torch.cat((mapped.min(dim=1).values, mapped.max(dim=1).values), dim=1).to(boxes.dtype)  # (G, 4)


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


def _kept(boxes: Tensor, area_before: Tensor, area_after: Tensor, *, min_visible: float, min_size: float) -> Tensor:
    """``(G,)`` bool: objects with at least ``min_visible`` of their area left and both sides >= ``min_size``."""
    wide = (boxes[:, 2] - boxes[:, 0]) >= min_size
    tall = (boxes[:, 3] - boxes[:, 1]) >= min_size
    visible = (area_after > 0) & (area_after >= min_visible * area_before)
    return wide & tall & visible


def _check_fraction(owner: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1], got {value}")


def _as_size(owner: str, size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(pair) < 1:
        raise ValueError(f"{owner}: output_size must be positive, got {size}")
    return pair


class RandomAffine:
    """One random affine warp per sample: rotation, scale, shear and translation (YOLOv5-style).

    The matrix is ``T @ Sh @ R @ C``: ``C`` moves the image centre to the origin, ``R``
    rotates by ``U(-degrees, degrees)`` (counter-clockwise on screen, as
    ``cv2.getRotationMatrix2D``) and scales by ``U(*scale)``, ``Sh`` shears by
    ``U(-shear, shear)`` degrees along x and y, and ``T`` puts the centre at
    ``(0.5 + U(-translate, translate)) * (Wo, Ho)`` of the output.

    The image is warped bilinearly with the border filled with ``fill``, masks by nearest
    neighbour. Without masks each box becomes the box around its four mapped corners,
    clipped to the output; with masks, the box of the warped mask (exact under rotation).
    An object is dropped when what is left inside the output is less than
    ``min_visible`` of its transformed area (box area, or mask pixels times the
    matrix's determinant), or when a side is below ``min_size`` pixels.

    Args:
        degrees: largest rotation, in degrees.
        translate: largest shift of the centre, as a fraction of the output size.
        scale: ``(low, high)`` of the isotropic scale factor, ``0 < low <= high``.
        shear: largest shear angle, in degrees, in ``[0, 90)``.
        output_size: ``(Ho, Wo)`` or one side of a square output; None keeps the input size.
        fill: the grey the uncovered border gets, in ``[0, 1]``.
        min_visible: the fraction of its transformed area an object must keep.
        min_size: the smallest width and height of a kept box, in output pixels.
    """

    def __init__(
        self,
        *,
        degrees: float = 0.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.5, 1.5),
        shear: float = 0.0,
        output_size: int | tuple[int, int] | None = None,
        fill: float = YOLO_FILL,
        min_visible: float = 0.1,
        min_size: float = 2.0,
    ) -> None:
        low, high = (float(scale[0]), float(scale[1]))
        if not 0.0 < low <= high:
            raise ValueError(f"RandomAffine: scale must be (low, high) with 0 < low <= high, got {scale}")
        if degrees < 0 or translate < 0 or not 0 <= shear < 90:
            raise ValueError(
                f"RandomAffine: degrees and translate must be >= 0 and shear in [0, 90), "
                f"got degrees={degrees}, translate={translate}, shear={shear}"
            )
        _check_fraction("RandomAffine", "fill", fill)
        _check_fraction("RandomAffine", "min_visible", min_visible)
        self.degrees, self.translate, self.shear = float(degrees), float(translate), float(shear)
        self.scale = (low, high)
        self.output_size = _as_size("RandomAffine", output_size)
        self.fill, self.min_visible, self.min_size = float(fill), float(min_visible), float(min_size)

    def __call__(self, sample: Sample) -> Sample:
        """The warped sample, ``output_size`` or the input's size."""
        return self.warp(sample, self.output_size or sample.image_size)

    def draw_matrix(self, input_size: tuple[int, int], output_size: tuple[int, int]) -> np.ndarray:
        """A random ``(2, 3)`` float64 matrix mapping input box coordinates to output ones.

        Six numbers are drawn from torch's RNG (angle, scale, two shears, two shifts),
        whatever the settings, so the draws of later transforms do not depend on them.
        """
        u = torch.rand(6, dtype=torch.float64).tolist()
        angle = math.radians((2 * u[0] - 1) * self.degrees)
        factor = self.scale[0] + u[1] * (self.scale[1] - self.scale[0])
        shear_x = math.tan(math.radians((2 * u[2] - 1) * self.shear))
        shear_y = math.tan(math.radians((2 * u[3] - 1) * self.shear))
        height, width = input_size
        out_height, out_width = output_size
        centre = np.array([[1.0, 0, -width / 2], [0, 1.0, -height / 2], [0, 0, 1.0]])
        cos, sin = factor * math.cos(angle), factor * math.sin(angle)
        rotate = np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1.0]])
        shear = np.array([[1.0, shear_x, 0], [shear_y, 1.0, 0], [0, 0, 1.0]])
        shift_x = (0.5 + (2 * u[4] - 1) * self.translate) * out_width
        shift_y = (0.5 + (2 * u[5] - 1) * self.translate) * out_height
        place = np.array([[1.0, 0, shift_x], [0, 1.0, shift_y], [0, 0, 1.0]])
        return (place @ shear @ rotate @ centre)[:2]

    def warp(self, sample: Sample, output_size: tuple[int, int]) -> Sample:
        """``sample`` warped by a freshly drawn matrix to an ``output_size`` (Ho, Wo) image."""
        matrix = self.draw_matrix(sample.image_size, output_size)
        return self.apply(sample, matrix, output_size)

    def apply(self, sample: Sample, matrix: np.ndarray, output_size: tuple[int, int]) -> Sample:
        """``sample`` warped by a given ``(2, 3)`` box-coordinate ``matrix`` to ``output_size`` (Ho, Wo).

        The identity at the input's size gives the sample back as it is.
        """
        out_height, out_width = output_size
        if tuple(output_size) == sample.image_size and np.array_equal(matrix, np.eye(2, 3)):
            return sample  # nothing moves: no resampling, no filtering
        cv_matrix = pixel_matrix(matrix)
        image = cv2.warpAffine(
            _image_to_numpy(sample.image),
            cv_matrix,
            (out_width, out_height),
            flags=cv2.INTER_LINEAR,
            borderValue=(self.fill, self.fill, self.fill),
        )
        targets = sample.targets
        if targets.masks is not None:
            masks = _warp_masks(targets.masks, cv_matrix, output_size)
            boxes = masks_to_boxes(masks).to(targets.boxes.dtype) + torch.tensor([0.0, 0.0, 1.0, 1.0])
            determinant = abs(float(np.linalg.det(matrix[:, :2])))
            area_before = (targets.masks != 0).flatten(1).sum(dim=1).double() * determinant
            area_after = (masks != 0).flatten(1).sum(dim=1).double()
            new = targets.replace(boxes=boxes.reshape(-1, 4), masks=masks)
        else:
            mapped = _transform_boxes(targets.boxes, matrix)
            area_before = _box_area(mapped).double()
            boxes = torch.stack(
                (
                    mapped[:, 0].clamp(0, out_width),
                    mapped[:, 1].clamp(0, out_height),
                    mapped[:, 2].clamp(0, out_width),
                    mapped[:, 3].clamp(0, out_height),
                ),
                dim=1,
            ).reshape(-1, 4)
            area_after = _box_area(boxes).double()
            new = targets.replace(boxes=boxes)
        keep = _kept(new.boxes, area_before, area_after, min_visible=self.min_visible, min_size=self.min_size)
        image_tensor = _image_from_numpy(image.reshape(out_height, out_width, -1), sample.image.dtype)
        return dataclasses.replace(sample, image=image_tensor, targets=new[keep])

    def __repr__(self) -> str:
        return (
            f"RandomAffine(degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
            f"shear={self.shear}, output_size={self.output_size}, fill={self.fill:.3f}, "
            f"min_visible={self.min_visible}, min_size={self.min_size})"
        )


# --------------------------------------------------------------------------- mosaic


class _Indexable(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """``sample`` resized to ``size`` (H, W): image bilinear, masks nearest, boxes scaled."""
    height, width = sample.image_size
    if (height, width) == tuple(size):
        return sample
    new_height, new_width = size
    image = cv2.resize(_image_to_numpy(sample.image), (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    targets = sample.targets
    ratios = torch.tensor([new_width / width, new_height / height] * 2, dtype=targets.boxes.dtype)
    masks = None
    if targets.masks is not None:
        scale_only = np.array([[new_width / width, 0, 0], [0, new_height / height, 0]])
        masks = _warp_masks(targets.masks, pixel_matrix(scale_only), (new_height, new_width))
    return dataclasses.replace(
        sample,
        image=_image_from_numpy(image.reshape(new_height, new_width, -1), sample.image.dtype),
        targets=targets.replace(boxes=targets.boxes * ratios, masks=masks),
    )


class Mosaic:
    """YOLOv4's mosaic: the sample and three random others tiled around a random centre.

    With probability ``p`` the sample and three items drawn uniformly from ``dataset``
    (each resized so that its longer side is ``S``) are placed on a ``2S x 2S`` canvas
    filled with ``fill``: the sample's bottom-right corner at a random centre
    ``(xc, yc)`` drawn from ``[S/2, 3S/2]``, the others' bottom-left, top-right and top-left
    corners there, each cut by the canvas edge (YOLOv5's ``load_mosaic``). Boxes move with
    their image and are clipped to the canvas; objects left with less than ``min_visible``
    of their box, or thinner than ``min_size`` pixels, are dropped. Masks and crowd flags
    come along (all four items have masks, or none).

    ``affine`` then warps the canvas back to ``S x S`` (:meth:`RandomAffine.warp`); a
    sample left whole (probability ``1 - p``) gets ``affine`` at its own size. Without
    ``affine`` a mosaic comes out ``2S x 2S`` and other samples as they are.

    A neighbour whose image cannot be read (a :class:`~detkit.errors.DataError`) is
    logged once and never drawn again; another index is drawn in its place. The draws do
    not depend on which bad items are already known, so the result of a given seed does
    not either. When ``max_tries`` draws in a row fail the sample is returned without a
    mosaic.

    Args:
        dataset: where neighbours come from (``len`` and ``dataset[i] -> Sample``); the
            dataset the sample itself comes from.
        p: the probability of a mosaic.
        output_size: ``S``; None takes the sample's longer side.
        affine: the warp that follows (see above), or None.
        fill: the canvas grey, in ``[0, 1]``.
        min_visible: the fraction of its box an object must keep on the canvas.
        min_size: the smallest width and height of a kept box, in canvas pixels.
        max_tries: draws per neighbour before giving up on the mosaic.
    """

    def __init__(
        self,
        dataset: _Indexable,
        *,
        p: float = 1.0,
        output_size: int | None = None,
        affine: RandomAffine | None = None,
        fill: float = YOLO_FILL,
        min_visible: float = 0.1,
        min_size: float = 2.0,
        max_tries: int = 20,
    ) -> None:
        _check_fraction("Mosaic", "p", p)
        _check_fraction("Mosaic", "fill", fill)
        _check_fraction("Mosaic", "min_visible", min_visible)
        if output_size is not None and output_size < 1:
            raise ValueError(f"Mosaic: output_size must be positive, got {output_size}")
        if max_tries < 1:
            raise ValueError(f"Mosaic: max_tries must be >= 1, got {max_tries}")
        self.dataset = dataset
        self.p = float(p)
        self.output_size = output_size
        self.affine = affine
        self.fill, self.min_visible, self.min_size = float(fill), float(min_visible), float(min_size)
        self.max_tries = int(max_tries)
        self.bad_items: set[int] = set()  # neighbours that raised DataError (in this process)

    def __call__(self, sample: Sample) -> Sample:
        """A mosaic with ``sample`` in the top-left tile, warped by ``affine``; or ``sample`` (warped)."""
        if len(self.dataset) == 0 or torch.rand(()).item() >= self.p:
            return self.affine(sample) if self.affine is not None else sample
        tile = self.output_size or max(sample.image_size)
        neighbours = self._neighbours()
        if neighbours is None:
            logger.warning(
                "mosaic of %s: no readable neighbour in %d draws; kept whole", sample.file_name, self.max_tries
            )
            return self.affine(sample) if self.affine is not None else sample
        centre = torch.randint(tile // 2, tile + tile // 2 + 1, (2,)).tolist()  # (xc, yc)
        canvas = self.combine([sample, *neighbours], tile=tile, centre=(centre[0], centre[1]))
        if self.affine is None:
            return canvas
        return self.affine.warp(canvas, (tile, tile))

    def _neighbours(self) -> list[Sample] | None:
        """Three readable samples drawn from the dataset, or None when ``max_tries`` draws in a row fail."""
        found: list[Sample] = []
        while len(found) < 3:
            for _ in range(self.max_tries):
                index = int(torch.randint(len(self.dataset), ()).item())
                sample = self._read(index)
                if sample is not None:
                    found.append(sample)
                    break
            else:
                return None
        return found

    def _read(self, index: int) -> Sample | None:
        if index in self.bad_items:
            return None
        try:
            return self.dataset[index]
        except DataError as e:
            self.bad_items.add(index)
            logger.warning("mosaic: skipping neighbour item %d: %s", index, e)
            return None

    def combine(self, samples: Sequence[Sample], *, tile: int, centre: tuple[int, int]) -> Sample:
        """Four samples on a ``2S x 2S`` canvas around ``centre`` (xc, yc); ``tile`` is S.

        Sample 0 goes top-left of the centre, 1 top-right, 2 bottom-left, 3 bottom-right;
        the result has sample 0's image id and file name.
        """
        if len(samples) != 4:
            raise ValueError(f"Mosaic.combine needs 4 samples, got {len(samples)}")
        with_masks = [s.targets.masks is not None for s in samples]
        if any(with_masks) and not all(with_masks):
            raise DataError(
                f"mosaic of {samples[0].file_name}: some items have masks and some have none; "
                "a dataset gives masks for every item or for none"
            )
        side = 2 * tile
        xc, yc = centre
        first = samples[0].image
        canvas = torch.full((first.shape[0], side, side), self.fill, dtype=first.dtype)
        placed: list[Targets] = []
        for quadrant, sample in enumerate(samples):
            height, width = sample.image_size
            ratio = tile / max(height, width)
            sample = resize_sample(sample, (max(1, round(height * ratio)), max(1, round(width * ratio))))
            height, width = sample.image_size
            # the tile's top-left corner on the canvas: left of / above the centre, or at it
            x0 = xc - width if quadrant in (0, 2) else xc
            y0 = yc - height if quadrant in (0, 1) else yc
            x1, y1 = max(x0, 0), max(y0, 0)  # the visible part, on the canvas
            x2, y2 = min(x0 + width, side), min(y0 + height, side)
            canvas[:, y1:y2, x1:x2] = sample.image[:, y1 - y0 : y2 - y0, x1 - x0 : x2 - x0]
            placed.append(self._place_targets(sample.targets, (x0, y0), (x1, y1, x2, y2), side))
        if any(t.iscrowd is not None for t in placed):
            placed = [self._with_crowd(t) for t in placed]
        targets = Targets.cat(placed)
        return dataclasses.replace(samples[0], image=canvas, targets=targets)

    def _place_targets(
        self, targets: Targets, origin: tuple[int, int], visible: tuple[int, int, int, int], side: int
    ) -> Targets:
        """A tile's targets moved to the canvas (tile origin ``(x0, y0)``), clipped and filtered."""
        x0, y0 = origin
        x1, y1, x2, y2 = visible
        shift = torch.tensor([x0, y0, x0, y0], dtype=targets.boxes.dtype)
        moved = targets.boxes + shift
        low = torch.tensor([x1, y1, x1, y1], dtype=moved.dtype)
        high = torch.tensor([x2, y2, x2, y2], dtype=moved.dtype)
        boxes = torch.minimum(torch.maximum(moved, low), high).reshape(-1, 4)
        masks = None
        if targets.masks is not None:
            masks = torch.zeros((targets.masks.shape[0], side, side), dtype=targets.masks.dtype)
            masks[:, y1:y2, x1:x2] = targets.masks[:, y1 - y0 : y2 - y0, x1 - x0 : x2 - x0]
        keep = _kept(
            boxes, _box_area(moved).double(), _box_area(boxes).double(),
            min_visible=self.min_visible, min_size=self.min_size,
        )
        return targets.replace(boxes=boxes, masks=masks)[keep]

    @staticmethod
    def _with_crowd(targets: Targets) -> Targets:
        if targets.iscrowd is not None:
            return targets
        return targets.replace(iscrowd=torch.zeros(len(targets), dtype=torch.bool))

    def __repr__(self) -> str:
        return (
            f"Mosaic(p={self.p}, output_size={self.output_size}, affine={self.affine!r}, "
            f"min_visible={self.min_visible}, min_size={self.min_size})"
        )


# --------------------------------------------------------------------------- pipeline


class ResizeLongest:
    """Downscale a sample so that its longer side is at most ``size`` pixels (never upscales).

    Image bilinear, masks nearest, boxes scaled with the two sides (:func:`resize_sample`).

    Args:
        size: the longest side allowed, in pixels.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"ResizeLongest: size must be positive, got {size}")
        self.size = int(size)

    def __call__(self, sample: Sample) -> Sample:
        """The sample, smaller (:func:`resize_sample`), or itself when it already fits."""
        height, width = sample.image_size
        scale = self.size / max(height, width)
        if scale >= 1.0:
            return sample
        return resize_sample(sample, (max(1, round(height * scale)), max(1, round(width * scale))))

    def __repr__(self) -> str:
        return f"ResizeLongest(size={self.size})"


def training_transforms(
    *,
    dataset: _Indexable | None = None,
    hflip: float = 0.0,
    hsv: Mapping[str, float] | None = None,
    affine: Mapping[str, Any] | None = None,
    mosaic: float = 0.0,
    size: int | None = None,
) -> Transform | None:
    """The training augmentation: [downscale ->] mosaic -> affine -> HSV -> horizontal flip, each when asked for.

    Args:
        dataset: the training set (the mosaic's neighbours); needed when ``mosaic > 0``.
        hflip: flip probability (:class:`~detkit.data.transforms.RandomHorizontalFlip`).
        hsv: :class:`RandomHSV`'s ``h``, ``s``, ``v``, or None.
        affine: :class:`RandomAffine`'s ``degrees``, ``translate``, ``scale``, ``shear``, or None.
        mosaic: mosaic probability; the mosaic's warp back to ``S x S`` is ``affine``, or a
            centred crop without it (samples left whole are then untouched).
        size: when set, every sample is first downscaled to this longer side
            (:class:`ResizeLongest`) and the mosaic tiles are ``size`` pixels: a detector that
            trains at 320 px then augments its 1024 px photos at 320 px, ten times cheaper.

    Returns:
        The transform, a lone flip when only ``hflip`` is set (as before these options
        existed), or None when nothing is asked for.
    """
    steps: list[Transform] = [ResizeLongest(size)] if size is not None else []
    warp = RandomAffine(**affine) if affine is not None else None
    if mosaic > 0:
        if dataset is None:
            raise ValueError("training_transforms: a mosaic needs the dataset")
        crop = warp if warp is not None else RandomAffine(translate=0.0, scale=(1.0, 1.0))
        steps.append(Mosaic(dataset, p=mosaic, affine=crop, output_size=size))
    elif warp is not None:
        steps.append(warp)
    if hsv is not None:
        steps.append(RandomHSV(**hsv))
    if hflip > 0:
        steps.append(RandomHorizontalFlip(p=hflip))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else Compose(steps)
