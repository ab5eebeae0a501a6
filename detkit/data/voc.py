"""Pascal VOC-format detection datasets.

Layout::

    root/Annotations/<id>.xml
    root/JPEGImages/<id>.jpg
    root/ImageSets/Main/<split>.txt      one <id> per line

Conventions:

* **Coordinates.** VOC boxes are 1-based pixel indices, both ends inclusive: a box
  ``xmin=1, xmax=10`` covers the first ten pixel columns. detkit boxes are 0-based
  continuous coordinates, so the box becomes ``(xmin - 1, ymin - 1, xmax, ymax)``
  (``(0, ., 10, .)`` here). Decimal coordinates are accepted.
* **Odd boxes.** Boxes that reach outside the image (per the xml ``<size>``) are
  clipped to it; boxes with ``xmax <= xmin`` or ``ymax <= ymin`` in the file (a stray
  click rather than an object) are dropped. Each is summed up in one warning.
* **Classes.** By default the class names are the sorted set of the names in the
  split's xml files (so ``train`` and ``val`` of one dataset agree only if both
  contain every class: pass ``class_names`` explicitly to be sure). When
  ``class_names`` is given, a name outside it is a DataError naming the xml file.
  Category ids are ``1..K`` in ``class_names`` order.
* **Difficult objects.** Kept as ordinary objects when ``use_difficult`` (the
  default), else kept with ``iscrowd=True``: ignored in training and evaluation.
* **Image ids.** Item ``i`` (the ``i``-th line of the split file) has image id ``i + 1``.
"""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO

from detkit.data.base import DetectionDataset, Sample, coco_from_dict
from detkit.data.images import IMAGE_EXTENSIONS, image_to_tensor, read_image
from detkit.errors import DataError
from detkit.structures import Targets

__all__ = ["VocDataset"]


@dataclass
class _VocObject:
    name: str
    box: tuple[float, float, float, float]  # 0-based xyxy, clipped
    difficult: bool


@dataclass
class _VocRecord:
    xml: Path
    image: Path
    width: int  # 0 when unknown
    height: int
    objects: list[_VocObject]


class VocDataset(DetectionDataset):
    """A Pascal VOC-layout dataset split; see the module docstring for conventions.

    Args:
        root: the folder holding ``Annotations``, ``JPEGImages`` and ``ImageSets``.
        split: the name of a list in ``ImageSets/Main`` (``train``, ``val``, ...).
        class_names: the classes, label ``k`` = ``class_names[k]``; default: the
            sorted set of names found in the split.
        use_difficult: keep difficult objects as ordinary ones; else mark them
            ``iscrowd`` (ignored).

    Raises:
        DataError: the split file or an xml file is missing or malformed, or an
            object's class is not in ``class_names``.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "trainval",
        class_names: list[str] | None = None,
        use_difficult: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.use_difficult = bool(use_difficult)
        ids = self._read_split()
        self._clipped: list[str] = []  # "<xml> object #n" of each clipped box
        self._dropped: list[str] = []  # ... of each dropped box
        self._records = [self._parse_xml(i) for i in ids]
        self._warn_oddities()

        found = sorted({o.name for r in self._records for o in r.objects})
        if class_names is None:
            if not found:
                raise DataError(f"VOC split '{self._split_file}' has no objects; cannot infer class names")
            self.class_names = found
        else:
            self.class_names = list(class_names)
            known = set(self.class_names)
            for r in self._records:
                for o in r.objects:
                    if o.name not in known:
                        raise DataError(
                            f"'{r.xml}' has an object of class {o.name!r}, which is not among "
                            f"class_names {self.class_names}; add it or fix the file"
                        )
        self.category_ids = list(range(1, len(self.class_names) + 1))
        self._label_of = {n: k for k, n in enumerate(self.class_names)}
        self.image_ids = list(range(1, len(self._records) + 1))
        self._coco: COCO | None = None

    # -- parsing --------------------------------------------------------------------
    def _warn_oddities(self) -> None:
        parts = []
        if self._clipped:
            parts.append(
                f"clipped {len(self._clipped)} box(es) reaching outside their image (first: {self._clipped[0]})"
            )
        if self._dropped:
            parts.append(
                f"dropped {len(self._dropped)} box(es) with xmax <= xmin or ymax <= ymin, or "
                f"wholly outside the image (first: {self._dropped[0]})"
            )
        if parts:
            message = f"VOC dataset '{self.root}' ({self.split}): {'; '.join(parts)}"
            warnings.warn(message, stacklevel=3)

    @property
    def _split_file(self) -> Path:
        return self.root / "ImageSets" / "Main" / f"{self.split}.txt"

    def _read_split(self) -> list[str]:
        path = self._split_file
        if not path.is_file():
            main = path.parent
            known = sorted(p.stem for p in main.glob("*.txt")) if main.is_dir() else []
            hint = f"; splits found: {', '.join(known)}" if known else f"; is '{self.root}' a VOC folder?"
            raise DataError(f"VOC split file '{path}' does not exist{hint}")
        ids = []
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if parts:
                ids.append(parts[0])  # ImageSets/Main/<class>_<split>.txt has "<id> <flag>"
        if not ids:
            raise DataError(f"VOC split file '{path}' lists no images")
        return ids

    def _parse_xml(self, image_id: str) -> _VocRecord:
        xml = self.root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            raise DataError(f"annotation '{xml}' (listed in '{self._split_file}') does not exist")
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as e:
            raise DataError(f"annotation '{xml}' is not valid XML ({e}); fix or remove it") from e
        image = self._find_image(image_id, root.findtext("filename"))
        width = _int_or_zero(root.findtext("size/width"))
        height = _int_or_zero(root.findtext("size/height"))
        if width <= 0 or height <= 0:
            width, height = _image_size(image)
        objects = []
        for n, obj in enumerate(root.findall("object")):
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise DataError(f"'{xml}': object #{n} has no <name>")
            coords = []
            for key in ("xmin", "ymin", "xmax", "ymax"):
                text = obj.findtext(f"bndbox/{key}")
                try:
                    value = float(text) if text is not None else math.nan
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise DataError(f"'{xml}': object #{n} ({name}) has no valid bndbox/{key} ({text!r})")
                coords.append(value)
            xmin, ymin, xmax, ymax = coords
            where = f"'{xml}' object #{n}"
            if xmax <= xmin or ymax <= ymin:
                self._dropped.append(where)
                continue
            box = (xmin - 1.0, ymin - 1.0, xmax, ymax)
            if width > 0 and height > 0:
                clipped = (
                    min(max(box[0], 0.0), width),
                    min(max(box[1], 0.0), height),
                    min(max(box[2], 0.0), width),
                    min(max(box[3], 0.0), height),
                )
                if clipped != box:
                    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                        self._dropped.append(where)
                        continue
                    self._clipped.append(where)
                    box = clipped
            difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
            objects.append(_VocObject(name=name, box=box, difficult=difficult))
        return _VocRecord(xml=xml, image=image, width=width, height=height, objects=objects)

    def _find_image(self, image_id: str, filename: str | None) -> Path:
        folder = self.root / "JPEGImages"
        candidates = [folder / f"{image_id}.jpg"]
        if filename:
            candidates.append(folder / filename.strip())
        candidates += [folder / f"{image_id}{ext}" for ext in IMAGE_EXTENSIONS]
        for c in candidates:
            if c.is_file():
                return c
        return candidates[0]  # missing: reported when the item is loaded

    # -- protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of images in the split."""
        return len(self._records)

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self._records[index].image

    def _targets_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes ``(G, 4)`` float32, labels ``(G,)`` int64, iscrowd ``(G,)`` bool of an item."""
        objs = self._records[index].objects
        boxes = np.asarray([o.box for o in objs], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray([self._label_of[o.name] for o in objs], dtype=np.int64)
        iscrowd = np.asarray([o.difficult and not self.use_difficult for o in objs], dtype=bool)
        return boxes, labels, iscrowd

    def __getitem__(self, index: int) -> Sample:
        """Image ``(3, H, W)`` and targets of item ``index``; DataError if the image is unusable."""
        record = self._records[index]
        array = read_image(record.image)
        height, width = array.shape[:2]
        if record.width > 0 and (record.height, record.width) != (height, width):
            raise DataError(
                f"image '{record.image}' is {height}x{width} (HxW) but '{record.xml}' says "
                f"{record.height}x{record.width}; replace the image or fix <size>"
            )
        boxes, labels, iscrowd = self._targets_arrays(index)
        if record.width <= 0:  # the xml has no <size>: clip to the image now
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels, iscrowd = boxes[keep], labels[keep], iscrowd[keep]
        targets = Targets(
            boxes=torch.from_numpy(boxes),
            labels=torch.from_numpy(labels),
            iscrowd=torch.from_numpy(iscrowd),
        )
        return Sample(
            image=image_to_tensor(array),
            targets=targets,
            image_id=self.image_ids[index],
            file_name=record.image.name,
        )

    def coco_gt(self) -> COCO:
        """The split as an in-memory COCO ground truth (ignored objects have iscrowd=1)."""
        if self._coco is None:
            self._coco = coco_from_dict(self._coco_dict())
        return self._coco

    def _coco_dict(self) -> dict[str, Any]:
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for index, (record, image_id) in enumerate(zip(self._records, self.image_ids)):
            images.append(
                {
                    "id": image_id,
                    "file_name": record.image.name,
                    "width": record.width,
                    "height": record.height,
                }
            )
            boxes, labels, iscrowd = self._targets_arrays(index)
            for box, label, crowd in zip(boxes.tolist(), labels.tolist(), iscrowd.tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": self.category_ids[label],
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": int(crowd),
                    }
                )
        categories = [{"id": i, "name": n} for i, n in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def __repr__(self) -> str:
        return f"VocDataset(root='{self.root}', split='{self.split}', {len(self)} images, classes={self.class_names})"


def _int_or_zero(text: str | None) -> int:
    try:
        return int(float(text)) if text is not None else 0
    except ValueError:
        return 0


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` read from the image itself, ``(0, 0)`` if it cannot be read."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except (OSError, cv2.error):
        image = None
    if image is None:
        return 0, 0
    return int(image.shape[1]), int(image.shape[0])
