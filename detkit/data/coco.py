"""COCO-format detection datasets (instances json + an image folder).

Label ``k`` is the ``k``-th category in increasing category-id order, so
``category_ids[k]`` maps labels back to the ids of the file. Boxes are converted
from COCO ``[x, y, w, h]`` to ``xyxy`` float32 and clipped to the image; boxes that
are empty (``w <= 0`` or ``h <= 0``, also after clipping) are dropped with one
warning that says how many. ``iscrowd`` becomes :attr:`Targets.iscrowd`.

Shape glossary: G objects of one image, H/W image size.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from detkit.data.base import DetectionDataset, Sample, coco_from_dict
from detkit.data.images import image_to_tensor, read_image
from detkit.errors import DataError
from detkit.structures import Targets

__all__ = ["CocoDataset", "default_images_dir", "load_coco_json"]


def load_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read and check the top level of a COCO instances file.

    Raises:
        DataError: the file is missing, is not JSON, or lacks ``images`` /
            ``categories`` lists. The message names the file.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise DataError(f"annotation file '{path}' does not exist; check ann_file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file '{path}' is not valid JSON ({e}); fix or regenerate it") from e
    if not isinstance(data, dict):
        raise DataError(f"annotation file '{path}' is not a COCO instances file (top level is not an object)")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"annotation file '{path}' has no {key!r} list; is it a COCO instances file?")
    annotations = data.setdefault("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"annotation file '{path}': 'annotations' must be a list")
    return data


def default_images_dir(ann_file: str | Path) -> Path:
    """Where the images of ``ann_file`` are expected when none is given.

    In the COCO layout ``root/annotations/instances_val2017.json`` the images are in
    ``root/val2017`` (also tried: ``root/images/val2017``, ``root/images``); otherwise
    they are next to the json file.
    """
    path = Path(ann_file)
    parent = path.parent
    if parent.name == "annotations":
        split = path.stem.rsplit("_", 1)[-1]
        for candidate in (
            parent.parent / split,
            parent.parent / "images" / split,
            parent.parent / "images",
        ):
            if candidate.is_dir():
                return candidate
    return parent


@dataclass
class _ImageGt:
    """The usable annotations of one image, in file order.

    boxes ``(G, 4)`` xyxy float32, labels ``(G,)`` int64, iscrowd ``(G,)`` bool, and
    the annotation records (for masks).
    """

    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    anns: list[dict[str, Any]]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class CocoDataset(DetectionDataset):
    """A COCO instances file and its images.

    Args:
        ann_file: the instances json.
        images: the image folder; ``file_name`` of each image is relative to it.
            Default: see :func:`default_images_dir`.
        masks: also load instance masks (polygons and RLE, crowd RLE too) into
            ``Targets.masks`` ``(G, H, W)`` uint8.
        skip_empty: leave out images without any non-crowd object (for training).

    Raises:
        DataError: the json is missing or invalid, or an annotation record has a bad
            ``bbox``, ``category_id`` or ``image_id`` (the message names its id).
    """

    def __init__(
        self,
        *,
        ann_file: str | Path,
        images: str | Path | None = None,
        masks: bool = False,
        skip_empty: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        data = load_coco_json(self.ann_file)
        if images is not None:
            self.images_dir = Path(images)
            if not self.images_dir.is_dir():
                raise DataError(f"image folder '{self.images_dir}' does not exist; check images=")
        else:
            self.images_dir = default_images_dir(self.ann_file)
        self.masks = bool(masks)
        self.skip_empty = bool(skip_empty)

        categories = self._check_categories(data["categories"])
        self.category_ids = [int(c["id"]) for c in categories]
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        self._label_of = {cid: k for k, cid in enumerate(self.category_ids)}

        self._images = self._check_images(data["images"])
        self._gt = self._parse_annotations(data["annotations"])
        self._coco = coco_from_dict(data)

        ids = sorted(self._images)
        if self.skip_empty:
            ids = [i for i in ids if (~self._gt[i].iscrowd).any()]
        self.image_ids = ids

    # -- parsing --------------------------------------------------------------------
    def _bad(self, what: str) -> DataError:
        return DataError(f"annotation file '{self.ann_file}': {what}")

    def _check_categories(self, categories: list[Any]) -> list[dict[str, Any]]:
        seen: set[int] = set()
        for c in categories:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int):
                raise self._bad(f"category {c!r} has no integer 'id'; fix the 'categories' list")
            if c["id"] in seen:
                raise self._bad(f"category id {c['id']} appears twice in 'categories'")
            seen.add(c["id"])
        if not categories:
            raise self._bad("the 'categories' list is empty; a detection dataset needs at least one")
        return sorted(categories, key=lambda c: c["id"])

    def _check_images(self, images: list[Any]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for n, img in enumerate(images):
            if not isinstance(img, dict) or not isinstance(img.get("id"), int):
                raise self._bad(f"image record #{n} has no integer 'id'")
            if not isinstance(img.get("file_name"), str):
                raise self._bad(f"image id {img['id']} has no 'file_name'")
            if img["id"] in out:
                raise self._bad(f"image id {img['id']} appears twice in 'images'")
            if self.masks and not (isinstance(img.get("width"), int) and isinstance(img.get("height"), int)):
                raise self._bad(f"image id {img['id']} lacks 'width'/'height', which masks need")
            out[img["id"]] = img
        return out

    def _parse_annotations(self, annotations: list[Any]) -> dict[int, _ImageGt]:
        per_image: dict[int, list[tuple[list[float], int, bool, dict[str, Any]]]] = {i: [] for i in self._images}
        num_empty = 0
        for n, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                raise self._bad(f"annotation #{n} is not an object")
            ann_id = ann.get("id", f"#{n} (no id)")
            image_id = ann.get("image_id")
            if image_id not in self._images:
                raise self._bad(f"annotation id {ann_id} refers to unknown image_id {image_id!r}")
            if ann.get("category_id") not in self._label_of:
                raise self._bad(
                    f"annotation id {ann_id} has unknown category_id {ann.get('category_id')!r}; "
                    f"known ids: {self.category_ids}"
                )
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                raise self._bad(f"annotation id {ann_id} has bad bbox {bbox!r}; expected [x, y, w, h] numbers")
            if self.masks and "segmentation" not in ann:
                raise self._bad(f"annotation id {ann_id} has no 'segmentation', which masks=True needs")
            crowd = bool(ann.setdefault("iscrowd", 0))
            x, y, w, h = (float(v) for v in bbox)
            ann.setdefault("area", max(w, 0.0) * max(h, 0.0))  # pycocotools' COCOeval needs it
            box = [x, y, x + w, y + h]
            img = self._images[image_id]
            if isinstance(img.get("width"), int) and isinstance(img.get("height"), int):
                box = _clip(box, img["width"], img["height"])
            if w <= 0 or h <= 0 or box[2] <= box[0] or box[3] <= box[1]:
                num_empty += 1
                continue
            per_image[image_id].append((box, self._label_of[ann["category_id"]], crowd, ann))
        if num_empty:
            warnings.warn(
                f"{self.ann_file}: dropped {num_empty} annotation(s) with empty boxes "
                "(w or h <= 0, or outside the image)",
                stacklevel=3,
            )
        return {image_id: _pack(items) for image_id, items in per_image.items()}

    # -- protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of images."""
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self.images_dir / self._images[self.image_ids[index]]["file_name"]

    def coco_gt(self) -> COCO:
        """The annotation file as a pycocotools COCO object (all images, all annotations)."""
        return self._coco

    def __getitem__(self, index: int) -> Sample:
        """Image ``(3, H, W)`` and targets of item ``index``.

        Raises:
            DataError: the image file is missing or corrupt, its size differs from
                the annotation file's, or a segmentation cannot be decoded.
        """
        image_id = self.image_ids[index]
        info = self._images[image_id]
        path = self.images_dir / info["file_name"]
        if not path.is_file():
            raise DataError(
                f"image '{path}' (image id {image_id} of '{self.ann_file}') does not exist; "
                "check the images folder (images=) or remove the image from the annotations"
            )
        array = read_image(path)
        height, width = array.shape[:2]
        expected = (info.get("height"), info.get("width"))
        if expected != (None, None) and expected != (height, width):
            raise DataError(
                f"image '{path}' is {height}x{width} (HxW) but '{self.ann_file}' says "
                f"{expected[0]}x{expected[1]}; replace the image or fix its record"
            )
        gt = self._gt[image_id]
        boxes = gt.boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        targets = Targets(
            boxes=torch.from_numpy(boxes[keep]),
            labels=torch.from_numpy(gt.labels[keep]),
            iscrowd=torch.from_numpy(gt.iscrowd[keep]),
            masks=self._masks(gt, keep, height, width) if self.masks else None,
        )
        return Sample(
            image=image_to_tensor(array),
            targets=targets,
            image_id=image_id,
            file_name=info["file_name"],
        )

    def _masks(self, gt: _ImageGt, keep: np.ndarray, height: int, width: int) -> torch.Tensor:
        """``(G, H, W)`` uint8 masks of the kept annotations."""
        masks = np.zeros((int(keep.sum()), height, width), dtype=np.uint8)
        kept = [a for a, k in zip(gt.anns, keep) if k]
        for g, ann in enumerate(kept):
            try:
                masks[g] = self._coco.annToMask(ann)
            except Exception as e:  # pycocotools raises assorted errors on bad input
                raise DataError(
                    f"annotation file '{self.ann_file}': cannot decode the segmentation of "
                    f"annotation id {ann.get('id')} ({type(e).__name__}: {e}); fix or remove it"
                ) from e
        return torch.from_numpy(masks)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(ann_file='{self.ann_file}', images='{self.images_dir}', "
            f"{len(self)} images, {self.num_classes} classes)"
        )


def _clip(box: list[float], width: int, height: int) -> list[float]:
    return [
        min(max(box[0], 0.0), width),
        min(max(box[1], 0.0), height),
        min(max(box[2], 0.0), width),
        min(max(box[3], 0.0), height),
    ]


def _pack(items: list[tuple[list[float], int, bool, dict[str, Any]]]) -> _ImageGt:
    if not items:
        return _ImageGt(
            boxes=np.zeros((0, 4), dtype=np.float32),
            labels=np.zeros((0,), dtype=np.int64),
            iscrowd=np.zeros((0,), dtype=bool),
            anns=[],
        )
    return _ImageGt(
        boxes=np.asarray([it[0] for it in items], dtype=np.float32),
        labels=np.asarray([it[1] for it in items], dtype=np.int64),
        iscrowd=np.asarray([it[2] for it in items], dtype=bool),
        anns=[it[3] for it in items],
    )
