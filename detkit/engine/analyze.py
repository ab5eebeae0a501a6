"""Why a model loses AP: error analysis, curves, confusion and a gallery of its worst images.

:func:`analyze_results` takes COCO result records (a ``results.json`` of ``detkit eval``
or of any detector) and the dataset they are of, and returns, for ``metrics.json``:

- the COCO metrics (:mod:`detkit.evaluation.coco`) and, per IoU type,
  ``errors`` (the TIDE error analysis, :mod:`detkit.evaluation.tide`) and ``by_size``
  (AP, AR and the number of objects per COCO size range, per class too), and
  ``confusion`` (:mod:`detkit.evaluation.confusion`);

and writes into ``out_dir``:

- ``errors.png``: dAP per error type, a panel per IoU type;
- ``pr_curves.png`` (and ``pr_curves_segm.png`` for masks): precision-recall per class;
- ``confusion_matrix.png``;
- ``gallery/``: the images with the most errors among the detections scoring at least
  ``score_thresh`` plus the missed objects, ground truth and detections drawn in
  distinct styles (:func:`detkit.viz.analysis.draw_errors`).

Every number covers the images listed in ``metrics["images"]``; an image that cannot be
read is left out of the gallery with a warning, never fatal.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detkit.data.base import DetectionDataset
from detkit.evaluation.coco import DEFAULT_BACKEND, CocoEvaluator, PrecisionCurves
from detkit.evaluation.confusion import confusion_matrix
from detkit.evaluation.tide import ERROR_TYPES, ErrorAnalysis, analyze_errors
from detkit.viz.analysis import draw_errors, plot_confusion_matrix, plot_error_bars, plot_pr_curves
from detkit.viz.draw import save_image

logger = logging.getLogger(__name__)

__all__ = ["SIZES", "analyze_results", "format_analysis", "size_table"]

#: COCO's object size ranges (by annotation area, in pixels).
SIZES: dict[str, tuple[float, float]] = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e10)}


def analyze_results(
    records: Sequence[dict[str, Any]],
    dataset: DetectionDataset,
    *,
    out_dir: str | Path,
    image_ids: Iterable[int] | None = None,
    backend: str = DEFAULT_BACKEND,
    gallery: int = 12,
    score_thresh: float = 0.5,
    source: str = "the results",
) -> dict[str, Any]:
    """Analyse ``records`` against ``dataset``'s ground truth and draw the pictures above.

    Args:
        records: COCO result records; boxes are analysed, masks too when every record
            has a ``segmentation``.
        image_ids: the images the records cover (default: every image of ``dataset``);
            one without a record is one where the detector found nothing.
        gallery: how many images the gallery draws (0: none).
        score_thresh: the lowest score the confusion matrix counts and the gallery draws.
        source: what to call the records in an error message.

    Returns:
        The metrics dict for ``metrics.json``, which the caller writes (``detkit eval``
        adds what it knows of the run).

    Raises:
        DataError: records name images or categories the ground truth lacks.
    """
    out = Path(out_dir)
    ids = list(dataset.image_ids) if image_ids is None else sorted({int(i) for i in image_ids})
    iou_types = tuple(t for t, key in (("bbox", "bbox"), ("segm", "segmentation")) if all(key in r for r in records))
    coco_gt = dataset.coco_gt()
    evaluator = CocoEvaluator(
        coco_gt, class_names=dataset.class_names, category_ids=dataset.category_ids,
        iou_types=iou_types or ("bbox",), backend=backend,
    )
    evaluator.add_results(list(records), image_ids=ids, source=source)
    metrics: dict[str, Any] = evaluator.evaluate()
    objects = _objects_by_size(coco_gt, ids, dataset.category_ids)
    analyses: dict[str, ErrorAnalysis] = {}
    for iou_type in evaluator.iou_types:
        analyses[iou_type] = analyze_errors(coco_gt, records, iou_type=iou_type, image_ids=ids)
        metrics[iou_type]["errors"] = analyses[iou_type].to_dict()
        metrics[iou_type]["by_size"] = size_table(evaluator.curves[iou_type], metrics[iou_type], objects)
    confusion = confusion_matrix(
        coco_gt, [r for r in records if "bbox" in r], class_names=dataset.class_names,
        category_ids=dataset.category_ids, image_ids=ids, score_thresh=score_thresh,
    )
    metrics["confusion"] = confusion.to_dict()
    metrics["images"] = {"evaluated": len(ids), "total": len(dataset.image_ids), "skipped": []}

    plot_error_bars(
        {t: {**a.delta_ap, "false_positive": a.false_positive_ap, "false_negative": a.false_negative_ap}
         for t, a in analyses.items()},
        out / "errors.png",
    )  # fmt: skip
    for iou_type, curves in evaluator.curves.items():
        name = "pr_curves.png" if iou_type == "bbox" else f"pr_curves_{iou_type}.png"
        plot_pr_curves(curves, out / name, title=f"precision-recall per class, {iou_type} ({len(ids)} images)")
    plot_confusion_matrix(confusion, out / "confusion_matrix.png")
    if gallery > 0 and "bbox" in analyses:
        metrics["gallery"] = _write_gallery(
            records, dataset, analyses["bbox"], out / "gallery", count=gallery, score_thresh=score_thresh
        )
    return metrics


def _objects_by_size(coco_gt: Any, image_ids: Sequence[int], category_ids: Sequence[int]) -> dict[str, int]:
    """How many non-crowd ground-truth objects of the images fall in each size range."""
    known = {int(c) for c in category_ids}
    counts = dict.fromkeys(SIZES, 0)
    for image_id in image_ids:
        for ann in coco_gt.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0) or int(ann["category_id"]) not in known:
                continue
            for size, (low, high) in SIZES.items():
                if low <= float(ann["area"]) < high:
                    counts[size] += 1
    return counts


def size_table(curves: PrecisionCurves, metrics: dict[str, Any], objects: dict[str, int]) -> dict[str, Any]:
    """AP and AR per size range (COCO's APs/APm/APl, ARs/ARm/ARl), the objects in it, and AP per class."""
    table: dict[str, Any] = {}
    for size, suffix in (("small", "s"), ("medium", "m"), ("large", "l")):
        p = curves.precision[:, :, :, curves.areas.index(size)]  # (T, R, K)
        defined = (p > -1).sum(axis=(0, 1))
        per_class = np.where(defined > 0, np.where(p > -1, p, 0.0).sum(axis=(0, 1)) / np.maximum(defined, 1), -1.0)
        table[size] = {
            "AP": metrics[f"AP{suffix}"],
            "AR": metrics[f"AR{suffix}"],
            "objects": objects[size],
            "per_class": {name: float(v) for name, v in zip(curves.class_names, per_class)},
        }
    return table


def _write_gallery(
    records: Sequence[dict[str, Any]],
    dataset: DetectionDataset,
    analysis: ErrorAnalysis,
    folder: Path,
    *,
    count: int,
    score_thresh: float,
) -> list[dict[str, Any]]:
    """Draw the ``count`` images with the most visible errors; returns what each file shows."""
    coco_gt = dataset.coco_gt()
    known = {int(c): k for k, c in enumerate(dataset.category_ids)}
    missed = set(analysis.missed_annotations)
    shown: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        image_id = int(r["image_id"])
        if r["score"] >= score_thresh and int(r["category_id"]) in known and image_id in analysis.per_image_errors:
            shown[image_id].append(i)
    errors: dict[int, int] = {}
    for image_id in analysis.per_image_errors:
        anns = coco_gt.imgToAnns.get(image_id, [])
        errors[image_id] = sum(1 for i in shown[image_id] if analysis.detection_errors[i] is not None) + sum(
            1 for a in anns if a["id"] in missed
        )
    worst = sorted((i for i in errors if errors[i] > 0), key=lambda i: (-errors[i], i))[:count]
    index_of = {image_id: k for k, image_id in enumerate(dataset.image_ids)}
    written: list[dict[str, Any]] = []
    for rank, image_id in enumerate(worst, start=1):
        path = dataset.image_path(index_of[image_id])
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            logger.warning("gallery: cannot read image '%s' (image id %d); left out", path, image_id)
            continue
        anns = [
            a for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0) and int(a["category_id"]) in known
        ]
        gt = np.array([a["bbox"] for a in anns], dtype=float).reshape(-1, 4)
        dets = [records[i] for i in shown[image_id]]
        boxes = np.array([r["bbox"] for r in dets], dtype=float).reshape(-1, 4)
        kinds = [analysis.detection_errors[i] or "correct" for i in shown[image_id]]
        drawn = draw_errors(
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
            gt_boxes=np.concatenate([gt[:, :2], gt[:, :2] + gt[:, 2:]], axis=1),
            gt_labels=[known[int(a["category_id"])] for a in anns],
            gt_missed=[a["id"] in missed for a in anns],
            det_boxes=np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1),
            det_labels=[known[int(r["category_id"])] for r in dets],
            det_scores=[float(r["score"]) for r in dets],
            det_kinds=kinds,
            class_names=dataset.class_names,
        )
        target = folder / f"{rank:02d}_{Path(path).stem}.png"
        save_image(target, drawn)
        written.append({"file": str(target), "image": str(path), "image_id": image_id, "errors": errors[image_id]})
    return written


def format_analysis(metrics: dict[str, Any]) -> str:
    """The error analysis, the size table and the largest confusions of :func:`analyze_results`' metrics."""
    lines: list[str] = []
    for iou_type in ("bbox", "segm"):
        m = metrics.get(iou_type)
        if not isinstance(m, dict) or "errors" not in m:
            continue
        lines.append(_errors_text(iou_type, m["errors"]))
        lines.append(f"{iou_type} by object size (COCO areas; AP/AR over IoU .50:.95):")
        lines.append(f"  {'size':<8} {'objects':>8} {'AP':>6} {'AR':>6}")
        for size, row in m.get("by_size", {}).items():
            ap = f"{row['AP']:6.3f}" if row["AP"] >= 0 else "     -"
            ar = f"{row['AR']:6.3f}" if row["AR"] >= 0 else "     -"
            lines.append(f"  {size:<8} {row['objects']:>8} {ap} {ar}")
        lines.append("")
    confusion = metrics.get("confusion")
    if confusion:
        matrix = np.asarray(confusion["matrix"])
        labels = confusion["labels"]
        off = matrix.copy()
        np.fill_diagonal(off, 0)
        order = [np.unravel_index(i, off.shape) for i in np.argsort(-off, axis=None, kind="stable")[:5]]
        top = [f"{labels[r]} -> {labels[c]}: {off[r, c]}" for r, c in order if off[r, c] > 0]
        lines.append(
            f"largest confusions (true -> predicted, score >= {confusion['score_thresh']:g}): "
            + ("; ".join(top) if top else "none")
        )
    return "\n".join(lines).rstrip() + "\n"


def _errors_text(iou_type: str, errors: dict[str, Any]) -> str:
    """The TIDE table of a metrics dict's ``errors``."""
    lines = [f"{iou_type} errors (TIDE, AP{round(100 * errors['pos_threshold'])} {100 * errors['ap']:.1f}):"]
    lines.append(f"  {'type':<15} {'count':>7} {'dAP':>6}")
    for kind in ERROR_TYPES:
        lines.append(f"  {kind:<15} {errors['counts'][kind]:>7} {100 * errors['delta_ap'][kind]:+6.1f}")
    lines.append(f"  {'false positive':<15} {'':>7} {100 * errors['false_positive_ap']:+6.1f}")
    lines.append(f"  {'false negative':<15} {'':>7} {100 * errors['false_negative_ap']:+6.1f}")
    return "\n".join(lines)
