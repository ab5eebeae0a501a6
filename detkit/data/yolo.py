"""YOLO-format (Ultralytics / darknet) detection and segmentation datasets.

Layout (Ultralytics)::

    data.yaml                   names, and the image sources of each split
    images/train/a.jpg ...      images (any folder depth)
    labels/train/a.txt ...      one label file per image

``data.yaml`` holds ``names`` (a list, or a mapping ``{0: name, 1: name, ...}``
with the indices ``0..K-1``), an optional ``path`` (the dataset root; relative to
the yaml's folder, default: that folder), and ``train`` / ``val`` / ``test``: each
an image folder (searched recursively), a text file listing image paths (one a
line, relative to the list file's folder), or a list of either; relative to
``path``. Other keys (``nc``, ``download``, ...) are ignored, but ``nc`` must match
``names`` when given. Without a ``data.yaml``, a ``root`` folder may hold
``images/<split>/`` (or ``<split>/images/``), ``labels/...`` beside it and
``classes.txt`` (one class name a line).

Conventions:

* **Label files.** The label file of an image is found by the Ultralytics rule:
  the last ``/images/`` component of the image path becomes ``/labels/`` and the
  extension ``.txt`` (``images/train/a.jpg`` -> ``labels/train/a.txt``; an image
  path without an ``images`` component has its labels beside it). An image without
  a label file, or with an empty one, is background (no objects).
* **Lines.** ``class cx cy w h`` is a box: centre and size, normalized by the image
  width and height to ``[0, 1]``. ``class x1 y1 x2 y2 x3 y3 ...`` (an odd number of
  values, 7 or more) is a polygon in normalized coordinates: its box is its extent,
  and with ``masks=True`` it is the object's mask (a box line's mask is its
  rectangle). ``class`` is an index ``0..K-1`` into ``names``.
* **Bad lines** (another number of values, a value that is not a number, a class
  out of range, a coordinate outside ``[-0.01, 1.01]``, i.e. not normalized) are a
  :class:`~detkit.errors.DataError` naming the label file and line, raised when the
  dataset is built, as the COCO and VOC readers do for a bad record. Boxes with
  ``w`` or ``h`` 0 are dropped, summed up in one warning (as COCO's empty boxes);
  boxes reaching outside the image are clipped.
* **Pixels.** Coordinates are scaled to the image's pixels and rounded to 0.01 px.
  A label file holds 6 decimals of the image side (0.001 px at 1000 px); the
  rounding gives back exactly the source coordinates of files converted from pixel
  coordinates with two decimals (COCO's, VIA's), which matters to pycocotools'
  rasterizer: it rounds polygon vertices to a fifth of a pixel, so 15.49999 and
  15.5 fill different pixels.
* **Classes.** Category ids are ``1..K`` (label ``k`` is category ``k + 1``). YOLO
  has no crowd flag: ``iscrowd`` is always false.
* **Image ids.** The images of a split are sorted by path (as Ultralytics sorts
  them); item ``i`` has image id ``i + 1``. Not supported: pose (keypoint) labels,
  oriented boxes, and the ``download:`` of a yaml.

Shape glossary: G objects of one image, H/W image size.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml as pyyaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detkit.data.base import DetectionDataset, Sample, coco_from_dict
from detkit.data.images import IMAGE_EXTENSIONS, image_to_tensor, read_image
from detkit.errors import ConfigError, DataError
from detkit.structures import Targets

__all__ = ["SPLIT_KEYS", "YoloDataset", "label_path", "parse_names", "read_data_yaml", "read_image_size"]

#: The split keys of a ``data.yaml``, in the order they are listed.
SPLIT_KEYS: tuple[str, ...] = ("train", "val", "test")

#: How far beyond ``[0, 1]`` a normalized value may lie before it counts as not normalized.
_TOLERANCE = 0.01

#: Pixel coordinates are rounded to this many decimals (see the module docstring).
_DECIMALS_PX = 2

_BOX_VALUES = 5  # class cx cy w h
_MIN_POLYGON_VALUES = 7  # class and three points


def label_path(image: str | Path) -> Path:
    """The label file of an image by the Ultralytics rule.

    The last ``images`` folder component of the path becomes ``labels`` and the
    extension ``.txt``: ``d/images/train/a.jpg`` -> ``d/labels/train/a.txt``; a path
    without an ``images`` component keeps its folder (``d/a.jpg`` -> ``d/a.txt``).
    """
    text = os.fspath(image)
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = labels.join(text.rsplit(images, 1))
    return Path(text).with_suffix(".txt")


def read_data_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YOLO ``data.yaml`` as a dict.

    Raises:
        DataError: the file is missing, is not YAML, or is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"YOLO data file '{p}' does not exist; check yaml= (or --data)")
    try:
        data = pyyaml.safe_load(p.read_text(encoding="utf-8"))
    except (pyyaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"YOLO data file '{p}' is not valid YAML ({e}); fix it") from e
    if not isinstance(data, dict):
        raise DataError(f"YOLO data file '{p}' must hold a mapping (names:, train:, val:)")
    return data


def parse_names(names: Any, where: str) -> list[str]:
    """``names`` of a data.yaml (a list, or a mapping 0..K-1 -> name) as a list.

    Raises:
        DataError: not a list or mapping, indices with gaps, no names, a name twice;
            the message starts with ``where``.
    """
    if isinstance(names, list):
        out = [str(n) for n in names]
    elif isinstance(names, dict):
        try:
            index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(f"{where}: the keys of 'names' must be class indices 0, 1, ...") from None
        if sorted(index) != list(range(len(index))):
            raise DataError(
                f"{where}: 'names' must number the classes 0..{len(index) - 1} without gaps, got {sorted(index)}"
            )
        out = [index[k] for k in range(len(index))]
    else:
        raise DataError(f"{where}: 'names' must be a list of class names or a mapping index -> name")
    if not out:
        raise DataError(f"{where}: 'names' is empty; a detection dataset needs at least one class")
    if len(set(out)) != len(out):
        raise DataError(f"{where}: 'names' lists a class twice: {out}")
    return out


@dataclass
class _Object:
    """One label line: class, normalized box ``xyxy`` (unclipped), polygon (normalized) or None."""

    label: int
    box: tuple[float, float, float, float]
    polygon: list[float] | None


@dataclass
class _YoloRecord:
    image: Path
    file_name: str
    objects: list[_Object]


class YoloDataset(DetectionDataset):
    """A split of a YOLO-format dataset; see the module docstring for the layout.

    Args:
        root: the dataset folder: one holding ``data.yaml``, or ``images/<split>``,
            ``labels/<split>`` and ``classes.txt``. Give ``root`` or ``yaml``.
        yaml: the ``data.yaml`` file.
        split: the split to read: ``train``, ``val`` or ``test`` (a key of the yaml).
        masks: also load instance masks (polygons; a box line's mask is its
            rectangle) into ``Targets.masks`` ``(G, H, W)`` uint8.

    Raises:
        DataError: the yaml, a split or an image source is missing or malformed, or
            a label line is bad (the message names the label file and line).
    """

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        yaml: str | Path | None = None,
        split: str = "train",
        masks: bool = False,
    ) -> None:
        if (root is None) == (yaml is None):
            raise ConfigError("a yolo dataset needs root (a dataset folder) or yaml (its data.yaml), not both")
        self.split = str(split)
        self.masks = bool(masks)
        self.yaml_file: Path | None = None
        self._names_root: Path | None = None  # what file names are relative to (the split's one folder)
        if yaml is None:
            assert root is not None
            self.root = Path(os.path.normpath(root))
            if not self.root.is_dir():
                raise DataError(f"YOLO dataset folder '{self.root}' does not exist; check root=")
            for name in ("data.yaml", "data.yml"):
                if (self.root / name).is_file():
                    self.yaml_file = self.root / name
        else:
            self.yaml_file = Path(yaml)
        if self.yaml_file is not None:
            images = self._from_yaml(self.yaml_file)
        else:
            images = self._from_folder()
        self._records = self._read_labels(images)
        self.category_ids = list(range(1, len(self.class_names) + 1))
        self.image_ids = list(range(1, len(self._records) + 1))
        self._sizes: dict[int, tuple[int, int] | None] = {}
        self._coco: COCO | None = None

    # -- finding the images ---------------------------------------------------------------
    def _from_yaml(self, file: Path) -> list[Path]:
        data = read_data_yaml(file)
        where = f"YOLO data file '{file}'"
        if "names" not in data:
            raise DataError(f"{where} has no 'names' (the class names, e.g. names: [cat, dog])")
        self.class_names = parse_names(data["names"], where)
        nc = data.get("nc")
        if nc is not None and nc != len(self.class_names):
            raise DataError(f"{where}: nc is {nc} but 'names' has {len(self.class_names)} classes; fix one of them")
        folder = file.parent
        if data.get("path"):
            base = Path(os.path.expanduser(str(data["path"])))
            self.root = Path(os.path.normpath(base if base.is_absolute() else folder / base))
            if not self.root.is_dir():
                raise DataError(
                    f"{where}: path '{data['path']}' ({self.root}) is not a folder; fix it, or remove 'path' "
                    "to take the yaml's folder as the dataset root"
                )
        else:
            self.root = folder
        entries = data.get(self.split)
        if not entries:
            present = [k for k in SPLIT_KEYS if data.get(k)]
            raise DataError(
                f"{where} has no split {self.split!r}; it lists: {', '.join(present) or 'none'} (split=, --split)"
            )
        sources = entries if isinstance(entries, list) else [entries]
        if len(sources) == 1 and isinstance(sources[0], str):
            self._names_root = self._entry_path(sources[0])
        images: list[Path] = []
        for entry in sources:
            if not isinstance(entry, str):
                raise DataError(f"{where}: {self.split}: {entry!r} is not a path")
            images += self._images_of(self._entry_path(entry), where=f"{where} ({self.split}: {entry})")
        return self._unique(images, f"{where} ({self.split})")

    def _from_folder(self) -> list[Path]:
        names_file = self.root / "classes.txt"
        where = f"YOLO dataset folder '{self.root}'"
        if not names_file.is_file():
            raise DataError(
                f"{where} has neither data.yaml nor classes.txt; write a data.yaml (names: [...], "
                f"{self.split}: images/{self.split}) or classes.txt (one class name a line)"
            )
        names = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.class_names = parse_names(names, f"'{names_file}'")
        for candidate in (self.root / "images" / self.split, self.root / self.split / "images"):
            if candidate.is_dir():
                self._names_root = candidate
                return self._unique(self._images_of(candidate, where=where), where)
        raise DataError(
            f"{where} has no images/{self.split}/ (nor {self.split}/images/); check split= or the layout"
        )

    def _entry_path(self, entry: str) -> Path:
        path = Path(os.path.expanduser(entry))
        return Path(os.path.normpath(path if path.is_absolute() else self.root / path))

    def _images_of(self, path: Path, *, where: str) -> list[Path]:
        """The images an entry of a split names: a folder (recursively), a list file."""
        if path.is_dir():
            return [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        if path.is_file():
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                return [path]
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"{where}: cannot read the image list '{path}' ({e})") from e
            out = []
            for line in lines:
                text = line.strip()
                if text:
                    item = Path(os.path.expanduser(text))
                    out.append(item if item.is_absolute() else path.parent / item)
            return out
        raise DataError(f"{where}: '{path}' does not exist; give an image folder or a list file of image paths")

    def _unique(self, images: list[Path], where: str) -> list[Path]:
        out = sorted({os.path.normpath(p) for p in images})
        if not out:
            raise DataError(f"{where}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        return [Path(p) for p in out]

    # -- labels ---------------------------------------------------------------------------
    def _file_name(self, image: Path) -> str:
        """The image's name as samples and ``coco_gt`` give it.

        Relative to the split's folder when the split is one folder, else to the
        dataset root; the file's name when it lies outside.
        """
        for folder in (self._names_root, self.root):
            if folder is not None and folder.is_dir():
                try:
                    return image.relative_to(folder).as_posix()
                except ValueError:
                    pass
        return image.name

    def _read_labels(self, images: list[Path]) -> list[_YoloRecord]:
        records = []
        num_found = 0
        self._num_empty = 0  # lines with w or h 0 (a polygon without extent too), dropped
        for image in images:
            label_file = label_path(image)
            objects: list[_Object] = []
            if label_file.is_file():
                num_found += 1
                objects = self._parse_label_file(label_file)
            records.append(_YoloRecord(image=image, file_name=self._file_name(image), objects=objects))
        if num_found == 0:
            warnings.warn(
                f"YOLO dataset '{self.yaml_file or self.root}' ({self.split}): none of the {len(images)} images has a "
                f"label file (the first would be '{label_path(images[0])}'); every image counts as background",
                stacklevel=3,
            )
        if self._num_empty:
            warnings.warn(
                f"YOLO dataset '{self.yaml_file or self.root}' ({self.split}): dropped {self._num_empty} object(s) "
                "with an empty box (w or h 0)",
                stacklevel=3,
            )
        return records

    def _parse_label_file(self, file: Path) -> list[_Object]:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read label file '{file}' ({e}); fix or remove it") from e
        objects = []
        num_classes = len(self.class_names)
        for number, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"label file '{file}' line {number}"
            count = len(parts)
            if count != _BOX_VALUES and (count < _MIN_POLYGON_VALUES or count % 2 == 0):
                raise DataError(
                    f"{where} has {count} values; expected 5 (class cx cy w h) or a polygon (class x1 y1 x2 y2 "
                    "x3 y3 ..., an odd count of 7 or more); fix or remove the line"
                )
            try:
                values = [float(v) for v in parts]
            except ValueError:
                raise DataError(f"{where}: {line.strip()!r} holds a value that is not a number") from None
            cls = values[0]
            if not (math.isfinite(cls) and cls == int(cls) and 0 <= cls < num_classes):
                raise DataError(
                    f"{where}: class {parts[0]} is not a class index 0..{num_classes - 1} "
                    f"({num_classes} names); fix the line or the names"
                )
            coords = values[1:]
            bad = [v for v in coords if not (-_TOLERANCE <= v <= 1 + _TOLERANCE)]  # NaN fails too
            if bad:
                raise DataError(
                    f"{where}: coordinate {bad[0]:g} is not normalized to 0..1 (YOLO labels divide x by the image "
                    "width and y by its height); fix the line"
                )
            polygon: list[float] | None = None
            if count == _BOX_VALUES:
                cx, cy, w, h = coords
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            else:
                polygon = coords
                xs, ys = coords[0::2], coords[1::2]
                box = (min(xs), min(ys), max(xs), max(ys))
            if box[2] <= box[0] or box[3] <= box[1]:
                self._num_empty += 1
                continue
            objects.append(_Object(label=int(cls), box=box, polygon=polygon))
        return objects

    # -- geometry -------------------------------------------------------------------------
    def _pixels(self, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, list[list[float] | None]]:
        """Boxes ``(G, 4)`` float32 in pixels (clipped), keep mask ``(G,)``, pixel polygons of item ``index``."""
        objects = self._records[index].objects
        scale = np.array([width, height, width, height], dtype=np.float64)
        boxes = np.round(np.array([o.box for o in objects], dtype=np.float64).reshape(-1, 4) * scale, _DECIMALS_PX)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        polygons: list[list[float] | None] = []
        for o in objects:
            if o.polygon is None:
                polygons.append(None)
            else:
                points = np.asarray(o.polygon, dtype=np.float64).reshape(-1, 2) * (width, height)
                polygons.append(np.round(points, _DECIMALS_PX).reshape(-1).tolist())
        return boxes.astype(np.float32), keep, polygons

    @staticmethod
    def _rle(polygon: list[float] | None, box: np.ndarray, height: int, width: int) -> Any:
        """The object's mask as a pycocotools RLE: its polygon, else its box's rectangle."""
        if polygon is None:
            x0, y0, x1, y1 = (float(v) for v in box)
            polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
        return mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))

    # -- protocol -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of images in the split."""
        return len(self._records)

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self._records[index].image

    def label_file(self, index: int) -> Path:
        """The label file of item ``index`` (it may not exist: background)."""
        return label_path(self._records[index].image)

    def __getitem__(self, index: int) -> Sample:
        """Image ``(3, H, W)`` and targets of item ``index``; DataError if the image is unusable."""
        record = self._records[index]
        array = read_image(record.image)
        height, width = array.shape[:2]
        boxes, keep, polygons = self._pixels(index, height, width)
        labels = np.array([o.label for o in record.objects], dtype=np.int64)
        masks = None
        if self.masks:
            kept = [g for g in range(len(keep)) if keep[g]]
            masks_np = np.zeros((len(kept), height, width), dtype=np.uint8)
            for n, g in enumerate(kept):
                masks_np[n] = mask_utils.decode(self._rle(polygons[g], boxes[g], height, width))
            masks = torch.from_numpy(masks_np)
        targets = Targets(
            boxes=torch.from_numpy(boxes[keep]),
            labels=torch.from_numpy(labels[keep]),
            iscrowd=torch.zeros((int(keep.sum()),), dtype=torch.bool),
            masks=masks,
        )
        return Sample(
            image=image_to_tensor(array),
            targets=targets,
            image_id=self.image_ids[index],
            file_name=record.file_name,
        )

    def image_size(self, index: int) -> tuple[int, int] | None:
        """``(width, height)`` of item ``index`` from the image header (cached); None if unreadable."""
        if index not in self._sizes:
            self._sizes[index] = read_image_size(self._records[index].image)
        return self._sizes[index]

    def coco_gt(self) -> COCO:
        """The split as an in-memory COCO ground truth (pixel boxes; polygon segmentations where given).

        Reads the size of every image (header only). An image that cannot be read is
        given the size 1x1 with a warning (it is skipped when evaluating anyway).
        """
        if self._coco is None:
            self._coco = coco_from_dict(self.coco_dict())
        return self._coco

    def coco_dict(self) -> dict[str, Any]:
        """The split as a COCO instances dict (what :meth:`coco_gt` indexes).

        Polygon lines carry their polygon as ``segmentation``; box lines carry their
        rectangle only when ``masks`` is set.
        """
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        unreadable: list[str] = []
        for index, (record, image_id) in enumerate(zip(self._records, self.image_ids)):
            size = self.image_size(index)
            if size is None:
                unreadable.append(str(record.image))
                size = (1, 1)
            width, height = size
            images.append({"id": image_id, "file_name": record.file_name, "width": width, "height": height})
            boxes, keep, polygons = self._pixels(index, height, width)
            for g, obj in enumerate(record.objects):
                if not keep[g]:
                    continue
                x0, y0, x1, y1 = (float(v) for v in boxes[g])
                ann: dict[str, Any] = {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": self.category_ids[obj.label],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
                if polygons[g] is not None or self.masks:
                    rle = self._rle(polygons[g], boxes[g], height, width)
                    ann["segmentation"] = [polygons[g]] if polygons[g] is not None else [
                        [x0, y0, x1, y0, x1, y1, x0, y1]
                    ]
                    ann["area"] = float(mask_utils.area(rle))
                annotations.append(ann)
        if unreadable:
            warnings.warn(
                f"YOLO dataset '{self.yaml_file or self.root}' ({self.split}): {len(unreadable)} image(s) could not "
                f"be read for their size (first: '{unreadable[0]}'); they are given 1x1",
                stacklevel=3,
            )
        categories = [{"id": i, "name": n} for i, n in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def __repr__(self) -> str:
        source = self.yaml_file or self.root
        return f"YoloDataset('{source}', split='{self.split}', {len(self)} images, classes={self.class_names})"


def read_image_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` from the image header, None if it cannot be read (EXIF orientation ignored)."""
    try:
        with Image.open(path) as image:
            return int(image.width), int(image.height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
