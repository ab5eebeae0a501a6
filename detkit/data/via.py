"""VIA (VGG Image Annotator) polygon datasets: one folder of images and a VIA json.

Layout::

    root/via_region_data.json      VIA 1.x/2.x region data (or a full VIA 2 project)
    root/<filename>                the images the json names

The json maps keys to image records ``{"filename", "size", "regions", ...}``
(``size`` is the file size in bytes, not the image size). ``regions`` is a dict
``{"0": region, ...}`` (VIA 1) or a list of regions (VIA 2); each region has
``shape_attributes`` and ``region_attributes``. A full VIA 2 project file (records
under ``"_via_img_metadata"``) is accepted too.

Conventions:

* **Shapes.** ``polygon`` regions are used as they are; ``rect`` regions become
  4-corner polygons. Other shapes (``circle``, ``ellipse``, ``point``,
  ``polyline``, ...) and polygons with fewer than 3 points are skipped, summed up
  in one warning.
* **Coordinates.** Polygon points are continuous pixel coordinates of the image on
  disk. VIA does not store the image size, so coordinates written for another
  resolution (e.g. a downscaled copy of the images) cannot be rescaled reliably:
  a region reaching more than ``max(2 px, 2 %)`` beyond its image is a DataError
  (raised when the item is loaded, or by :meth:`ViaDataset.coco_gt`); smaller
  overshoots are clipped.
* **Boxes** are the polygon extents ``(min x, min y, max x, max y)`` clipped to the
  image; regions whose clipped box is empty are dropped.
* **Masks** are rasterized by pycocotools from the polygon, exactly as
  ``COCO.annToMask`` does for :meth:`ViaDataset.coco_gt`; the COCO ``area`` is the
  pixel count of that mask.
* **Classes.** One class by default (``class_names`` with one name, else
  ``"object"``). With ``class_attribute``, the class of a region is
  ``region_attributes[class_attribute]``: a string, or a dict of checkboxes with
  exactly one true entry. Category ids are ``1..K`` in ``class_names`` order.
* **Image ids.** Images are sorted by file name; item ``i`` has image id ``i + 1``.

Shape glossary: G regions of one image, H/W image size.
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
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detkit.data.base import DetectionDataset, Sample, coco_from_dict
from detkit.data.images import image_to_tensor, read_image
from detkit.errors import DataError
from detkit.structures import Targets

__all__ = ["ViaDataset", "load_via_json"]

#: How far (pixels, and fraction of the image side) a point may lie beyond the image.
_OVERSHOOT_PX = 2.0
_OVERSHOOT_FRAC = 0.02


def load_via_json(path: str | Path) -> dict[str, Any]:
    """Read a VIA region-data json and return its ``{key: image record}`` dict.

    A full VIA 2 project file is unwrapped to its ``_via_img_metadata``.

    Raises:
        DataError: the file is missing, is not JSON, or is not a dict of image
            records. The message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"VIA annotation file '{p}' does not exist; check root= and json_name=")
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"VIA annotation file '{p}' is not valid JSON ({e}); fix or re-export it") from e
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]
    if not isinstance(data, dict):
        raise DataError(
            f"VIA annotation file '{p}' is not VIA region data (top level is not an object); "
            "export it with 'Annotation > Export annotations (as json)'"
        )
    return data


@dataclass
class _Region:
    """One usable region: its polygon ``[x0, y0, x1, y1, ...]``, label and origin."""

    polygon: list[float]
    label: int
    where: str  # "image 'x.jpg' region #n", for messages


@dataclass
class _ViaRecord:
    file_name: str
    regions: list[_Region]


class ViaDataset(DetectionDataset):
    """A folder of images annotated with VIA polygons; see the module docstring.

    Args:
        root: the folder holding the json and the images.
        json_name: the json file name inside ``root``.
        class_names: the class names, label ``k`` = ``class_names[k]``. Without
            ``class_attribute`` at most one name (default ``["object"]``); with it,
            default: the sorted set of values found.
        class_attribute: the ``region_attributes`` key holding each region's class.
        masks: also load instance masks into ``Targets.masks`` ``(G, H, W)`` uint8.

    Raises:
        DataError: the json is missing or malformed, a record or region is malformed
            (the message names the file and the image/region), or a class is not in
            ``class_names``.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        json_name: str = "via_region_data.json",
        class_names: list[str] | None = None,
        class_attribute: str | None = None,
        masks: bool = False,
    ) -> None:
        self.root = Path(root)
        self.json_file = self.root / json_name
        self.class_attribute = class_attribute
        self.masks = bool(masks)
        data = load_via_json(self.json_file)

        if class_attribute is None:
            names = list(class_names) if class_names is not None else ["object"]
            if len(names) != 1:
                raise DataError(
                    f"ViaDataset('{self.root}'): class_names {names} has {len(names)} names but no "
                    "class_attribute says which region is which; pass one name or set class_attribute"
                )
            self.class_names = names
        raw = self._parse(data)
        if class_attribute is not None:
            found = sorted({name for _, regions in raw for _, name, _ in regions})
            if class_names is None:
                if not found:
                    raise DataError(f"VIA annotation file '{self.json_file}' has no regions; cannot infer class names")
                self.class_names = found
            else:
                self.class_names = list(class_names)
                unknown = [n for n in found if n not in set(self.class_names)]
                if unknown:
                    where = next(w for _, regions in raw for _, name, w in regions if name == unknown[0])
                    raise DataError(
                        f"VIA annotation file '{self.json_file}': {where} has class {unknown[0]!r}, which is not "
                        f"among class_names {self.class_names}; add it or fix the region attribute"
                    )
        label_of = {n: k for k, n in enumerate(self.class_names)}
        self._records = [
            _ViaRecord(
                file_name=file_name,
                regions=[_Region(polygon=p, label=label_of.get(n, 0), where=w) for p, n, w in regions],
            )
            for file_name, regions in raw
        ]
        self.category_ids = list(range(1, len(self.class_names) + 1))
        self.image_ids = list(range(1, len(self._records) + 1))
        self._coco: COCO | None = None

    # -- parsing --------------------------------------------------------------------
    def _bad(self, what: str) -> DataError:
        return DataError(f"VIA annotation file '{self.json_file}': {what}")

    def _parse(self, data: dict[str, Any]) -> list[tuple[str, list[tuple[list[float], str, str]]]]:
        """``[(file_name, [(polygon, class name, where), ...]), ...]`` sorted by file name."""
        out: dict[str, list[tuple[list[float], str, str]]] = {}
        skipped: list[str] = []  # "<where> (<shape>)"
        for key, record in data.items():
            if not isinstance(record, dict) or not isinstance(record.get("filename"), str) or not record["filename"]:
                raise self._bad(f"record {key!r} has no 'filename'; is this a VIA region-data export?")
            file_name = record["filename"]
            if file_name in out:
                raise self._bad(f"image '{file_name}' appears in two records; merge or remove one")
            regions = record.get("regions", [])
            if isinstance(regions, dict):
                region_list = list(regions.values())
            elif isinstance(regions, list):
                region_list = regions
            elif regions is None:
                region_list = []
            else:
                raise self._bad(f"image '{file_name}': 'regions' must be a list or an object")
            parsed = []
            for n, region in enumerate(region_list):
                where = f"image '{file_name}' region #{n}"
                polygon = self._polygon(region, where, skipped)
                if polygon is None:
                    continue
                parsed.append((polygon, self._class_name(region, where), where))
            out[file_name] = parsed
        if skipped:
            warnings.warn(
                f"VIA annotation file '{self.json_file}': skipped {len(skipped)} region(s) that are not "
                f"polygons or rectangles, or have fewer than 3 points (first: {skipped[0]})",
                stacklevel=3,
            )
        return sorted(out.items())

    def _polygon(self, region: Any, where: str, skipped: list[str]) -> list[float] | None:
        """The region as a flat polygon ``[x0, y0, ...]``; None (and noted) if unusable."""
        if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
            raise self._bad(f"{where} has no 'shape_attributes' object")
        shape = region["shape_attributes"]
        name = shape.get("name")
        if name == "polygon":
            xs, ys = shape.get("all_points_x"), shape.get("all_points_y")
            if not (isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys)):
                raise self._bad(f"{where}: all_points_x / all_points_y must be lists of equal length")
            if not all(_is_number(v) for v in xs + ys):
                raise self._bad(f"{where}: polygon points must be finite numbers")
            if len(xs) < 3:
                skipped.append(f"{where} (polygon with {len(xs)} point(s))")
                return None
            return [float(v) for xy in zip(xs, ys) for v in xy]
        if name == "rect":
            values = [shape.get(k) for k in ("x", "y", "width", "height")]
            if not all(_is_number(v) for v in values):
                raise self._bad(f"{where}: rect needs numeric x, y, width, height (got {values})")
            x, y, w, h = (float(v) for v in values)
            return [x, y, x + w, y, x + w, y + h, x, y + h]
        skipped.append(f"{where} ({name!r} shape)")
        return None

    def _class_name(self, region: dict[str, Any], where: str) -> str:
        if self.class_attribute is None:
            return self.class_names[0]
        attrs = region.get("region_attributes")
        value = attrs.get(self.class_attribute) if isinstance(attrs, dict) else None
        if isinstance(value, dict):  # checkbox attribute: {"name": true, ...}
            chosen = [str(k) for k, v in value.items() if v]
            if len(chosen) == 1:
                return chosen[0]
            raise self._bad(
                f"{where}: region attribute {self.class_attribute!r} has {len(chosen)} checked values "
                f"{chosen}; exactly one is needed"
            )
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
        raise self._bad(f"{where} has no region attribute {self.class_attribute!r} (got {value!r})")

    # -- geometry -------------------------------------------------------------------
    def _check_fits(self, record: _ViaRecord, height: int, width: int) -> None:
        """DataError if a region reaches far beyond the image (coordinates of another size)."""
        for region in record.regions:
            xs, ys = region.polygon[0::2], region.polygon[1::2]
            tol_x = max(_OVERSHOOT_PX, _OVERSHOOT_FRAC * width)
            tol_y = max(_OVERSHOOT_PX, _OVERSHOOT_FRAC * height)
            if max(xs) > width + tol_x or max(ys) > height + tol_y or min(xs) < -tol_x or min(ys) < -tol_y:
                raise self._bad(
                    f"{region.where} spans x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g} but the "
                    f"image '{self.root / record.file_name}' is {width}x{height} (WxH); the coordinates "
                    "seem to be for another image size: re-export them for these images"
                )

    @staticmethod
    def _boxes(record: _ViaRecord, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Clipped boxes ``(G, 4)`` float32 and the keep mask ``(G,)`` of non-empty ones."""
        boxes = np.zeros((len(record.regions), 4), dtype=np.float32)
        for g, region in enumerate(record.regions):
            xs, ys = region.polygon[0::2], region.polygon[1::2]
            boxes[g] = (min(xs), min(ys), max(xs), max(ys))
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes, keep

    @staticmethod
    def _rle(polygon: list[float], height: int, width: int) -> Any:
        """The polygon as a pycocotools RLE (the same rasterization as ``COCO.annToMask``)."""
        return mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))

    # -- protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of images."""
        return len(self._records)

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self.root / self._records[index].file_name

    def __getitem__(self, index: int) -> Sample:
        """Image ``(3, H, W)`` and targets of item ``index``.

        Raises:
            DataError: the image is missing or corrupt, or its regions do not fit it.
        """
        record = self._records[index]
        path = self.root / record.file_name
        if not path.is_file():
            raise DataError(
                f"image '{path}' (listed in '{self.json_file}') does not exist; "
                "add the image or remove its record from the json"
            )
        array = read_image(path)
        height, width = array.shape[:2]
        self._check_fits(record, height, width)
        boxes, keep = self._boxes(record, height, width)
        kept = [r for r, k in zip(record.regions, keep) if k]
        masks = None
        if self.masks:
            masks_np = np.zeros((len(kept), height, width), dtype=np.uint8)
            for g, region in enumerate(kept):
                masks_np[g] = mask_utils.decode(self._rle(region.polygon, height, width))
            masks = torch.from_numpy(masks_np)
        targets = Targets(
            boxes=torch.from_numpy(boxes[keep]),
            labels=torch.tensor([r.label for r in kept], dtype=torch.int64),
            iscrowd=torch.zeros((len(kept),), dtype=torch.bool),
            masks=masks,
        )
        return Sample(
            image=image_to_tensor(array),
            targets=targets,
            image_id=self.image_ids[index],
            file_name=record.file_name,
        )

    def coco_gt(self) -> COCO:
        """The dataset as an in-memory COCO ground truth (polygon segmentations, iscrowd 0).

        Reads the size of every image (header only). An image that cannot be read
        gets the size of its regions' extents, with a warning.

        Raises:
            DataError: the regions of an image do not fit it.
        """
        if self._coco is None:
            self._coco = coco_from_dict(self._coco_dict())
        return self._coco

    def _coco_dict(self) -> dict[str, Any]:
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        unreadable: list[str] = []
        for record, image_id in zip(self._records, self.image_ids):
            size = _image_size(self.root / record.file_name)
            if size is None:
                unreadable.append(record.file_name)
                xs = [v for r in record.regions for v in r.polygon[0::2]] or [1.0]
                ys = [v for r in record.regions for v in r.polygon[1::2]] or [1.0]
                width, height = max(1, math.ceil(max(xs))), max(1, math.ceil(max(ys)))
            else:
                width, height = size
                self._check_fits(record, height, width)
            images.append({"id": image_id, "file_name": record.file_name, "width": width, "height": height})
            boxes, keep = self._boxes(record, height, width)
            for region, box, k in zip(record.regions, boxes.tolist(), keep.tolist()):
                if not k:
                    continue
                area = float(mask_utils.area(self._rle(region.polygon, height, width)))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": self.category_ids[region.label],
                        "segmentation": [list(region.polygon)],
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "area": area,
                        "iscrowd": 0,
                    }
                )
        if unreadable:
            warnings.warn(
                f"VIA dataset '{self.root}': {len(unreadable)} image(s) could not be read for coco_gt "
                f"(first: '{unreadable[0]}'); their size was taken from the region extents",
                stacklevel=3,
            )
        categories = [{"id": i, "name": n} for i, n in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def __repr__(self) -> str:
        return f"ViaDataset(root='{self.root}', {len(self)} images, classes={self.class_names})"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the image header, None if it cannot be read.

    Like :func:`~detkit.data.images.read_image`, the EXIF orientation is ignored.
    """
    try:
        with Image.open(path) as image:
            return int(image.width), int(image.height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
