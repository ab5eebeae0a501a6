"""COCO-style evaluation of detections and instance masks (Lin et al., "Microsoft COCO", ECCV 2014).

:class:`CocoEvaluator` collects :class:`~detkit.structures.Detections` image by
image (or the result records another detector wrote, :meth:`CocoEvaluator.add_results`),
keeps them as COCO result records and runs ``COCOeval`` on the images that were added
(so evaluating part of a dataset is correct).

Two implementations of ``COCOeval`` compute the same numbers (``eval.backend``):

- ``faster`` (the default): faster-coco-eval, which keeps pycocotools' API and
  matching rules but runs the per-image matching (``evaluateImg``) and the
  precision/recall accumulation in C++; about ten times faster on COCO val2017's size.
- ``pycocotools``: the reference implementation, in Python and numpy.

tests/evaluation/test_coco_backends.py checks that both give identical summary
numbers and per-class APs, boxes and masks.

The metrics dict, per evaluated IoU type (``"bbox"``, ``"segm"``)::

    {"bbox": {"AP": .., "AP50": .., "AP75": .., "APs": .., "APm": .., "APl": ..,
              "AR1": .., "AR10": .., "AR100": .., "ARs": .., "ARm": .., "ARl": ..,
              "per_class": {class_name: AP, ...}, "backend": "faster"}}

The twelve numbers are pycocotools' ``stats`` in that order, as fractions in
``[0, 1]``; like pycocotools, -1.0 means "no ground truth to measure" (for example
no large objects). A class's AP is the mean of ``precision[:, :, k, area=all,
maxDets=100]`` over its defined entries, -1.0 if the class has no ground truth.
``backend`` names the implementation that computed them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from detkit.errors import ConfigError, DataError
from detkit.io import write_json
from detkit.structures import Detections, detections_to_coco

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "METRIC_NAMES",
    "CocoEvaluator",
    "PrecisionCurves",
    "check_backend",
    "encode_masks",
    "format_metrics",
    "read_results",
    "write_results",
]

#: The implementations of COCOeval an evaluator can run (``eval.backend``).
BACKENDS: tuple[str, ...] = ("faster", "pycocotools")
#: faster-coco-eval; pycocotools stays the reference the tests compare it with.
DEFAULT_BACKEND = "faster"
_BACKEND_NAMES = {"faster": "faster-coco-eval", "pycocotools": "pycocotools"}
#: What one record of a results file holds, for error messages.
_RECORD_FORMAT = (
    '{"image_id": int, "category_id": int, "score": float, "bbox": [x, y, width, height]} '
    '(and/or "segmentation": a COCO RLE)'
)
#: Unknown ids an error message names (the count is always given).
_NAMED_IDS = 5

#: The names of pycocotools' twelve summary numbers, in its order.
METRIC_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
_METRIC_LABELS: tuple[str, ...] = (
    "AP   IoU=0.50:0.95  area=all     maxDets=100",
    "AP   IoU=0.50       area=all     maxDets=100",
    "AP   IoU=0.75       area=all     maxDets=100",
    "AP   IoU=0.50:0.95  area=small   maxDets=100",
    "AP   IoU=0.50:0.95  area=medium  maxDets=100",
    "AP   IoU=0.50:0.95  area=large   maxDets=100",
    "AR   IoU=0.50:0.95  area=all     maxDets=1",
    "AR   IoU=0.50:0.95  area=all     maxDets=10",
    "AR   IoU=0.50:0.95  area=all     maxDets=100",
    "AR   IoU=0.50:0.95  area=small   maxDets=100",
    "AR   IoU=0.50:0.95  area=medium  maxDets=100",
    "AR   IoU=0.50:0.95  area=large   maxDets=100",
)
_IOU_TYPES = ("bbox", "segm")


def check_backend(backend: str, *, source: str = "eval.backend") -> str:
    """``backend`` when it is one of :data:`BACKENDS`.

    Raises:
        ConfigError: an unknown backend, naming ``source``.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"{source} must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def encode_masks(masks: Tensor) -> list[dict[str, Any]]:
    """``(D, H, W)`` masks -> D COCO RLEs with ``counts`` as str.

    Float masks are probabilities, thresholded at 0.5; bool and integer masks are
    foreground where non-zero.
    """
    if masks.dim() != 3:
        raise ValueError(f"expected (D, H, W) masks, got shape {tuple(masks.shape)}")
    masks = masks.detach().cpu()
    binary = masks >= 0.5 if masks.is_floating_point() else masks != 0
    # (D, H, W) -> (H, W, D), Fortran order as pycocotools wants
    array = np.asfortranarray(binary.permute(1, 2, 0).numpy().astype(np.uint8))
    rles = mask_utils.encode(array) if array.shape[2] else []
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(rles)


@dataclass(frozen=True)
class PrecisionCurves:
    """COCOeval's interpolated precision at maxDets=100, per class and object size.

    Shape glossary: T IoU thresholds (0.50:0.05:0.95), R recall thresholds (0:0.01:1),
    K classes (in the evaluator's label order), A area ranges (all, small, medium, large).

    Attributes:
        precision: ``(T, R, K, A)``; -1 where a class has no ground truth in that range.
        iou_thresholds: ``(T,)``.
        recall_thresholds: ``(R,)``.
        class_names: the K class names.
        areas: the A area-range names.
    """

    precision: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    class_names: tuple[str, ...]
    areas: tuple[str, ...]

    @classmethod
    def of(cls, coco_eval: Any, class_names: Sequence[str], category_ids: Sequence[int]) -> PrecisionCurves:
        """The curves of an accumulated COCOeval, reordered to ``class_names``' order."""
        params = coco_eval.params
        precision = np.asarray(coco_eval.eval["precision"])[..., list(params.maxDets).index(100)]
        cat_index = {int(c): k for k, c in enumerate(params.catIds)}
        columns = np.full((*precision.shape[:2], len(category_ids), precision.shape[3]), -1.0)
        for k, cat_id in enumerate(category_ids):
            if int(cat_id) in cat_index:
                columns[:, :, k] = precision[:, :, cat_index[int(cat_id)]]
        return cls(
            precision=columns,
            iou_thresholds=np.asarray(params.iouThrs, dtype=float),
            recall_thresholds=np.asarray(params.recThrs, dtype=float),
            class_names=tuple(class_names),
            areas=tuple(str(a) for a in params.areaRngLbl),
        )

    def at(self, iou: float | None = None, area: str = "all") -> np.ndarray:
        """``(R, K)`` precision at IoU threshold ``iou`` (None: the mean over T of the defined values)."""
        p = self.precision[:, :, :, self.areas.index(area)]
        if iou is not None:
            return np.asarray(p[int(np.argmin(np.abs(self.iou_thresholds - iou)))])
        defined = p > -1
        total = np.where(defined, p, 0.0).sum(axis=0)
        count = defined.sum(axis=0)
        return np.where(count > 0, total / np.maximum(count, 1), -1.0)


class CocoEvaluator:
    """Collect detections and evaluate them against a COCO ground truth.

    Args:
        coco_gt: the ground truth (a dataset's ``coco_gt()``).
        class_names: name of each label index ``0..K-1``.
        category_ids: the ground truth's category id of each label index.
        iou_types: any of ``"bbox"``, ``"segm"`` (segm needs ``Detections.masks``
            at the image's original size).
        backend: the COCOeval implementation, one of :data:`BACKENDS`.

    Attributes:
        summary_text: the backend's printed summary of the last :meth:`evaluate`.
        curves: per IoU type, the precision-recall curves of the last :meth:`evaluate`.
    """

    def __init__(
        self,
        coco_gt: COCO,
        *,
        class_names: Sequence[str],
        category_ids: Sequence[int],
        iou_types: Sequence[str] = ("bbox",),
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        if len(class_names) != len(category_ids):
            raise ValueError(
                f"class_names ({len(class_names)}) and category_ids ({len(category_ids)}) differ in length"
            )
        unknown = [t for t in iou_types if t not in _IOU_TYPES]
        if unknown or not iou_types:
            raise ValueError(f"iou_types must be a non-empty subset of {_IOU_TYPES}, got {list(iou_types)}")
        self.coco_gt = coco_gt
        self.class_names = list(class_names)
        self.category_ids = [int(c) for c in category_ids]
        self.iou_types = tuple(dict.fromkeys(iou_types))
        self.backend = check_backend(backend, source="backend")
        self.summary_text = ""
        self.curves: dict[str, PrecisionCurves] = {}
        self._records: list[dict[str, Any]] = []
        self._image_ids: set[int] = set()
        self._faster_coco_gt: Any = None

    def reset(self) -> None:
        """Forget every added detection."""
        self._records = []
        self._image_ids = set()
        self.summary_text = ""
        self.curves = {}

    def add(self, image_id: int, dets: Detections) -> None:
        """Add the detections of one image (also when there are none).

        Args:
            image_id: the ground-truth image id.
            dets: D detections in the image's original pixels; ``masks`` ``(D, H, W)``
                (bool, or float probabilities) when evaluating segm.
        """
        image_id = int(image_id)
        info = self.coco_gt.imgs.get(image_id)
        if info is None:
            raise DataError(
                f"image id {image_id} is not in the ground truth; evaluate with the dataset the images came from"
            )
        if len(dets) and not 0 <= int(dets.labels.min()) <= int(dets.labels.max()) < len(self.category_ids):
            raise ValueError(
                f"detection labels must be in 0..{len(self.category_ids) - 1}, "
                f"got {dets.labels.min().item()}..{dets.labels.max().item()}"
            )
        rles = None
        if "segm" in self.iou_types:
            if dets.masks is None:
                raise ValueError("segm evaluation needs Detections.masks")
            size = (info.get("height"), info.get("width"))
            if len(dets) and tuple(dets.masks.shape[-2:]) != size:
                raise ValueError(
                    f"masks of image id {image_id} are {tuple(dets.masks.shape[-2:])} but the "
                    f"image is {size}; "
                    "paste masks at the original image size"
                )
            rles = encode_masks(dets.masks)
        self._records.extend(detections_to_coco(dets, image_id=image_id, category_ids=self.category_ids, rles=rles))
        self._image_ids.add(image_id)

    def add_results(
        self,
        records: list[dict[str, Any]],
        *,
        image_ids: Iterable[int] | None = None,
        source: str = "the results",
    ) -> None:
        """Add COCO result records any detector wrote (what :func:`read_results` returns).

        Args:
            records: ``{"image_id", "category_id", "score", "bbox"[, "segmentation"]}``
                each, ``category_id`` one of ``category_ids``; held, not copied.
            image_ids: the images the records cover, those without a record included
                (the detector found nothing there); default: every ground-truth image.
            source: what to call the records in an error message (the file).

        Raises:
            DataError: records name image or category ids the ground truth lacks (the
                first few and their count), or lack what an IoU type needs.
        """
        covered = set(self.coco_gt.imgs) if image_ids is None else {int(i) for i in image_ids}
        problems = []
        unknown_images = sorted(({r["image_id"] for r in records} | covered) - set(self.coco_gt.imgs))
        if unknown_images:
            problems.append(f"{len(unknown_images)} image ids not in the ground truth ({_few(unknown_images)})")
        unknown_cats = sorted({r["category_id"] for r in records} - set(self.category_ids))
        if unknown_cats:
            problems.append(
                f"{len(unknown_cats)} category ids not in the ground truth ({_few(unknown_cats)}; "
                f"it has {_few(self.category_ids)})"
            )
        if problems:
            raise DataError(
                f"{source} names {' and '.join(problems)}; score results against the annotation file "
                "of the images their detector ran on"
            )
        for iou_type, key in (("bbox", "bbox"), ("segm", "segmentation")):
            lacking = sum(1 for r in records if key not in r) if iou_type in self.iou_types else 0
            if lacking:
                raise DataError(f"{lacking} of the {len(records)} records of {source} have no {key!r}, "
                                f"which {iou_type} evaluation needs")  # fmt: skip
        self._records.extend(records)
        self._image_ids.update(covered)

    @property
    def image_ids(self) -> list[int]:
        """The ids of the images added so far, sorted."""
        return sorted(self._image_ids)

    def results(self) -> list[dict[str, Any]]:
        """The COCO result records (``image_id, category_id, bbox, score[, segmentation]``)."""
        return [dict(r) for r in self._records]

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Run COCOeval on the added images; see the module docstring for the dict."""
        metrics: dict[str, dict[str, Any]] = {}
        texts = []
        for iou_type in self.iou_types:
            coco_eval, text = self._run(iou_type)
            metrics[iou_type] = self._metrics(coco_eval)
            metrics[iou_type]["backend"] = self.backend
            self.curves[iou_type] = PrecisionCurves.of(coco_eval, self.class_names, self.category_ids)
            texts.append(f"IoU type: {iou_type}\n{text}")
        self.summary_text = "\n".join(texts)
        return metrics

    def _run(self, iou_type: str) -> tuple[Any, str]:
        """The backend's COCOeval after evaluate/accumulate/summarize, and what it printed."""
        # Each type gets its own copies: loadRes adds fields to the records, and a
        # segm result without "bbox" gets its area from the mask (as it should).
        drop = "segmentation" if iou_type == "bbox" else "bbox"
        records = [{k: v for k, v in r.items() if k != drop} for r in self._records]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            coco_eval = self._cocoeval(records, iou_type)
            coco_eval.params.imgIds = self.image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            out.truncate(0)
            out.seek(0)
            coco_eval.summarize()
        return coco_eval, out.getvalue()

    def _cocoeval(self, records: list[dict[str, Any]], iou_type: str) -> Any:
        """The backend's COCOeval of ``records`` (which loadRes completes in place)."""
        if self.backend == "pycocotools":
            coco_dt = self.coco_gt.loadRes(records) if records else self._empty_results()
            return COCOeval(self.coco_gt, coco_dt, iouType=iou_type)
        from faster_coco_eval import COCOeval_faster

        coco_gt = self._faster_gt()
        return COCOeval_faster(coco_gt, coco_gt.loadRes(records), iouType=iou_type, print_function=print)

    def _faster_gt(self) -> Any:
        """The ground truth as a faster-coco-eval COCO, built once.

        The annotation dicts are copied (not their polygons): faster-coco-eval stores
        each one's RLE and ignore flag in it, and the pycocotools COCO stays as it was.
        """
        if self._faster_coco_gt is None:
            from faster_coco_eval import COCO as FasterCOCO

            data = self.coco_gt.dataset
            self._faster_coco_gt = FasterCOCO({**data, "annotations": [dict(a) for a in data.get("annotations", [])]})
        return self._faster_coco_gt

    def _empty_results(self) -> COCO:
        """A result COCO without detections (pycocotools' loadRes fails on an empty list)."""
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(self.coco_gt.dataset.get("images", [])),
            "categories": list(self.coco_gt.dataset.get("categories", [])),
            "annotations": [],
        }
        coco_dt.createIndex()
        return coco_dt

    def _metrics(self, coco_eval: Any) -> dict[str, Any]:
        # faster-coco-eval appends AR50 and AR75 to the twelve; zip stops at twelve
        metrics: dict[str, Any] = {name: float(v) for name, v in zip(METRIC_NAMES, coco_eval.stats)}
        # precision: (T iou thresholds, R recall thresholds, K categories, A areas, M maxDets)
        precision = coco_eval.eval["precision"]
        cat_index = {int(c): k for k, c in enumerate(coco_eval.params.catIds)}
        area_all = list(coco_eval.params.areaRngLbl).index("all")
        max_dets = list(coco_eval.params.maxDets).index(100)
        per_class: dict[str, float] = {}
        for name, cat_id in zip(self.class_names, self.category_ids):
            k = cat_index.get(cat_id)
            if k is None:
                per_class[name] = -1.0
                continue
            p = precision[:, :, k, area_all, max_dets]
            p = p[p > -1]
            per_class[name] = float(p.mean()) if p.size else -1.0
        metrics["per_class"] = per_class
        return metrics


def format_metrics(metrics: dict[str, dict[str, Any]]) -> str:
    """A readable table of the metrics of :meth:`CocoEvaluator.evaluate`.

    Values are fractions in ``[0, 1]`` with three decimals, as pycocotools reports
    them and ``metrics.json`` stores them; ``-`` stands for -1 (nothing to measure).
    With ``metrics["images"]`` (what :func:`~detkit.engine.evaluate.evaluate_dataset`
    adds) the table opens with ``evaluated on N of M images`` and the skipped files.
    """

    def value(v: float) -> str:
        return f"{v:5.3f}" if v >= 0 else "    -"

    lines: list[str] = []
    images = metrics.get("images")
    if isinstance(images, dict) and "evaluated" in images:
        skipped = images.get("skipped") or []
        lines.append(
            f"evaluated on {images['evaluated']} of {images['total']} images"
            + (f"; skipped {len(skipped)} that cannot be used (the metrics cover the others only):" if skipped else "")
        )
        lines += [f"  skipped '{s['file']}'" for s in skipped[:5]]
        if len(skipped) > 5:
            lines.append(f"  ... and {len(skipped) - 5} more (metrics.json lists them)")
        lines.append("")
    for iou_type, m in metrics.items():
        if iou_type not in _IOU_TYPES:
            continue
        by = f", by {_BACKEND_NAMES.get(m['backend'], m['backend'])}" if "backend" in m else ""
        kind = "boxes" if iou_type == "bbox" else "masks"
        lines.append(f"{iou_type} ({kind}), fractions (0-1) as in metrics.json{by}")
        for name, label in zip(METRIC_NAMES, _METRIC_LABELS):
            lines.append(f"  {name:<6} {label:<45} {value(m[name])}")
        per_class = m.get("per_class", {})
        if per_class:
            width = max(len(n) for n in per_class)
            lines.append("  per-class AP (IoU=0.50:0.95):")
            for name, ap in per_class.items():
                lines.append(f"    {name:<{width}}  {value(ap)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a COCO results file, from detkit (``results.json``) or any detector.

    The file is a JSON list of ``{"image_id", "category_id", "score", "bbox"}``
    records (``bbox`` ``[x, y, width, height]`` in pixels) with or without
    ``"segmentation"`` (a COCO RLE), as the COCO detection challenge defines it. Ids are
    checked against a ground truth by :meth:`CocoEvaluator.add_results`.

    Raises:
        DataError: the file is missing, not JSON, or not a list of such records (the
            first bad one is named).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"results file '{path}' not found")
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"results file '{path}' is not JSON ({exc}); expected a list of {_RECORD_FORMAT}") from None
    if not isinstance(records, list):
        raise DataError(
            f"results file '{path}' holds a JSON {type(records).__name__}, not a list of records {_RECORD_FORMAT}"
        )
    for n, record in enumerate(records):
        problem = _record_problem(record)
        if problem:
            raise DataError(f"results file '{path}': record #{n} {problem}; each record is {_RECORD_FORMAT}")
    return records


def _record_problem(record: Any) -> str:
    """What is wrong with one result record ("" when nothing)."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    for key in ("image_id", "category_id"):
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"has {key} {value!r}, not an integer"
    if not _is_number(record.get("score")):
        return f"has score {record.get('score')!r}, not a number"
    if "bbox" not in record and "segmentation" not in record:
        return "has neither 'bbox' nor 'segmentation'"
    bbox = record.get("bbox", [0, 0, 0, 0])
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"has bbox {bbox!r}, not [x, y, width, height] numbers"
    segm = record.get("segmentation", {"size": [], "counts": ""})
    if not (isinstance(segm, dict) and "size" in segm and "counts" in segm):
        return "has a 'segmentation' that is not a COCO RLE ({'size': [h, w], 'counts': ...})"
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _few(ids: Sequence[int]) -> str:
    """The first :data:`_NAMED_IDS` ids, and how many more."""
    named = ", ".join(str(i) for i in ids[:_NAMED_IDS])
    return named + (f" and {len(ids) - _NAMED_IDS} more" if len(ids) > _NAMED_IDS else "")


def write_results(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Atomically write COCO result records as a JSON list."""
    write_json(path, records, indent=None)
