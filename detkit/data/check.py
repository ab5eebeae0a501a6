"""Dataset checks: what is wrong with a dataset's annotations and images, before training.

The loaders repair or drop bad records as they read them (an empty box is dropped
with a warning, a box reaching outside its image is clipped, an unreadable image is
skipped when its batch is loaded) or stop at the first record they cannot use
(a duplicate id, an unknown category). So the checks read the annotation files at
the level where the problems are still visible: the raw COCO json, the VOC xml files,
the VIA json. Any other :class:`~detkit.data.base.DetectionDataset` (YOLO, a
plugin's format, a held-out split) is checked through what it exposes: ``coco_gt()``
and ``image_path(i)``, after its loader has dropped or clipped what it does not take.

Problems and their severity (:data:`KINDS`):

==========================  ========  ==================================================
kind                        severity  what
==========================  ========  ==================================================
``bad_record``              error     a record the loader refuses (no id, a bbox that is
                                      not 4 numbers, a missing or invalid VOC xml, ...)
``missing_image``           error     the image file is missing or cannot be decoded
``size_mismatch``           error     the annotated width/height (COCO ``width``/
                                      ``height``, VOC ``<size>``) differs from the image
                                      file's; VIA regions far beyond their image
``duplicate_id``            error     an image, annotation or category id used twice
                                      (a VOC id listed twice, a VIA image in two records)
``orphan_annotation``       error     an annotation whose ``image_id`` is not an image
``unknown_category``        error     a category id (or class name) not among the classes
``degenerate_box``          error     a box with ``w <= 0`` or ``h <= 0``
``box_outside``             error     a box wholly outside its image
``bad_polygon``             error     a polygon with fewer than 3 points (or an odd
                                      number of coordinates), an RLE of another size
``box_partly_outside``      warning   a box reaching more than :data:`OUTSIDE_TOLERANCE`
                                      px beyond its image (the loaders clip it)
``duplicate_file``          warning   one image file listed under two image ids
``unsupported_shape``       warning   a VIA region that is neither a polygon nor a
                                      rectangle (the loader skips it)
``file_changed``            warning   a VIA image whose byte size differs from the one
                                      the annotator saw (re-encoded or resized since?)
``crowd``                   info      crowd regions (ignored in training, and in
                                      evaluation matched without penalty)
``difficult``               info      VOC difficult objects
``empty_image``             info      images without (non-crowd) objects
==========================  ========  ==================================================

Errors are what makes a run learn from or be scored on something other than what
the annotator meant, or stop it; warnings are repaired by the loaders but usually
point at a careless export; info is worth knowing about the data.

Images are measured from their header (Pillow reads only the first bytes; OpenCV
decodes what Pillow cannot open), about 0.2 ms an image on a local disk.
``decode=True`` decodes every image fully instead, which also finds truncated
files, at 2-5 ms an image.

A :class:`DataReport` also holds the class histogram (non-crowd objects per class)
and the box sizes (``sqrt(w * h)`` of every non-crowd box, the COCO small / medium /
large split by box area, a log-scale histogram); :func:`write_report` writes
``report.json``, ``classes.png`` and ``box_sizes.png``. :func:`check_source`
checks a path (a COCO json, a VOC root, a VIA json or folder, a YOLO data.yaml, a
detkit config),
:func:`check_config` a config's ``data.train`` and ``data.val``,
:func:`check_dataset` a dataset object, and :func:`check_before_training` is what
``detkit train`` runs (``data.check: strict | warn | off``).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from detkit.data.base import DetectionDataset
from detkit.data.coco import CocoDataset, default_images_dir, load_coco_json
from detkit.data.images import IMAGE_EXTENSIONS, read_image
from detkit.data.via import ViaDataset, load_via_json
from detkit.data.voc import VocDataset
from detkit.errors import ConfigError, DataError
from detkit.io import atomic_path, write_json
from detkit.progress import progress as show_progress

__all__ = [
    "CHECK_MODES",
    "KINDS",
    "OUTSIDE_TOLERANCE",
    "DataReport",
    "Kind",
    "Problem",
    "check_before_training",
    "check_coco",
    "check_config",
    "check_dataset",
    "check_mode",
    "check_source",
    "check_spec",
    "check_via",
    "check_voc",
    "format_report",
    "probe_image",
    "report_json",
    "summarize",
    "write_report",
]

logger = logging.getLogger(__name__)

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES: tuple[str, ...] = (ERROR, WARNING, INFO)

#: ``data.check`` values: stop on errors, print a summary and go on, skip the checks.
CHECK_MODES: tuple[str, ...] = ("strict", "warn", "off")

#: How far (pixels) a box may reach beyond its image before it counts as partly outside:
#: sub-pixel overshoots from rounding are harmless and everywhere in real exports.
OUTSIDE_TOLERANCE = 1.0

#: COCO's object sizes: box area below 32**2 is small, below 96**2 medium, else large.
SMALL, MEDIUM = 32.0, 96.0

#: Examples kept per kind of problem (the counts are always complete).
MAX_KEPT = 1000

#: How far (pixels, fraction of the image side) a VIA region may reach beyond its image
#: before :class:`~detkit.data.via.ViaDataset` refuses it as drawn for another size.
_VIA_OVERSHOOT_PX, _VIA_OVERSHOOT_FRAC = 2.0, 0.02


@dataclass(frozen=True)
class Kind:
    """A kind of problem: its severity and a label (plural, for counts)."""

    severity: str
    label: str


#: Every kind of problem, in the order reports list them (see the module docstring).
KINDS: dict[str, Kind] = {
    "bad_record": Kind(ERROR, "malformed records"),
    "missing_image": Kind(ERROR, "missing or unreadable images"),
    "size_mismatch": Kind(ERROR, "annotated image sizes that differ from the image"),
    "duplicate_id": Kind(ERROR, "duplicate ids"),
    "orphan_annotation": Kind(ERROR, "orphan annotations (image id not in images)"),
    "unknown_category": Kind(ERROR, "unknown categories"),
    "degenerate_box": Kind(ERROR, "degenerate boxes (w or h <= 0)"),
    "box_outside": Kind(ERROR, "boxes wholly outside the image"),
    "bad_polygon": Kind(ERROR, "polygons with fewer than 3 points, or malformed"),
    "box_partly_outside": Kind(WARNING, "boxes partly outside the image"),
    "duplicate_file": Kind(WARNING, "image files listed under two ids"),
    "unsupported_shape": Kind(WARNING, "regions neither polygons nor rectangles"),
    "file_changed": Kind(WARNING, "image files not the size the annotator saw"),
    "crowd": Kind(INFO, "crowd regions"),
    "difficult": Kind(INFO, "difficult objects"),
    "empty_image": Kind(INFO, "images without objects"),
}


@dataclass(frozen=True)
class Problem:
    """One problem, located: the annotation file, the image and the annotation.

    Attributes:
        kind: a key of :data:`KINDS`.
        file: the annotation file holding the record (a VOC xml, the COCO json, ...).
        image_id: the image's id (COCO's; VOC and VIA items count from 1, as their
            datasets number them), when the problem belongs to an image.
        image: the image's file name as the annotations give it.
        ann_id: the annotation's id (an int for COCO; ``"object #n"`` in a VOC xml,
            ``"region #n"`` in a VIA record).
        detail: what is wrong, with the values.
    """

    kind: str
    file: str
    image_id: int | str | None = None
    image: str | None = None
    ann_id: int | str | None = None
    detail: str = ""

    @property
    def severity(self) -> str:
        """``error``, ``warning`` or ``info``."""
        return KINDS[self.kind].severity

    def describe(self, *, file: bool = True) -> str:
        """One line: ``'FILE', image id I ('NAME'), annotation id A: DETAIL`` (without the file unless ``file``)."""
        parts = [f"'{self.file}'"] if file else []
        if self.image_id is not None:
            parts.append(f"image id {self.image_id}" + (f" ('{self.image}')" if self.image else ""))
        elif self.image:
            parts.append(f"image '{self.image}'")
        if isinstance(self.ann_id, int) and not isinstance(self.ann_id, bool):
            parts.append(f"annotation id {self.ann_id}")
        elif self.ann_id is not None:
            parts.append(str(self.ann_id))
        where = ", ".join(parts)
        return f"{where}: {self.detail}" if where and self.detail else where or self.detail

    def to_json(self) -> dict[str, Any]:
        """The problem as a JSON-ready dict."""
        return {
            "file": self.file,
            "image_id": self.image_id,
            "image": self.image,
            "ann_id": self.ann_id,
            "detail": self.detail,
        }


@dataclass
class DataReport:
    """What a check found in one dataset.

    Attributes:
        name: what the dataset is called in messages (``data.train``, a path).
        format: ``coco``, ``voc``, ``via`` or ``dataset`` (checked through the protocol).
        source: the annotation file (or VOC split file) checked.
        images_dir: where the images were looked for.
        num_images / num_objects: image and annotation records read.
        class_names: the dataset's classes.
        class_counts: non-crowd objects per class (every class, zeros included).
        box_sides: ``sqrt(w * h)`` in pixels of each counted object's box.
        counts: how many problems of each kind (complete).
        examples: the first :data:`MAX_KEPT` problems of each kind.
        seconds: how long the check took.
    """

    name: str
    format: str
    source: str
    images_dir: str | None = None
    num_images: int = 0
    num_objects: int = 0
    class_names: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    box_sides: list[float] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Problem]] = field(default_factory=dict)
    seconds: float = 0.0

    # -- collecting ---------------------------------------------------------------------
    def add(
        self,
        kind: str,
        file: str | Path,
        *,
        image_id: int | str | None = None,
        image: str | None = None,
        ann_id: int | str | None = None,
        detail: str = "",
    ) -> None:
        """Record one problem of ``kind``."""
        if kind not in KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.counts[kind] += 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < MAX_KEPT:
            kept.append(Problem(kind, str(file), image_id, image, ann_id, detail))

    def count_object(self, class_name: str, width: float, height: float) -> None:
        """Count a usable non-crowd object of ``class_name`` with a ``width x height`` box."""
        self.class_counts[class_name] = self.class_counts.get(class_name, 0) + 1
        self.box_sides.append(math.sqrt(width * height))

    # -- reading ------------------------------------------------------------------------
    def kinds_of(self, severity: str) -> list[str]:
        """The kinds of ``severity`` that occurred, in :data:`KINDS` order."""
        return [k for k, kind in KINDS.items() if kind.severity == severity and self.counts[k]]

    def total(self, severity: str) -> int:
        """How many problems of ``severity``."""
        return sum(self.counts[k] for k in self.kinds_of(severity))

    @property
    def num_errors(self) -> int:
        """How many errors."""
        return self.total(ERROR)

    @property
    def num_warnings(self) -> int:
        """How many warnings."""
        return self.total(WARNING)

    def problems(self, kind: str) -> list[Problem]:
        """The kept problems of ``kind`` (the first :data:`MAX_KEPT`)."""
        return list(self.examples.get(kind, []))

    def summary(self, *, severities: Sequence[str] = (ERROR, WARNING)) -> str:
        """``2 errors (missing or unreadable images: 1, ...), 1 warning (...)``, or ``no problems``."""
        parts = []
        for severity in severities:
            n = self.total(severity)
            if n:
                kinds = ", ".join(f"{KINDS[k].label}: {self.counts[k]}" for k in self.kinds_of(severity))
                parts.append(f"{n} {_plural(severity, n)} ({kinds})")
        return ", ".join(parts) if parts else "no problems"

    def size_counts(self) -> dict[str, int]:
        """COCO object sizes by box area: ``{"small": n, "medium": n, "large": n}``."""
        sides = np.asarray(self.box_sides, dtype=np.float64)
        return {
            "small": int((sides < SMALL).sum()),
            "medium": int(((sides >= SMALL) & (sides < MEDIUM)).sum()),
            "large": int((sides >= MEDIUM).sum()),
        }

    def side_histogram(self) -> tuple[list[float], list[int]]:
        """``(edges, counts)``: ``sqrt(box area)`` in octaves (``edges`` powers of two, one more than ``counts``)."""
        sides = np.asarray([s for s in self.box_sides if s > 0], dtype=np.float64)
        if not sides.size:
            return [], []
        low = math.floor(math.log2(sides.min()))
        high = max(low + 1, math.floor(math.log2(sides.max())) + 1)
        edges = [2.0**k for k in range(low, high + 1)]
        counts, _ = np.histogram(sides, bins=edges)
        return edges, [int(c) for c in counts]

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (``report.json`` holds one per dataset)."""
        edges, counts = self.side_histogram()
        return {
            "name": self.name,
            "format": self.format,
            "source": self.source,
            "images_dir": self.images_dir,
            "num_images": self.num_images,
            "num_objects": self.num_objects,
            "num_errors": self.num_errors,
            "num_warnings": self.num_warnings,
            "num_info": self.total(INFO),
            "seconds": round(self.seconds, 3),
            "problems": {
                k: {
                    "severity": KINDS[k].severity,
                    "label": KINDS[k].label,
                    "count": self.counts[k],
                    "examples": [p.to_json() for p in self.examples.get(k, [])],
                }
                for k in KINDS
                if self.counts[k]
            },
            "classes": {name: self.class_counts.get(name, 0) for name in self.class_names},
            "box_sizes": {
                **self.size_counts(),
                "sqrt_area_edges": edges,
                "sqrt_area_counts": counts,
            },
        }


def _plural(word: str, n: int) -> str:
    return word if n == 1 or word == INFO else f"{word}s"


# ----------------------------------------------------------------------------- images


def probe_image(path: str | Path, *, decode: bool = False) -> tuple[int, int]:
    """``(width, height)`` of an image file, from its header unless ``decode``.

    Pillow reads the header; a file it cannot open is decoded with OpenCV
    (:func:`~detkit.data.images.read_image`), which reads a few formats Pillow does
    not. With ``decode`` every file is decoded, which also finds truncated files.
    Like :func:`~detkit.data.images.read_image`, the EXIF orientation is ignored.

    Raises:
        DataError: the file is missing, is not an image or is corrupt (the message
            names the file).
    """
    p = Path(path)
    if not decode and p.is_file():
        from PIL import Image  # imported here: a dependency of matplotlib, needed only for headers

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # DecompressionBombWarning on huge images
                with Image.open(p) as image:
                    return int(image.width), int(image.height)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            pass  # OpenCV decides below
    array = read_image(p)
    return int(array.shape[1]), int(array.shape[0])


def _probe_all(
    report: DataReport, paths: Mapping[Any, Path], *, decode: bool, progress: bool
) -> dict[Any, tuple[int, int] | str]:
    """``key -> (width, height)``, or the reason the image cannot be read, for every path."""
    out: dict[Any, tuple[int, int] | str] = {}
    bar = show_progress(paths.items(), total=len(paths), desc=f"checking {report.name}", unit="img",
                        enabled=progress, leave=False)
    for key, path in bar:
        try:
            out[key] = probe_image(path, decode=decode)
        except DataError as e:
            out[key] = str(e)
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _g(v: float) -> str:
    return f"{v:g}"


def _check_box(
    report: DataReport,
    xyxy: tuple[float, float, float, float],
    size: tuple[int, int] | None,
    shown: str,
    **where: Any,
) -> bool:
    """Report a box (xyxy, continuous pixels) outside or partly outside a ``(width, height)`` image.

    Returns whether the box is usable (not wholly outside). ``shown`` is the box as the
    file writes it, for the message.
    """
    if size is None:
        return True
    width, height = size
    x0, y0, x1, y1 = xyxy
    if min(x1, width) <= max(x0, 0.0) or min(y1, height) <= max(y0, 0.0):
        report.add("box_outside", detail=f"{shown} lies outside the {width}x{height} (WxH) image", **where)
        return False
    beyond = max(-x0, -y0, x1 - width, y1 - height)
    if beyond > OUTSIDE_TOLERANCE:
        report.add(
            "box_partly_outside",
            detail=f"{shown} reaches {_g(round(beyond, 2))} px outside the {width}x{height} (WxH) image",
            **where,
        )
    return True


# ----------------------------------------------------------------------------- COCO


def check_coco(
    ann_file: str | Path,
    images: str | Path | None = None,
    *,
    name: str | None = None,
    decode: bool = False,
    progress: bool = True,
) -> DataReport:
    """Check a COCO instances json and its images, record by record.

    Args:
        ann_file: the instances json.
        images: the image folder (default: as :class:`~detkit.data.coco.CocoDataset`
            finds it, :func:`~detkit.data.coco.default_images_dir`).
        name: what to call the dataset in messages (default: the json's path).
        decode: decode every image (finds truncated files; slower).
        progress: show a progress bar while reading images.

    Raises:
        DataError: the json is missing, not JSON or not a COCO instances file, or the
            image folder does not exist.
    """
    start = time.perf_counter()
    ann_path = Path(ann_file)
    data = load_coco_json(ann_path)
    images_dir = Path(images) if images is not None else default_images_dir(ann_path)
    if not images_dir.is_dir():
        raise DataError(f"image folder '{images_dir}' of '{ann_path}' does not exist; check images=")
    report = DataReport(name=name or str(ann_path), format="coco", source=str(ann_path), images_dir=str(images_dir))
    _check_coco_records(
        report, data, file=str(ann_path), image_path=lambda img: images_dir / img["file_name"],
        decode=decode, progress=progress,
    )
    report.seconds = time.perf_counter() - start
    return report


def _check_coco_records(
    report: DataReport,
    data: Mapping[str, Any],
    *,
    file: str,
    image_path: Callable[[dict[str, Any]], Path | None],
    decode: bool,
    progress: bool,
) -> None:
    """The checks of a COCO dict (``images``, ``annotations``, ``categories`` lists)."""
    category_names = _coco_categories(report, data.get("categories") or [], file)
    images = _coco_images(report, data.get("images") or [], file)
    report.num_images = len(images)

    paths = {iid: p for iid, img in images.items() if (p := image_path(img)) is not None}
    sizes: dict[int, tuple[int, int]] = {}
    for iid, probed in _probe_all(report, paths, decode=decode, progress=progress).items():
        img = images[iid]
        if isinstance(probed, str):
            report.add("missing_image", file, image_id=iid, image=img["file_name"], detail=probed)
            continue
        sizes[iid] = probed
        width, height = img.get("width"), img.get("height")
        if _is_int(width) and _is_int(height) and (width, height) != probed:
            report.add(
                "size_mismatch", file, image_id=iid, image=img["file_name"],
                detail=f"the record says {width}x{height} (WxH) but image '{paths[iid]}' is {probed[0]}x{probed[1]}",
            )

    objects: Counter[int] = Counter()
    first_index: dict[Any, int] = {}
    for n, ann in enumerate(data.get("annotations") or []):
        report.num_objects += 1
        if not isinstance(ann, dict):
            report.add("bad_record", file, ann_id=f"annotation #{n}", detail="the record is not an object")
            continue
        ann_id = ann.get("id")
        ann_image: Any = ann.get("image_id")
        record = images.get(ann_image) if _is_int(ann_image) else None
        where = {
            "image_id": ann_image,
            "image": record["file_name"] if record else None,
            "ann_id": ann_id if ann_id is not None else f"annotation #{n} (no id)",
        }
        if ann_id is None:
            report.add("bad_record", file, detail="the annotation has no 'id'", **where)
        elif ann_id in first_index:
            report.add(
                "duplicate_id", file,
                detail=f"annotation id {ann_id!r} appears twice in 'annotations' (records #{first_index[ann_id]} "
                f"and #{n})",
                **where,
            )
        else:
            first_index[ann_id] = n
        if record is None:
            report.add("orphan_annotation", file, detail=f"image_id {ann_image!r} is not in 'images'", **where)
            continue
        iid = int(ann_image)
        category: Any = ann.get("category_id")
        known = isinstance(category, int) and not isinstance(category, bool) and category in category_names
        if not known:
            report.add(
                "unknown_category", file,
                detail=f"category_id {category!r} is not in 'categories' (ids: {_few(sorted(category_names))})",
                **where,
            )
        crowd = bool(ann.get("iscrowd", 0))
        if crowd:
            report.add("crowd", file, detail="iscrowd=1", **where)
        size = sizes.get(iid)
        if size is None and _is_int(record.get("width")) and _is_int(record.get("height")):
            size = (record["width"], record["height"])
        _check_segmentation(report, ann.get("segmentation"), size, file, where)
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            report.add("bad_record", file, detail=f"bbox {bbox!r} is not [x, y, w, h] numbers", **where)
            continue
        x, y, w, h = (float(v) for v in bbox)
        shown = f"bbox [{', '.join(_g(v) for v in (x, y, w, h))}]"
        if w <= 0 or h <= 0:
            report.add("degenerate_box", file, detail=f"{shown} has w or h <= 0", **where)
            continue
        usable = _check_box(report, (x, y, x + w, y + h), size, shown, file=file, **where)
        if usable and known and not crowd:
            report.count_object(category_names[int(category)], w, h)
            objects[iid] += 1
    for iid, img in images.items():
        if not objects[iid]:
            report.add("empty_image", file, image_id=iid, image=img["file_name"], detail="no (non-crowd) objects")


def _coco_categories(report: DataReport, categories: list[Any], file: str) -> dict[int, str]:
    names: dict[int, str] = {}
    for n, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            report.add("bad_record", file, detail=f"category #{n} ({cat!r}) has no integer 'id'")
            continue
        if cat["id"] in names:
            report.add("duplicate_id", file, detail=f"category id {cat['id']} appears twice in 'categories'")
            continue
        names[cat["id"]] = str(cat.get("name", cat["id"]))
    if not categories:
        report.add("bad_record", file, detail="the 'categories' list is empty; a detection dataset needs one")
    report.class_names = [names[i] for i in sorted(names)]
    report.class_counts = dict.fromkeys(report.class_names, 0)
    return names


def _coco_images(report: DataReport, records: list[Any], file: str) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    ids_of_file: dict[str, int] = {}
    for n, img in enumerate(records):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            report.add("bad_record", file, detail=f"image record #{n} has no integer 'id'")
            continue
        iid = img["id"]
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            report.add("bad_record", file, image_id=iid, detail=f"image record #{n} has no 'file_name'")
            continue
        if iid in images:
            report.add(
                "duplicate_id", file, image_id=iid, image=img["file_name"],
                detail=f"image id {iid} appears twice in 'images' (also for '{images[iid]['file_name']}')",
            )
            continue
        if img["file_name"] in ids_of_file:
            report.add(
                "duplicate_file", file, image_id=iid, image=img["file_name"],
                detail=f"the file is also image id {ids_of_file[img['file_name']]}",
            )
        else:
            ids_of_file[img["file_name"]] = iid
        images[iid] = img
    return images


def _check_segmentation(
    report: DataReport, seg: Any, size: tuple[int, int] | None, file: str, where: dict[str, Any]
) -> None:
    if seg is None:
        return
    if isinstance(seg, list):
        for k, polygon in enumerate(seg):
            if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
                report.add("bad_polygon", file, detail=f"polygon #{k} is not a list of numbers", **where)
            elif len(polygon) % 2:
                report.add("bad_polygon", file, detail=f"polygon #{k} has an odd number of coordinates "
                           f"({len(polygon)})", **where)
            elif len(polygon) < 6:
                report.add("bad_polygon", file, detail=f"polygon #{k} has {len(polygon) // 2} point(s)", **where)
    elif isinstance(seg, dict):
        rle_size = seg.get("size")
        if not (isinstance(rle_size, list) and len(rle_size) == 2) or "counts" not in seg:
            report.add("bad_polygon", file, detail="the RLE segmentation lacks 'size' [h, w] or 'counts'", **where)
        elif size is not None and list(rle_size) != [size[1], size[0]]:
            report.add(
                "bad_polygon", file,
                detail=f"the RLE is {rle_size[0]}x{rle_size[1]} (HxW) but the image {size[1]}x{size[0]}",
                **where,
            )
    else:
        report.add("bad_polygon", file, detail=f"segmentation {type(seg).__name__} is neither polygons nor RLE",
                   **where)


def _few(values: Sequence[Any], n: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


# ----------------------------------------------------------------------------- VOC


def check_voc(
    root: str | Path,
    *,
    split: str = "trainval",
    class_names: Sequence[str] | None = None,
    use_difficult: bool = True,
    name: str | None = None,
    decode: bool = False,
    progress: bool = True,
) -> DataReport:
    """Check a Pascal VOC split: its xml files and images (the arguments of :class:`~detkit.data.voc.VocDataset`).

    Item ``i`` of the split (line ``i + 1``) has image id ``i + 1``, as in the dataset;
    objects are ``object #n`` of their xml. Boxes are checked in detkit's pixels
    (``xmin - 1 .. xmax``) against the image's real size.

    Raises:
        DataError: the split file is missing or empty.
    """
    start = time.perf_counter()
    root = Path(root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        main = split_file.parent
        splits = sorted(p.stem for p in main.glob("*.txt")) if main.is_dir() else []
        hint = f"; splits found: {', '.join(splits)}" if splits else f"; is '{root}' a VOC folder?"
        raise DataError(f"VOC split file '{split_file}' does not exist{hint}")
    ids = [line.split()[0] for line in split_file.read_text(encoding="utf-8").splitlines() if line.split()]
    if not ids:
        raise DataError(f"VOC split file '{split_file}' lists no images")
    report = DataReport(
        name=name or f"{root} ({split})", format="voc", source=str(split_file), images_dir=str(root / "JPEGImages"),
        num_images=len(ids),
    )
    known_names = set(class_names) if class_names is not None else None

    parsed: dict[int, tuple[Path, ET.Element, Path]] = {}
    first_line: dict[str, int] = {}
    for n, voc_id in enumerate(ids):
        image_id = n + 1
        if voc_id in first_line:
            report.add(
                "duplicate_id", split_file, image_id=image_id, image=voc_id,
                detail=f"'{voc_id}' is listed twice (lines {first_line[voc_id]} and {n + 1})",
            )
        else:
            first_line[voc_id] = n + 1
        xml = root / "Annotations" / f"{voc_id}.xml"
        if not xml.is_file():
            report.add("bad_record", split_file, image_id=image_id, image=voc_id,
                       detail=f"annotation '{xml}' does not exist")
            continue
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as e:
            report.add("bad_record", xml, image_id=image_id, image=voc_id, detail=f"not valid XML ({e})")
            continue
        parsed[image_id] = (xml, tree, _voc_image(root, voc_id, tree.findtext("filename")))

    probed = _probe_all(report, {i: image for i, (_, _, image) in parsed.items()}, decode=decode, progress=progress)
    found: set[str] = set()
    for image_id, (xml, tree, image) in parsed.items():
        size_or_reason = probed[image_id]
        base: dict[str, Any] = {"image_id": image_id, "image": image.name}
        width = _int_or_zero(tree.findtext("size/width"))
        height = _int_or_zero(tree.findtext("size/height"))
        size: tuple[int, int] | None = (width, height) if width > 0 and height > 0 else None
        if isinstance(size_or_reason, str):
            report.add("missing_image", xml, detail=size_or_reason, **base)
        else:
            if size is not None and size != size_or_reason:
                report.add(
                    "size_mismatch", xml,
                    detail=f"<size> says {width}x{height} (WxH) but image '{image}' is "
                    f"{size_or_reason[0]}x{size_or_reason[1]}",
                    **base,
                )
            size = size_or_reason
        counted = 0
        for n, obj in enumerate(tree.findall("object")):
            where: dict[str, Any] = {**base, "ann_id": f"object #{n}"}
            class_name = (obj.findtext("name") or "").strip()
            if not class_name:
                report.add("bad_record", xml, detail="the object has no <name>", **where)
                continue
            coords = [_float_or_nan(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            if not all(math.isfinite(v) for v in coords):
                report.add("bad_record", xml, detail=f"the object ({class_name}) has no valid bndbox", **where)
                continue
            known = known_names is None or class_name in known_names
            found.add(class_name)
            if not known:
                report.add(
                    "unknown_category", xml,
                    detail=f"class {class_name!r} is not among class_names {_few(sorted(known_names or ()))}",
                    **where,
                )
            difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
            if difficult:
                report.add("difficult", xml, detail=f"a difficult {class_name}", **where)
            xmin, ymin, xmax, ymax = coords
            shown = f"bndbox ({', '.join(_g(v) for v in coords)})"
            if xmax <= xmin or ymax <= ymin:
                report.add("degenerate_box", xml, detail=f"{shown} has xmax <= xmin or ymax <= ymin", **where)
                continue
            usable = _check_box(report, (xmin - 1.0, ymin - 1.0, xmax, ymax), size, shown, file=str(xml), **where)
            if usable and known and (use_difficult or not difficult):
                report.count_object(class_name, xmax - xmin + 1.0, ymax - ymin + 1.0)
                counted += 1
        if not counted:
            report.add("empty_image", xml, detail="no (usable, non-ignored) objects", **base)
        report.num_objects += len(tree.findall("object"))
    report.class_names = list(class_names) if class_names is not None else sorted(found)
    report.class_counts = {n: report.class_counts.get(n, 0) for n in report.class_names}
    report.seconds = time.perf_counter() - start
    return report


def _voc_image(root: Path, voc_id: str, filename: str | None) -> Path:
    """Where :class:`~detkit.data.voc.VocDataset` finds the image of ``voc_id``."""
    folder = root / "JPEGImages"
    candidates = [folder / f"{voc_id}.jpg"]
    if filename and filename.strip():
        candidates.append(folder / filename.strip())
    candidates += [folder / f"{voc_id}{ext}" for ext in IMAGE_EXTENSIONS]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _int_or_zero(text: str | None) -> int:
    try:
        return int(float(text)) if text is not None else 0
    except ValueError:
        return 0


def _float_or_nan(text: str | None) -> float:
    try:
        return float(text) if text is not None else math.nan
    except ValueError:
        return math.nan


# ----------------------------------------------------------------------------- VIA


def check_via(
    root: str | Path,
    *,
    json_name: str = "via_region_data.json",
    class_names: Sequence[str] | None = None,
    class_attribute: str | None = None,
    name: str | None = None,
    decode: bool = False,
    progress: bool = True,
) -> DataReport:
    """Check a VIA polygon json and its images (the arguments of :class:`~detkit.data.via.ViaDataset`).

    Images are numbered from 1 in file-name order, as in the dataset; regions are
    ``region #n`` of their image. VIA stores no image size, so regions reaching far
    beyond their image (more than ``max(2 px, 2 %)``, drawn for another size: the
    dataset refuses them) are ``size_mismatch`` errors.

    Raises:
        DataError: the json is missing, not JSON or not VIA region data.
    """
    start = time.perf_counter()
    root = Path(root)
    json_file = root / json_name
    data = load_via_json(json_file)
    report = DataReport(name=name or str(json_file), format="via", source=str(json_file), images_dir=str(root))
    if class_attribute is None:
        names = list(class_names) if class_names is not None else ["object"]
        if len(names) != 1:
            raise DataError(
                f"VIA dataset '{root}': class_names {names} has {len(names)} names but no class_attribute says "
                "which region is which; pass one name or set class_attribute"
            )
    else:
        names = list(class_names) if class_names is not None else []
    records: dict[str, dict[str, Any]] = {}
    for key, record in data.items():
        if not isinstance(record, dict) or not isinstance(record.get("filename"), str) or not record["filename"]:
            report.add("bad_record", json_file, detail=f"record {key!r} has no 'filename'")
            continue
        if record["filename"] in records:
            report.add("duplicate_id", json_file, image=record["filename"],
                       detail="the image appears in two records; merge or remove one")
            continue
        records[record["filename"]] = record
    ordered = sorted(records)
    report.num_images = len(ordered)
    paths = {image_id: root / file_name for image_id, file_name in enumerate(ordered, start=1)}
    probed = _probe_all(report, paths, decode=decode, progress=progress)

    regions_of: list[tuple[int, str, list[tuple[int, list[float], str | None]]]] = []
    for image_id, file_name in enumerate(ordered, start=1):
        record = records[file_name]
        base: dict[str, Any] = {"image_id": image_id, "image": file_name}
        size_or_reason = probed[image_id]
        size = None if isinstance(size_or_reason, str) else size_or_reason
        if size is None:
            report.add("missing_image", json_file, detail=str(size_or_reason), **base)
        else:
            declared = record.get("size")
            actual = paths[image_id].stat().st_size
            if isinstance(declared, int) and not isinstance(declared, bool) and 0 < declared != actual:
                report.add("file_changed", json_file, detail=f"the record says {declared} bytes, the file has {actual}",
                           **base)
        regions = record.get("regions", [])
        if isinstance(regions, dict):
            region_list = list(regions.values())
        elif isinstance(regions, list):
            region_list = regions
        elif regions is None:
            region_list = []
        else:
            report.add("bad_record", json_file, detail="'regions' is neither a list nor an object", **base)
            region_list = []
        usable = []
        for n, region in enumerate(region_list):
            where: dict[str, Any] = {**base, "ann_id": f"region #{n}"}
            polygon = _via_polygon(report, region, json_file, where)
            if polygon is None:
                continue
            class_name = _via_class(report, region, class_attribute, names, json_file, where)
            usable.append((n, polygon, class_name))
        regions_of.append((image_id, file_name, usable))

    if class_attribute is not None and class_names is None:
        names = sorted({c for _, _, regions in regions_of for _, _, c in regions if c is not None})
    report.class_names = names
    report.class_counts = dict.fromkeys(names, 0)
    known_names = set(names)
    for image_id, file_name, regions in regions_of:
        size_or_reason = probed[image_id]
        size = None if isinstance(size_or_reason, str) else size_or_reason
        counted = 0
        for n, polygon, class_name in regions:
            where = {"image_id": image_id, "image": file_name, "ann_id": f"region #{n}"}
            report.num_objects += 1
            if class_name is None:
                continue  # reported as a bad record
            known = class_name in known_names
            if not known:
                report.add("unknown_category", json_file,
                           detail=f"class {class_name!r} is not among class_names {_few(names)}", **where)
            xs, ys = polygon[0::2], polygon[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
            shown = f"region extent x {_g(box[0])}..{_g(box[2])}, y {_g(box[1])}..{_g(box[3])}"
            if box[2] <= box[0] or box[3] <= box[1]:
                report.add("degenerate_box", json_file, detail=f"{shown} has no area", **where)
                continue
            if size is not None and _via_far_outside(box, size):
                report.add(
                    "size_mismatch", json_file,
                    detail=f"{shown} but the image is {size[0]}x{size[1]} (WxH): coordinates for another image size?",
                    **where,
                )
                continue
            if _check_box(report, box, size, shown, file=str(json_file), **where) and known:
                report.count_object(class_name, box[2] - box[0], box[3] - box[1])
                counted += 1
        if not counted:
            report.add("empty_image", json_file, image_id=image_id, image=file_name, detail="no usable regions")
    report.seconds = time.perf_counter() - start
    return report


def _via_polygon(report: DataReport, region: Any, file: Path, where: dict[str, Any]) -> list[float] | None:
    """The region's polygon ``[x0, y0, ...]``, or None (and reported) when it is unusable."""
    if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
        report.add("bad_record", file, detail="the region has no 'shape_attributes' object", **where)
        return None
    shape = region["shape_attributes"]
    kind = shape.get("name")
    if kind == "polygon":
        xs, ys = shape.get("all_points_x"), shape.get("all_points_y")
        if not (isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys)):
            report.add("bad_polygon", file, detail="all_points_x / all_points_y are not lists of equal length",
                       **where)
            return None
        if not all(_is_number(v) for v in xs + ys):
            report.add("bad_polygon", file, detail="polygon points are not all finite numbers", **where)
            return None
        if len(xs) < 3:
            report.add("bad_polygon", file, detail=f"the polygon has {len(xs)} point(s)", **where)
            return None
        return [float(v) for xy in zip(xs, ys) for v in xy]
    if kind == "rect":
        values = [shape.get(k) for k in ("x", "y", "width", "height")]
        if not all(_is_number(v) for v in values):
            report.add("bad_record", file, detail=f"rect needs numeric x, y, width, height (got {values})", **where)
            return None
        x, y, w, h = (float(v) for v in values)
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    report.add("unsupported_shape", file, detail=f"a {kind!r} region (skipped by the loader)", **where)
    return None


def _via_class(
    report: DataReport, region: dict[str, Any], attribute: str | None, names: list[str], file: Path,
    where: dict[str, Any],
) -> str | None:
    """The region's class name, or None (and reported) when it has none."""
    if attribute is None:
        return names[0] if names else "object"
    attrs = region.get("region_attributes")
    value = attrs.get(attribute) if isinstance(attrs, dict) else None
    if isinstance(value, dict):  # checkboxes
        chosen = [str(k) for k, v in value.items() if v]
        if len(chosen) == 1:
            return chosen[0]
        report.add("bad_record", file, detail=f"region attribute {attribute!r} has {len(chosen)} checked values",
                   **where)
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()
    report.add("bad_record", file, detail=f"the region has no region attribute {attribute!r}", **where)
    return None


def _via_far_outside(box: tuple[float, float, float, float], size: tuple[int, int]) -> bool:
    width, height = size
    tol_x = max(_VIA_OVERSHOOT_PX, _VIA_OVERSHOOT_FRAC * width)
    tol_y = max(_VIA_OVERSHOOT_PX, _VIA_OVERSHOOT_FRAC * height)
    return box[0] < -tol_x or box[1] < -tol_y or box[2] > width + tol_x or box[3] > height + tol_y


# ----------------------------------------------------------------------------- datasets and configs


def check_dataset(
    dataset: DetectionDataset, *, name: str | None = None, decode: bool = False, progress: bool = True
) -> DataReport:
    """Check a dataset object.

    The built-in formats are checked from their files (:func:`check_coco` for a
    :class:`~detkit.data.coco.CocoDataset` or the shapes, :func:`check_voc`,
    :func:`check_via`); any other dataset through its protocol: the records of
    ``coco_gt()`` and the files of ``image_path(i)``, so what its loader already
    dropped or repaired is not seen.
    """
    if isinstance(dataset, CocoDataset):
        return check_coco(dataset.ann_file, dataset.images_dir, name=name, decode=decode, progress=progress)
    if isinstance(dataset, VocDataset):
        return check_voc(
            dataset.root, split=dataset.split, class_names=dataset.class_names, use_difficult=dataset.use_difficult,
            name=name, decode=decode, progress=progress,
        )
    if isinstance(dataset, ViaDataset):
        return check_via(
            dataset.root, json_name=dataset.json_file.name, class_names=dataset.class_names,
            class_attribute=dataset.class_attribute, name=name, decode=decode, progress=progress,
        )
    start = time.perf_counter()
    where = name or repr(dataset)
    shown = repr(dataset)
    report = DataReport(name=where, format="dataset", source=shown if len(shown) <= 150 else f"{shown[:147]}...")
    paths = {dataset.image_ids[i]: Path(dataset.image_path(i)) for i in range(len(dataset))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what a loader warns about while indexing, the check reports itself
        records = dataset.coco_gt().dataset
    _check_coco_records(
        report, records, file=where, image_path=lambda img: paths.get(img["id"]),
        decode=decode, progress=progress,
    )
    report.seconds = time.perf_counter() - start
    return report


class _Registry(Protocol):
    def get(self, kind: str, name: str) -> Any: ...

    def build(self, kind: str, spec: Mapping[str, Any], *, key: str = "") -> Any: ...


#: Dataset classes whose files are checked directly, with the checker and the config keys it takes.
_FILE_CHECKERS: dict[type, tuple[Callable[..., DataReport], tuple[str, ...]]] = {
    CocoDataset: (check_coco, ("ann_file", "images")),
    VocDataset: (check_voc, ("root", "split", "class_names", "use_difficult")),
    ViaDataset: (check_via, ("root", "json_name", "class_names", "class_attribute")),
}


def check_spec(
    spec: Mapping[str, Any],
    registry: _Registry,
    *,
    key: str,
    name: str | None = None,
    decode: bool = False,
    progress: bool = True,
) -> DataReport:
    """Check the dataset of a config section ``{name: NAME, **kwargs}`` (``data.train``, ``data.val``).

    ``coco``, ``voc`` and ``via`` are checked from their files without building the
    dataset (whose constructor stops at the first duplicate id or unknown category);
    other datasets (``shapes``, a plugin's) are built, then checked with
    :func:`check_dataset`. The report is called ``name`` (default: ``key``).

    Raises:
        ConfigError: the section names no dataset, an unknown one, or keys it does not take.
    """
    name = name or key
    dataset_name = spec.get("name")
    component = registry.get("dataset", str(dataset_name)) if dataset_name is not None else None
    checker = _FILE_CHECKERS.get(component.factory) if component is not None else None
    if checker is not None and component is not None:
        function, keys = checker
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        try:  # the dataset's own signature says whether the section is complete and known
            bound = inspect.signature(component.factory).bind(**kwargs)
        except TypeError:
            bound = None
        if bound is not None:
            bound.apply_defaults()
            args = {k: bound.arguments[k] for k in keys if k in bound.arguments}
            return function(**args, name=name, decode=decode, progress=progress)
    dataset = registry.build("dataset", spec, key=key)  # raises the config's error when it is incomplete
    return check_dataset(dataset, name=name, decode=decode, progress=progress)


#: The dataset name of a held-out part of another data section (``{name: split, of: train, ...}``).
_SPLIT = "split"


def check_config(
    config: Mapping[str, Any], registry: _Registry, *, decode: bool = False, progress: bool = True
) -> list[DataReport]:
    """Check ``data.train`` and ``data.val`` of a resolved detection config (the ones that are set).

    A section that is a held-out part of the other (``{name: split, of: train}``) is
    checked with it: one report covers the images of both.
    """
    data = config["data"]
    sections = {s: data.get(s) for s in ("train", "val") if isinstance(data.get(s), Mapping) and data.get(s)}
    reports = []
    for split, spec in sections.items():
        if spec.get("name") == _SPLIT:
            continue
        held_out = [
            other for other, o in sections.items() if o.get("name") == _SPLIT and str(o.get("of", "train")) == split
        ]
        name = f"data.{split}" + "".join(f" (and data.{o}, a held-out part of it)" for o in held_out)
        reports.append(check_spec(spec, registry, key=f"data.{split}", name=name, decode=decode, progress=progress))
    if not reports:
        raise ConfigError("the config sets neither data.train nor data.val; there is no dataset to check")
    return reports


def check_source(
    source: str | Path,
    *,
    images: str | Path | None = None,
    split: str | None = None,
    overrides: Sequence[str] = (),
    registry: _Registry | None = None,
    cli_plugins: Sequence[str] = (),
    decode: bool = False,
    progress: bool = True,
) -> list[DataReport]:
    """Check what a path holds, one report per dataset found.

    * a detkit config (``.yaml``, or ``detkit:NAME.yaml``): its ``data.train`` and
      ``data.val`` (:func:`check_config`; ``overrides`` apply);
    * a COCO instances ``.json`` (``images``: the image folder);
    * a VIA region-data ``.json``, or a folder holding ``via_region_data.json``;
    * a Pascal VOC root: the ``split`` (default: every split in ``ImageSets/Main``);
    * a YOLO ``data.yaml`` (a yaml with ``names``), or a folder holding one: the
      ``split`` (default: every split it lists), through the dataset's protocol.

    ``registry`` (the plugins' component registry) is needed for configs; by default
    the plugins are loaded as ``detkit`` loads them (with ``cli_plugins``, ``-p``).

    Raises:
        DataError: the path does not exist or is none of these.
    """
    text = str(source)
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") and _is_yolo_yaml(path):
        return _check_yolo(path, split=split, decode=decode, progress=progress)
    if text.startswith("detkit:") or path.suffix.lower() in (".yaml", ".yml"):
        return _check_yaml(
            text, overrides=overrides, registry=registry, cli_plugins=cli_plugins, decode=decode, progress=progress
        )
    if path.is_dir():
        if (path / "Annotations").is_dir():
            splits = [split] if split else _voc_splits(path)
            return [check_voc(path, split=s, name=f"{path} ({s})", decode=decode, progress=progress) for s in splits]
        for name in ("data.yaml", "data.yml"):
            if (path / name).is_file():
                return _check_yolo(path / name, split=split, decode=decode, progress=progress)
        if (path / "via_region_data.json").is_file():
            return [check_via(path, decode=decode, progress=progress)]
        raise DataError(
            f"'{path}' is a folder but neither a Pascal VOC root (no Annotations/), a YOLO dataset (no data.yaml) "
            "nor a VIA folder (no via_region_data.json); give a COCO .json, a VOC root, a VIA json, a YOLO "
            "data.yaml or a detkit config"
        )
    if not path.exists():
        raise DataError(
            f"'{path}' does not exist; give a COCO .json, a VOC root, a VIA json, a YOLO data.yaml or a detkit config"
        )
    if path.suffix.lower() == ".json":
        if _looks_like_via(path):
            return [check_via(path.parent, json_name=path.name, decode=decode, progress=progress)]
        return [check_coco(path, images, decode=decode, progress=progress)]
    raise DataError(
        f"'{path}': give a COCO .json, a VOC root, a VIA json or folder, a YOLO data.yaml or a detkit config (.yaml)"
    )


def _check_yaml(
    text: str,
    *,
    overrides: Sequence[str],
    registry: _Registry | None,
    cli_plugins: Sequence[str],
    decode: bool,
    progress: bool,
) -> list[DataReport]:
    from detkit.config import load_config

    config = load_config(text, list(overrides))
    if registry is None:
        from detkit.plugins import load_plugins

        registry = load_plugins(cli_plugins, config_plugins=list(config.get("plugins") or [])).registry
    return check_config(config, registry, decode=decode, progress=progress)


def _is_yolo_yaml(path: Path) -> bool:
    """Whether a yaml file is a YOLO ``data.yaml`` (it names the classes) rather than a detkit config."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False  # the config reader says what is wrong
    return isinstance(data, dict) and "names" in data and not isinstance(data.get("model"), dict)


def _check_yolo(data_yaml: Path, *, split: str | None, decode: bool, progress: bool) -> list[DataReport]:
    """Each split of a YOLO ``data.yaml`` (or ``split``), through the dataset's protocol.

    :class:`~detkit.data.yolo.YoloDataset` refuses a bad label line when it is built
    (a DataError naming the file and line); what it clips or drops is not seen here.
    """
    from detkit.data.yolo import SPLIT_KEYS, YoloDataset, read_data_yaml

    splits = [split] if split else [k for k in SPLIT_KEYS if read_data_yaml(data_yaml).get(k)]
    if not splits:
        raise DataError(f"YOLO data file '{data_yaml}' lists no split ({', '.join(SPLIT_KEYS)}); add one")
    return [
        check_dataset(YoloDataset(yaml=data_yaml, split=s), name=f"{data_yaml} ({s})", decode=decode,
                      progress=progress)
        for s in splits
    ]


def _voc_splits(root: Path) -> list[str]:
    main = root / "ImageSets" / "Main"
    splits = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []
    if not splits:
        raise DataError(f"VOC root '{root}' has no split lists in ImageSets/Main; give --split or add them")
    return splits


def _looks_like_via(path: Path) -> bool:
    """Whether a json file is VIA region data rather than COCO (from its first 64 KiB)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(65536)
    return '"_via_img_metadata"' in head or ('"filename"' in head and '"regions"' in head)


# ----------------------------------------------------------------------------- output


def format_report(report: DataReport, *, max_examples: int = 5) -> str:
    """The report as text: problems by severity (count and the first examples), class and box-size histograms."""
    classes = len(report.class_names)
    lines = [
        f"{report.name}: {report.format} {report.source}"
        + (f" (images in {report.images_dir})" if report.images_dir else ""),
        f"  {report.num_images} images, {report.num_objects} annotations, {classes} class{'es' * (classes != 1)}; "
        f"{report.num_errors} {_plural(ERROR, report.num_errors)}, "
        f"{report.num_warnings} {_plural(WARNING, report.num_warnings)} ({report.seconds:.2f} s)",
    ]
    for severity in SEVERITIES:
        for kind in report.kinds_of(severity):
            lines.append(f"  {severity}: {KINDS[kind].label}: {report.counts[kind]}")
            shown = report.problems(kind)[: max_examples if severity != INFO else min(max_examples, 3)]
            lines += [f"      {p.describe(file=p.file != report.source)}" for p in shown]
            if report.counts[kind] > len(shown):
                lines.append(f"      ... and {report.counts[kind] - len(shown)} more (report.json keeps "
                             f"{min(report.counts[kind], MAX_KEPT)})")
    lines.append("  objects per class (non-crowd, usable boxes):")
    lines += _bars({n: report.class_counts.get(n, 0) for n in report.class_names}, indent=4)
    sizes = report.size_counts()
    total = sum(sizes.values())
    if total:
        lines.append(
            "  box sizes (sqrt of box area): "
            + ", ".join(
                f"{k} ({rule}) {v} ({100 * v / total:.0f}%)"
                for (k, v), rule in zip(sizes.items(), ("< 32 px", "32-96 px", ">= 96 px"))
            )
        )
        edges, counts = report.side_histogram()
        lines += _bars({f"{_g(a)}-{_g(b)} px": c for a, b, c in zip(edges, edges[1:], counts)}, indent=4)
    return "\n".join(lines)


def _bars(values: Mapping[str, int], *, indent: int, width: int = 40) -> list[str]:
    if not values:
        return [" " * indent + "(none)"]
    top = max(values.values()) or 1
    label_width = max(len(k) for k in values)
    count_width = len(str(top))
    return [
        f"{' ' * indent}{k:<{label_width}}  {v:>{count_width}}  {'#' * math.ceil(width * v / top)}".rstrip()
        for k, v in values.items()
    ]


def summarize(reports: Iterable[DataReport]) -> str:
    """One line: each report's name and its error and warning counts by kind."""
    return "; ".join(f"{r.name}: {r.summary()}" for r in reports)


def report_json(reports: Sequence[DataReport]) -> dict[str, Any]:
    """``{"num_errors", "num_warnings", "datasets": [DataReport.to_json(), ...]}``, what ``report.json`` holds."""
    return {
        "num_errors": sum(r.num_errors for r in reports),
        "num_warnings": sum(r.num_warnings for r in reports),
        "datasets": [r.to_json() for r in reports],
    }


def write_report(reports: Sequence[DataReport], out_dir: str | Path, *, plots: bool = True) -> list[Path]:
    """Write ``report.json`` (and, with ``plots``, ``classes.png`` and ``box_sizes.png``) into ``out_dir``, atomically.

    ``report.json``: :func:`report_json`.
    The plots put the datasets side by side (``data.train`` against ``data.val``).
    Returns the files written.
    """
    out = Path(out_dir)
    written = [out / "report.json"]
    write_json(written[0], report_json(reports))
    if plots:
        written.append(plot_classes(reports, out / "classes.png"))
        written.append(plot_box_sizes(reports, out / "box_sizes.png"))
    return written


def plot_classes(reports: Sequence[DataReport], out_png: str | Path) -> Path:
    """Objects per class, one bar per dataset and class (horizontal), into a PNG (atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(n for r in reports for n in r.class_names))
    rows = max(1, len(names))
    fig = Figure(figsize=(8, min(40.0, 1.2 + 0.22 * rows * max(1, len(reports)))), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    height = 0.8 / max(1, len(reports))
    y = np.arange(len(names), dtype=np.float64)
    for k, r in enumerate(reports):
        counts = [r.class_counts.get(n, 0) for n in names]
        offset = (k - (len(reports) - 1) / 2) * height
        bars = ax.barh(y + offset, counts, height=height, label=f"{r.name} ({sum(counts)} objects)")
        if len(names) <= 40:
            ax.bar_label(bars, fontsize="x-small", padding=2)
    ax.set_yticks(y, names, fontsize="small" if len(names) <= 40 else "xx-small")
    ax.margins(y=0.01)
    ax.invert_yaxis()
    ax.set_xlabel("objects (non-crowd)")
    ax.set_title("objects per class")
    ax.grid(True, axis="x", alpha=0.3)
    if reports:
        ax.legend(fontsize="small", loc="lower right")
    return _save(fig, out_png)


def plot_box_sizes(reports: Sequence[DataReport], out_png: str | Path) -> Path:
    """COCO small / medium / large counts and a log-scale histogram of ``sqrt(box area)``, into a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_sml, ax_hist = fig.subplots(1, 2, width_ratios=[1, 2.2])
    labels = ["small\n< 32 px", "medium\n32-96 px", "large\n>= 96 px"]
    width = 0.8 / max(1, len(reports))
    all_sides = [s for r in reports for s in r.box_sides if s > 0]
    if all_sides:
        low = 2.0 ** math.floor(math.log2(min(all_sides)))
        high = 2.0 ** (math.floor(math.log2(max(all_sides))) + 1)
        bins = np.geomspace(low, high, round(4 * math.log2(high / low)) + 1)  # four bins an octave
    for k, r in enumerate(reports):
        sizes = r.size_counts()
        total = max(1, sum(sizes.values()))
        x = np.arange(3) + (k - (len(reports) - 1) / 2) * width
        bars = ax_sml.bar(x, list(sizes.values()), width=width, label=r.name)
        ax_sml.bar_label(bars, [f"{v}\n{100 * v / total:.0f}%" for v in sizes.values()], fontsize="x-small")
        sides = [s for s in r.box_sides if s > 0]
        if sides:
            weights = np.full(len(sides), 1.0 / len(sides))
            ax_hist.hist(sides, bins=bins, weights=weights, histtype="step", linewidth=1.5,
                         label=f"{r.name} ({len(sides)} boxes)")
    ax_sml.set_xticks(np.arange(3), labels, fontsize="small")
    ax_sml.set_ylabel("objects")
    ax_sml.set_title("COCO object sizes (box area)")
    ax_sml.margins(y=0.2)
    ax_hist.set_xscale("log")
    if all_sides:  # ticks at powers of two, written as plain pixels
        ticks = [2.0**k for k in range(round(math.log2(low)), round(math.log2(high)) + 1)]
        ax_hist.set_xticks(ticks, [_g(t) for t in ticks])
        ax_hist.xaxis.set_minor_formatter(NullFormatter())
    for edge, label in ((SMALL, "small | medium"), (MEDIUM, "medium | large")):
        ax_hist.axvline(edge, color="gray", linestyle="--", linewidth=1.0)
        ax_hist.text(edge, 1.0, label, transform=ax_hist.get_xaxis_transform(), ha="center", va="bottom",
                     fontsize="x-small", color="gray")
    ax_hist.set_xlabel("sqrt(box area), pixels (log scale)")
    ax_hist.set_ylabel("fraction of the dataset's boxes")
    ax_hist.set_title("box sizes", pad=14)
    ax_hist.grid(True, alpha=0.3)
    if all_sides:
        ax_hist.legend(fontsize="small")
        ax_sml.legend(fontsize="small")
    else:
        ax_hist.text(0.5, 0.5, "no boxes", ha="center", va="center", transform=ax_hist.transAxes)
    return _save(fig, out_png)


def _save(fig: Any, out_png: str | Path) -> Path:
    target = Path(out_png)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target


# ----------------------------------------------------------------------------- training


def check_mode(value: Any) -> str:
    """``data.check`` as one of :data:`CHECK_MODES` (YAML reads a bare ``off`` as false).

    Raises:
        ConfigError: any other value.
    """
    if value is False:
        return "off"
    if value is None:
        return "warn"
    if isinstance(value, str) and value.strip().lower() in CHECK_MODES:
        return value.strip().lower()
    raise ConfigError(f"config key 'data.check' must be strict, warn or off, got {value!r}")


def check_before_training(
    config: Mapping[str, Any],
    registry: _Registry,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> list[DataReport]:
    """What ``detkit train`` runs before it builds the datasets, as ``data.check`` says.

    ``strict``: errors stop the run with one line counting them; ``warn`` (the
    default): errors and warnings are logged in one line and the run goes on;
    ``off``: nothing is checked. Images are read from their headers only. With
    ``out_dir`` the full report goes to ``out_dir/data_check.json``.

    Raises:
        DataError: ``strict`` and the data has errors.
        ConfigError: ``data.check`` is none of strict, warn, off.
    """
    mode = check_mode(config["data"].get("check", "warn"))
    if mode == "off":
        return []
    reports = check_config(config, registry, progress=progress)
    if out_dir is not None:
        write_json(Path(out_dir) / "data_check.json", report_json(reports))
    errors = sum(r.num_errors for r in reports)
    warnings_ = sum(r.num_warnings for r in reports)
    if errors and mode == "strict":
        raise DataError(
            f"data check found {errors} {_plural(ERROR, errors)} (data.check=strict): {summarize(reports)}; "
            "`detkit data check` on this config names each file and id (data.check=warn trains anyway)"
        )
    if errors or warnings_:
        logger.warning(
            "data check: %s; `detkit data check` on this config names each file and id%s",
            summarize(reports),
            " (data.check=strict stops on errors)" if errors else "",
        )
    return reports

