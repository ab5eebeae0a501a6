"""The two COCOeval backends of CocoEvaluator give the same numbers.

Oracle: pycocotools (``backend="pycocotools"``), the reference implementation, on the
same detections. faster-coco-eval computes precision as ``tp / (tp + fp)`` in C++ where
pycocotools adds ``np.spacing(1)`` to the denominator in numpy, so the two can differ
in the last bits of a float; "identical" here is within 1e-12, far below the three
decimals any report prints, and every ``-1`` (nothing to measure) is in the same place.

Detections cover what matching has to get right: misses, duplicates, wrong classes,
false positives, detections inside crowd regions (ignored, not false positives),
score ties, objects of every area range, images without objects or detections.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from detkit.data.base import coco_from_dict
from detkit.evaluation.coco import METRIC_NAMES, CocoEvaluator, format_metrics
from detkit.structures import Detections

TOLERANCE = 1e-12


def _evaluators(gt: COCO, iou_types: tuple[str, ...]) -> dict[str, CocoEvaluator]:
    cats = sorted(gt.cats)
    return {
        backend: CocoEvaluator(
            gt, class_names=[gt.cats[c]["name"] for c in cats], category_ids=cats, iou_types=iou_types,
            backend=backend,
        )
        for backend in ("pycocotools", "faster")
    }


def _assert_same(metrics: dict[str, dict[str, dict[str, Any]]], iou_types: tuple[str, ...]) -> None:
    reference, faster = metrics["pycocotools"], metrics["faster"]
    for iou_type in iou_types:
        ref, got = reference[iou_type], faster[iou_type]
        for name in METRIC_NAMES:
            assert got[name] == pytest.approx(ref[name], abs=TOLERANCE), (iou_type, name)
            assert (got[name] == -1.0) == (ref[name] == -1.0), (iou_type, name)
        assert list(got["per_class"]) == list(ref["per_class"])
        for cls, ap in ref["per_class"].items():
            assert got["per_class"][cls] == pytest.approx(ap, abs=TOLERANCE), (iou_type, cls)
            assert (got["per_class"][cls] == -1.0) == (ap == -1.0), (iou_type, cls)
        assert (ref["backend"], got["backend"]) == ("pycocotools", "faster")


def _box_mask(box: np.ndarray, height: int, width: int) -> np.ndarray:
    x1, y1, x2, y2 = np.round(box).astype(int)
    mask = np.zeros((height, width), dtype=bool)
    mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
    return mask


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by ``(dy, dx)`` pixels, zeros shifted in."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _noisy_detections(gt: COCO, image_id: int, rng: np.random.Generator, *, masks: bool) -> Detections:
    """The ground truth of one image with noise: some missed, some doubled, some relabelled,
    boxes jittered and masks shifted; detections inside crowd regions; random false positives."""
    info = gt.imgs[image_id]
    h, w = info["height"], info["width"]
    cats = sorted(gt.cats)
    boxes, labels, det_masks = [], [], []
    for ann in gt.imgToAnns[image_id]:
        x, y, bw, bh = ann["bbox"]
        gt_box = np.array([x, y, x + bw, y + bh])
        gt_mask = gt.annToMask(ann).astype(bool) if masks else None
        if ann["iscrowd"]:  # parts of a crowd region: ignored by matching when they lie inside it
            for _ in range(3):
                corner = gt_box[:2] + rng.uniform(0, 0.5, 2) * [bw, bh]
                box = np.concatenate([corner, corner + rng.uniform(0.1, 0.5, 2) * [bw, bh]])
                boxes.append(box)
                labels.append(cats.index(ann["category_id"]))
                if masks:
                    det_masks.append(gt_mask & _box_mask(box, h, w))
            continue
        if rng.random() < 0.2:  # missed
            continue
        for _ in range(2 if rng.random() < 0.2 else 1):  # some duplicates
            jitter = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
            boxes.append(gt_box + jitter)
            label = cats.index(ann["category_id"]) if rng.random() > 0.1 else int(rng.integers(len(cats)))
            labels.append(label)
            if masks:
                det_masks.append(_shifted(gt_mask, round(float(jitter[1])), round(float(jitter[0]))))
    for _ in range(int(rng.integers(0, 5))):  # false positives
        xy = rng.uniform(0, 1, 2) * [w * 0.8, h * 0.8]
        box = np.concatenate([xy, xy + rng.uniform(4, 200, 2)])
        boxes.append(box)
        labels.append(int(rng.integers(len(cats))))
        if masks:
            det_masks.append(_box_mask(box, h, w))
    n = len(boxes)
    box_tensor = torch.tensor(np.array(boxes).reshape(n, 4), dtype=torch.float32)
    box_tensor[:, 0::2] = box_tensor[:, 0::2].clamp(0, w)
    box_tensor[:, 1::2] = box_tensor[:, 1::2].clamp(0, h)
    return Detections(
        boxes=box_tensor,
        scores=torch.tensor(rng.uniform(0.05, 1.0, n), dtype=torch.float32),
        labels=torch.tensor(labels, dtype=torch.int64),
        masks=torch.from_numpy(np.array(det_masks).reshape(n, h, w)) if masks else None,
    )


def test_tiny_coco_boxes_and_masks(shared_data) -> None:
    ann_file = shared_data("tiny_coco") / "annotations" / "instances_val2017.json"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    assert any(a["iscrowd"] for a in gt.anns.values())  # the crowd case is exercised
    iou_types = ("bbox", "segm")
    evaluators = _evaluators(gt, iou_types)
    rng = np.random.default_rng(0)
    for image_id in sorted(gt.imgs):
        dets = _noisy_detections(gt, image_id, rng, masks=True)
        for ev in evaluators.values():
            ev.add(image_id, dets)
    metrics = {backend: ev.evaluate() for backend, ev in evaluators.items()}
    _assert_same(metrics, iou_types)
    for iou_type in iou_types:  # the fixture is not trivial
        assert 0.2 < metrics["pycocotools"][iou_type]["AP"] < 0.95
    assert "by faster-coco-eval" in format_metrics(metrics["faster"])


def _random_set(num_images: int, seed: int) -> tuple[COCO, dict[int, Detections]]:
    """A COCO-shaped ground truth of random boxes and noisy detections of it, made with numpy."""
    rng = np.random.default_rng(seed)
    cat_ids = [1, 2, 5, 9, 17]
    height, width = 480, 640
    images, annotations, detections = [], [], {}
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "height": height, "width": width})
        n = int(rng.poisson(4))
        wh = np.exp(rng.uniform(np.log(4), np.log(400), (n, 2)))  # small, medium and large objects
        xy = rng.uniform(0, 1, (n, 2)) * ([width, height] - wh).clip(1)
        cats = rng.integers(len(cat_ids), size=n)
        for (x, y), (w, h), c in zip(xy, wh, cats):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[c],
                "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                "iscrowd": int(rng.random() < 0.03),
            })  # fmt: skip
        found = rng.random(n) < 0.8  # the others are missed
        gt_boxes = np.concatenate([xy, xy + wh], axis=1)[found]
        jitter = rng.normal(0, 0.05, gt_boxes.shape) * np.tile(wh[found], 2)
        labels = np.where(rng.random(found.sum()) < 0.1, rng.integers(len(cat_ids), size=found.sum()), cats[found])
        m = int(rng.poisson(6))  # false positives
        fp_xy = rng.uniform(0, 1, (m, 2)) * [width, height]
        fp_boxes = np.concatenate([fp_xy, fp_xy + rng.uniform(2, 300, (m, 2))], axis=1)
        boxes = np.concatenate([gt_boxes + jitter, fp_boxes]).clip(0, [width, height, width, height])
        scores = rng.choice(np.linspace(0.05, 1.0, 50), len(boxes))  # many ties
        detections[image_id] = Detections(
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            scores=torch.tensor(scores, dtype=torch.float32),
            labels=torch.tensor(np.concatenate([labels, rng.integers(len(cat_ids), size=m)]), dtype=torch.int64),
        )
    categories = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    gt = coco_from_dict({"images": images, "annotations": annotations, "categories": categories})
    return gt, detections


def test_several_thousand_random_images() -> None:
    gt, detections = _random_set(2500, seed=1)
    evaluators = _evaluators(gt, ("bbox",))
    for image_id, dets in detections.items():
        for ev in evaluators.values():
            ev.add(image_id, dets)
    metrics = {backend: ev.evaluate() for backend, ev in evaluators.items()}
    _assert_same(metrics, ("bbox",))
    assert 0.1 < metrics["pycocotools"]["bbox"]["AP"] < 0.9


def test_part_of_the_images_and_no_detections() -> None:
    gt, detections = _random_set(40, seed=2)
    evaluators = _evaluators(gt, ("bbox",))
    for image_id in range(1, 41, 3):  # a subset: the other images do not count
        for ev in evaluators.values():
            ev.add(image_id, detections[image_id] if image_id % 2 else Detections())
    _assert_same({backend: ev.evaluate() for backend, ev in evaluators.items()}, ("bbox",))
    nothing = {backend: ev.evaluate() for backend, ev in _evaluators(gt, ("bbox",)).items()}
    _assert_same(nothing, ("bbox",))
