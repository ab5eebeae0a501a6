"""Why a detector loses AP: TIDE's error analysis (Bolya, Foley, Hays, Hoffman,
"TIDE: A General Toolbox for Identifying Object Detection Errors", ECCV 2020).

:func:`analyze_errors` takes COCO result records (what ``detkit eval`` writes and
:func:`~detkit.evaluation.coco.read_results` reads) and the ground truth, sorts
every false positive and every missed object into one of six error types, and
measures each type's weight as the AP a model would gain if that type alone were
fixed by an oracle (``dAP``). Numbers are fractions in ``[0, 1]`` like detkit's
COCO metrics; TIDE's own prints are AP points (x 100).

Method, with ``t_f`` the foreground IoU threshold (``pos_threshold``, 0.5) and
``t_b`` the background one (``background_threshold``, 0.1):

1. Per image, the detections in descending score order, at most ``max_dets`` of
   them (over all classes together). Each takes the unmatched ground-truth object
   of its own class with the highest IoU if that IoU is ``>= t_f``: a true positive.
   Objects marked ``iscrowd`` are not objects to find: after matching, a detection
   that matched nothing and covers a crowd region of its class by more than ``t_f``
   (intersection over the detection's area, as COCO measures crowds) is left out of
   the AP.
2. Every other detection (crowd-ignored ones too, as the reference implementation
   does) is an error; the first rule that holds names its type:

   - ``localization``: its best IoU with an object of its class is in ``[t_b, t_f]``;
   - ``classification``: IoU ``>= t_f`` with an object of another class;
   - ``duplicate``: IoU ``>= t_f`` with an object of its class that a higher-scored
     detection already matched;
   - ``background``: IoU ``<= t_b`` with every object (every detection of an image
     without objects);
   - ``both``: anything else (wrong class and poorly localized).

   An object no detection matched is ``missed`` unless a localization or
   classification error points at it (fixing that error would find it).
3. AP: per class, the detections by descending score, precision and recall at each,
   precision made monotone (the maximum over higher recalls) and read at the 101
   recalls ``0, 0.01, ..., 1`` (the first detection reaching each recall; 0 beyond
   the last), averaged; ``ap`` is the mean over the classes with ground truth or
   with at least one detection that counts.
4. The oracle fix of a type, then AP again; ``dAP = max(AP_fixed - AP, 0)``:

   - ``localization`` / ``classification``: of the errors of this type that point
     at an object no detection matched, the highest-scored one per object becomes
     a true positive (of the object's class for classification); the others of the
     type are removed. The highest score is taken over both types together, so a
     localization error can win an object that a classification error also points
     at; fixing classification alone then removes the classification error.
   - ``both``, ``duplicate``, ``background``: the errors are removed.
   - ``missed``: the missed objects leave the ground truth.

   Two special fixes: ``false_positive_ap`` scores every true positive above every
   false positive (perfect precision at the same recall); ``false_negative_ap``
   drops every unmatched object from the ground truth (perfect recall at the same
   precision). These two are not clipped at 0.

Equal scores are ranked in the order the reference implementation (``tidecv``
1.0.1) pushes detections, so the numbers agree with it to float rounding
(tests/evaluation/test_tide.py runs both on the same data): the plain AP in
processing order (below), every fixed AP with the errors before the true positives.
So with many equal scores (quantized ones) each fixed AP ranks some false positives
above true positives of the same score, and the dAPs come out a little low; with
continuous scores this never matters.

How TIDE's AP at ``t_f = 0.5`` differs from COCOeval's AP50
(:class:`~detkit.evaluation.coco.CocoEvaluator`), so the two need not agree:

- ``max_dets`` counts the detections of an image over all classes; COCOeval keeps
  the top 100 per image *and class*.
- A class with detections but no ground truth counts with AP 0 in the mean;
  COCOeval leaves it out (-1). Removing such a class's false positives (a
  background fix) therefore raises TIDE's mean by dropping a zero.
- A crowd region of the detection's class ignores it when their crowd IoU is
  strictly above ``t_f``; COCOeval matches crowds at ``>= t_f``. (Neither counts an
  ignored detection in the AP; only TIDE also types it as an error.)
- Recall thresholds are exactly ``k / 100``; COCOeval's ``np.linspace`` values differ
  in the last bit, so at a recall that lands exactly on a threshold the two read
  neighbouring precisions. COCOeval's precision adds ``np.spacing(1)`` to its
  denominator.
- Among objects with the same IoU a detection takes the first (COCOeval: the last),
  and equal scores keep the order above (COCOeval: image order per class).

Shape glossary: D result records (input order), N analysed detections (analysed
images, the top ``max_dets`` of each, in processing order: images in the ground
truth's order, detections by descending score within an image), M non-crowd objects
of the analysed images, G and C the objects and crowd regions of one image, K
categories of the ground truth, R = 101 recall thresholds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detkit.errors import ConfigError, DataError

__all__ = ["ERROR_TYPES", "ErrorAnalysis", "analyze_errors", "format_errors"]

#: TIDE's six error types, in the order the paper (and every report) lists them.
ERROR_TYPES: tuple[str, ...] = ("classification", "localization", "both", "duplicate", "background", "missed")

_CLS, _LOC, _BOTH, _DUP, _BKG, _MISS = range(len(ERROR_TYPES))
#: Error code of a detection that is not an error (a true positive).
_NONE = -1
_IOU_TYPES = ("bbox", "segm")
#: The 101 recall thresholds 0, 0.01, ..., 1 (exactly ``k / 100``).
_RECALLS = np.arange(101) / 100


@dataclass(frozen=True)
class ErrorAnalysis:
    """The result of :func:`analyze_errors`; dAPs and AP are fractions in ``[0, 1]``.

    Attributes:
        iou_type: ``"bbox"`` or ``"segm"``.
        pos_threshold: ``t_f``, the IoU of a true positive.
        background_threshold: ``t_b``, the IoU below which a detection is background.
        ap: TIDE's mean AP at ``pos_threshold``, what the deltas are measured against.
        delta_ap: per :data:`ERROR_TYPES` name, the AP gained by fixing that type alone.
        counts: per :data:`ERROR_TYPES` name, how many errors of that type.
        false_positive_ap: the AP gained by ranking every true positive above every false positive.
        false_negative_ap: the AP gained by dropping every unmatched object from the ground truth.
        images: how many images were analysed.
        detections: how many result records were given (D).
        per_image_errors: analysed image id -> its number of errors, missed objects included.
        detection_errors: ``(D,)`` per record, its error type, or None: a true positive, or
            not analysed (an image not analysed, beyond ``max_dets``).
        missed_annotations: the annotation ids of the objects counted as ``missed``.
    """

    iou_type: str
    pos_threshold: float
    background_threshold: float
    ap: float
    delta_ap: dict[str, float]
    counts: dict[str, int]
    false_positive_ap: float
    false_negative_ap: float
    images: int
    detections: int
    per_image_errors: dict[int, int]
    detection_errors: list[str | None]
    missed_annotations: list[int]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the per-image and per-detection lists)."""
        return {
            "iou_type": self.iou_type,
            "pos_threshold": self.pos_threshold,
            "background_threshold": self.background_threshold,
            "ap": self.ap,
            "delta_ap": dict(self.delta_ap),
            "counts": dict(self.counts),
            "false_positive_ap": self.false_positive_ap,
            "false_negative_ap": self.false_negative_ap,
            "images": self.images,
            "detections": self.detections,
        }


@dataclass(frozen=True)
class _ImageResult:
    """Matching and error types of one image; the detections in score order.

    Shape glossary: n detections kept (top ``max_dets``), G objects.
    """

    det_index: np.ndarray  # (n,) record index of each detection
    tp: np.ndarray  # (n,) bool, matched an object
    ignored: np.ndarray  # (n,) bool, inside a crowd region of its class: not in the AP
    error: np.ndarray  # (n,) error code, _NONE for a true positive
    target: np.ndarray  # (n,) the object a localization/classification error points at, else -1
    gt_matched: np.ndarray  # (G,) bool


def analyze_errors(
    coco_gt: COCO,
    records: Sequence[dict[str, Any]],
    *,
    iou_type: str = "bbox",
    image_ids: Iterable[int] | None = None,
    pos_threshold: float = 0.5,
    background_threshold: float = 0.1,
    max_dets: int = 100,
) -> ErrorAnalysis:
    """TIDE's error analysis of COCO result records (see the module docstring).

    Args:
        coco_gt: the ground truth (a dataset's ``coco_gt()``).
        records: ``{"image_id", "category_id", "score", "bbox"[, "segmentation"]}`` each;
            ``segmentation`` (a COCO RLE or polygons) for ``iou_type="segm"``.
        iou_type: ``"bbox"`` (boxes) or ``"segm"`` (masks).
        image_ids: the images to analyse, those without a record included; default every
            ground-truth image. Records of other images are not analysed.
        pos_threshold: ``t_f``, the IoU of a true positive.
        background_threshold: ``t_b``, in ``(0, t_f)``.
        max_dets: the most detections of an image that count (highest scores first).

    Raises:
        ConfigError: an unknown ``iou_type``, thresholds out of order, ``max_dets < 1``.
        DataError: records or ``image_ids`` name ids the ground truth lacks, or records lack a key.
    """
    if iou_type not in _IOU_TYPES:
        raise ConfigError(f"iou_type must be one of {', '.join(_IOU_TYPES)}, got {iou_type!r}")
    if not 0.0 < background_threshold < pos_threshold <= 1.0:
        raise ConfigError(
            "the thresholds must satisfy 0 < background_threshold < pos_threshold <= 1, got "
            f"background_threshold={background_threshold}, pos_threshold={pos_threshold}"
        )
    if max_dets < 1:
        raise ConfigError(f"max_dets must be at least 1, got {max_dets}")
    _check_records(coco_gt, records, iou_type)
    if image_ids is None:
        images = list(coco_gt.imgs)
    else:
        wanted = {int(i) for i in image_ids}
        unknown = sorted(wanted - set(coco_gt.imgs))
        if unknown:
            raise DataError(f"image_ids names {len(unknown)} images the ground truth lacks ({_few(unknown)})")
        images = [i for i in coco_gt.imgs if i in wanted]  # the ground truth's order
    cat_ids = sorted(int(c) for c in coco_gt.cats)
    cat_index = {c: k for k, c in enumerate(cat_ids)}

    # (D,) record fields
    rec_image = np.array([int(r["image_id"]) for r in records], dtype=np.int64)
    rec_class = np.array([cat_index[int(r["category_id"])] for r in records], dtype=np.int64)
    rec_score = np.array([float(r["score"]) for r in records], dtype=np.float64)
    by_image: dict[int, list[int]] = {i: [] for i in images}
    for d, image_id in enumerate(rec_image.tolist()):
        if image_id in by_image:
            by_image[image_id].append(d)

    results, gt_anns = [], []
    for image_id in images:
        anns = coco_gt.imgToAnns.get(image_id, [])
        objects = [a for a in anns if not a.get("iscrowd", 0)]
        crowds = [a for a in anns if a.get("iscrowd", 0)]
        results.append(
            _analyse_image(
                coco_gt, records, np.asarray(by_image[image_id], dtype=np.int64), objects, crowds,
                rec_score=rec_score, rec_class=rec_class, cat_index=cat_index, iou_type=iou_type,
                pos_threshold=pos_threshold, background_threshold=background_threshold, max_dets=max_dets,
            )
        )  # fmt: skip
        gt_anns.append(objects)

    # pooled over the analysed images: (N,) detections, (M,) objects
    det_index = _cat([r.det_index for r in results], np.int64)
    tp = _cat([r.tp for r in results], bool)
    ignored = _cat([r.ignored for r in results], bool)
    error = _cat([r.error for r in results], np.int64)
    gt_offsets = np.cumsum([0] + [len(a) for a in gt_anns])
    target = _cat([np.where(r.target >= 0, r.target + o, -1) for r, o in zip(results, gt_offsets)], np.int64)
    gt_matched = _cat([r.gt_matched for r in results], bool)
    gt_class = np.array([cat_index[int(a["category_id"])] for anns in gt_anns for a in anns], dtype=np.int64)
    gt_ids = [int(a["id"]) for anns in gt_anns for a in anns]
    det_class, det_score = rec_class[det_index], rec_score[det_index]

    # Localization and classification errors pointing at an unmatched object compete for it:
    # the highest score wins (the first in processing order among equal scores).
    fixable = ((error == _LOC) | (error == _CLS)) & (target >= 0)
    fixable &= ~gt_matched[np.maximum(target, 0)]
    candidates = np.flatnonzero(fixable)
    by_score = candidates[np.argsort(-det_score[candidates], kind="stable")]
    _, first = np.unique(target[by_score], return_index=True)
    best = np.zeros(len(error), dtype=bool)
    best[by_score[first]] = True
    usable = np.zeros(len(gt_class), dtype=bool)
    usable[target[candidates]] = True
    missed = ~gt_matched & ~usable  # (M,)

    num_classes = len(cat_ids)
    gt_count = np.bincount(gt_class, minlength=num_classes)
    # Reference push order: the plain AP in processing order; every fixed AP with the
    # errors first, then the true positives (decides only ties of equal score).
    processing = np.arange(len(error))
    errors_first = np.where(tp, len(error), 0) + processing
    counted = ~ignored

    def mean_ap(keep: np.ndarray, classes: np.ndarray, scores: np.ndarray, is_tp: np.ndarray,
                num_gt: np.ndarray, order: np.ndarray) -> float:  # fmt: skip
        return _mean_ap(classes[keep], scores[keep], is_tp[keep], num_gt, order[keep])

    ap = mean_ap(counted, det_class, det_score, tp, gt_count, processing)
    delta_ap: dict[str, float] = {}
    for code, name in enumerate(ERROR_TYPES):
        keep, classes, is_tp, num_gt = counted & (error != code), det_class, tp, gt_count
        if code in (_LOC, _CLS):
            fixed = (error == code) & best
            keep = keep | fixed
            is_tp = tp | fixed
            if code == _CLS:
                classes = np.where(fixed, gt_class[np.maximum(target, 0)], det_class)
        elif code == _MISS:
            keep = counted
            num_gt = gt_count - np.bincount(gt_class[missed], minlength=num_classes)
        fixed_ap = mean_ap(keep, classes, det_score, is_tp, num_gt, errors_first)
        delta_ap[name] = max(fixed_ap - ap, 0.0)
    perfect_precision = mean_ap(counted, det_class, tp.astype(np.float64), tp, gt_count, errors_first)
    perfect_recall = mean_ap(
        counted, det_class, det_score, tp, np.bincount(gt_class[gt_matched], minlength=num_classes), errors_first
    )

    counts = {name: int((error == code).sum()) for code, name in enumerate(ERROR_TYPES)}
    counts["missed"] = int(missed.sum())
    detection_errors: list[str | None] = [None] * len(records)
    for d, code in zip(det_index.tolist(), error.tolist()):
        if code != _NONE:
            detection_errors[d] = ERROR_TYPES[code]
    gt_image = np.repeat(np.arange(len(images)), np.diff(gt_offsets))
    det_image = np.repeat(np.arange(len(images)), [len(r.det_index) for r in results])
    per_image = np.bincount(det_image[error != _NONE], minlength=len(images))
    per_image += np.bincount(gt_image[missed], minlength=len(images))
    return ErrorAnalysis(
        iou_type=iou_type,
        pos_threshold=float(pos_threshold),
        background_threshold=float(background_threshold),
        ap=ap,
        delta_ap=delta_ap,
        counts=counts,
        false_positive_ap=perfect_precision - ap,
        false_negative_ap=perfect_recall - ap,
        images=len(images),
        detections=len(records),
        per_image_errors={int(i): int(n) for i, n in zip(images, per_image)},
        detection_errors=detection_errors,
        missed_annotations=[gt_ids[m] for m in np.flatnonzero(missed)],
    )


def format_errors(analysis: ErrorAnalysis) -> str:
    """A small table of an analysis: count and dAP (in AP points, x 100) per error type.

    Example::

        TIDE errors (bbox), AP50 61.3 over 5000 images, 36781 detections
        type             count    dAP
        classification     301   +2.1
        localization       412   +6.3
        ...
        false positives          +9.9
        false negatives          +8.0
    """
    a = analysis
    lines = [
        f"TIDE errors ({a.iou_type}), AP{round(a.pos_threshold * 100)} {100 * a.ap:.1f} "
        f"over {a.images} images, {a.detections} detections",
        f"{'type':<16}{'count':>6}{'dAP':>7}",
    ]
    lines += [f"{name:<16}{a.counts[name]:>6}{100 * a.delta_ap[name]:>+7.1f}" for name in ERROR_TYPES]
    lines.append(f"{'false positives':<16}{'':>6}{100 * a.false_positive_ap:>+7.1f}")
    lines.append(f"{'false negatives':<16}{'':>6}{100 * a.false_negative_ap:>+7.1f}")
    return "\n".join(lines)


def _analyse_image(
    coco_gt: COCO,
    records: Sequence[dict[str, Any]],
    indices: np.ndarray,
    objects: list[dict[str, Any]],
    crowds: list[dict[str, Any]],
    *,
    rec_score: np.ndarray,
    rec_class: np.ndarray,
    cat_index: dict[int, int],
    iou_type: str,
    pos_threshold: float,
    background_threshold: float,
    max_dets: int,
) -> _ImageResult:
    """Match the detections ``indices`` (records of one image) and type their errors."""
    # (n,) the top max_dets by descending score, equal scores in record order
    det_index = indices[np.argsort(-rec_score[indices], kind="stable")][:max_dets]
    n, g = len(det_index), len(objects)
    tp = np.zeros(n, dtype=bool)
    gt_matched = np.zeros(g, dtype=bool)
    target = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return _ImageResult(det_index, tp, tp.copy(), np.full(0, _NONE, dtype=np.int64), target, gt_matched)
    det_class = rec_class[det_index]
    image = coco_gt.imgs[int(records[int(det_index[0])]["image_id"])]
    det_geometry = _geometry([records[d] for d in det_index.tolist()], iou_type, image)

    iou = np.zeros((n, g))
    same_class = np.zeros((n, g), dtype=bool)
    if g:
        iou = _iou(det_geometry, _geometry(objects, iou_type, image, coco_gt), crowd=False)  # (n, G)
        gt_class = np.array([cat_index[int(a["category_id"])] for a in objects], dtype=np.int64)
        same_class = det_class[:, None] == gt_class[None, :]
        # greedy matching in score order: the best unmatched object of the class, if IoU >= t_f
        available = iou * same_class
        for i in range(n):
            j = int(np.argmax(available[i]))
            if available[i, j] >= pos_threshold:
                tp[i], gt_matched[j] = True, True
                available[:, j] = 0.0

    ignored = np.zeros(n, dtype=bool)
    if crowds:
        crowd_iou = _iou(det_geometry, _geometry(crowds, iou_type, image, coco_gt), crowd=True)  # (n, C)
        crowd_class = np.array([cat_index[int(a["category_id"])] for a in crowds], dtype=np.int64)
        covers = (crowd_iou > pos_threshold) & (det_class[:, None] == crowd_class[None, :])
        ignored = ~tp & covers.any(axis=1)

    if g == 0:
        error = np.where(tp, _NONE, _BKG)
        return _ImageResult(det_index, tp, ignored, error, target, gt_matched)
    # the first rule that holds names the error (module docstring, step 2)
    own_iou, other_iou = iou * same_class, iou * ~same_class  # (n, G)
    best_own, best_other = own_iou.max(axis=1), other_iou.max(axis=1)  # (n,)
    best_matched = (own_iou * gt_matched[None, :]).max(axis=1)
    error = np.select(
        [
            tp,
            (background_threshold <= best_own) & (best_own <= pos_threshold),
            best_other >= pos_threshold,
            best_matched >= pos_threshold,
            iou.max(axis=1) <= background_threshold,
        ],
        [_NONE, _LOC, _CLS, _DUP, _BKG],
        default=_BOTH,
    )
    target = np.select([error == _LOC, error == _CLS], [own_iou.argmax(axis=1), other_iou.argmax(axis=1)], default=-1)
    return _ImageResult(det_index, tp, ignored, error.astype(np.int64), target.astype(np.int64), gt_matched)


def _mean_ap(classes: np.ndarray, scores: np.ndarray, tp: np.ndarray, num_gt: np.ndarray, order: np.ndarray) -> float:
    """Mean over classes of the 101-point interpolated AP (module docstring, step 3).

    Args:
        classes, scores, tp: ``(P,)`` the detections that count: class index, score, true positive.
        num_gt: ``(K,)`` objects per class.
        order: ``(P,)`` the order in which equal scores are ranked (ascending).

    A class counts when it has objects or detections; one without objects has AP 0.
    """
    ranked = np.lexsort((order, -scores))  # descending score, ties by `order`
    classes, tp = classes[ranked], tp[ranked]
    num_dets = np.bincount(classes, minlength=len(num_gt))
    aps = []
    for k in np.flatnonzero((num_gt > 0) | (num_dets > 0)):
        hits = np.cumsum(tp[classes == k])  # (P_k,)
        if num_gt[k] == 0 or len(hits) == 0:
            aps.append(0.0)
            continue
        precision = hits / np.arange(1, len(hits) + 1)
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the best precision at this recall or beyond
        at = np.searchsorted(hits / num_gt[k], _RECALLS, side="left")  # (R,)
        aps.append(float(np.where(at < len(hits), precision[np.minimum(at, len(hits) - 1)], 0.0).mean()))
    return float(np.mean(aps)) if aps else 0.0


def _check_records(coco_gt: COCO, records: Sequence[dict[str, Any]], iou_type: str) -> None:
    """Raise :class:`DataError` for records with unknown ids or without what ``iou_type`` needs."""
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    for key in ("image_id", "category_id", "score", geometry):
        lacking = sum(1 for r in records if key not in r)
        if lacking:
            raise DataError(f"{lacking} of the {len(records)} records have no {key!r}, which {iou_type} analysis needs")
    problems = []
    unknown_images = sorted({int(r["image_id"]) for r in records} - set(coco_gt.imgs))
    if unknown_images:
        problems.append(f"{len(unknown_images)} image ids not in the ground truth ({_few(unknown_images)})")
    unknown_cats = sorted({int(r["category_id"]) for r in records} - set(coco_gt.cats))
    if unknown_cats:
        problems.append(f"{len(unknown_cats)} category ids not in the ground truth ({_few(unknown_cats)})")
    if problems:
        raise DataError(
            f"the records name {' and '.join(problems)}; analyse results against the annotation file "
            "of the images their detector ran on"
        )


def _geometry(items: list[dict[str, Any]], iou_type: str, image: dict[str, Any], coco_gt: COCO | None = None) -> Any:
    """What ``pycocotools.mask.iou`` compares: ``(n, 4)`` xywh boxes or n RLEs.

    Ground-truth masks (``coco_gt`` given) go through ``COCO.annToRLE``; result masks
    may be RLEs (compressed or not) or polygons in the image's pixels.
    """
    if iou_type == "bbox":
        return np.asarray([it["bbox"] for it in items], dtype=np.float64).reshape(-1, 4)
    if coco_gt is not None:
        return [coco_gt.annToRLE(it) for it in items]
    height, width = int(image["height"]), int(image["width"])
    rles = []
    for it in items:
        segm = it["segmentation"]
        if isinstance(segm, list):
            rles.append(mask_utils.merge(mask_utils.frPyObjects(segm, height, width)))
        elif isinstance(segm.get("counts"), list):
            rles.append(mask_utils.frPyObjects(segm, height, width))
        else:
            rles.append(segm)
    return rles


def _iou(dets: Any, gts: Any, *, crowd: bool) -> np.ndarray:
    """``(n, G)`` IoU of detections and objects (``crowd``: intersection over the detection's area)."""
    return np.asarray(mask_utils.iou(dets, gts, [int(crowd)] * len(gts)), dtype=np.float64).reshape(len(dets), len(gts))


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def _few(ids: list[int], n: int = 5) -> str:
    return ", ".join(str(i) for i in ids[:n]) + (", ..." if len(ids) > n else "")
