"""CocoEvaluator against pycocotools run directly, and on hand-computable fixtures."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.errors import DataError
from detkit.evaluation.coco import METRIC_NAMES, CocoEvaluator, encode_masks, format_metrics, write_results
from detkit.structures import Detections

CLASS_NAMES = ["cat", "dog", "bird"]
CATEGORY_IDS = [1, 3, 7]  # not contiguous; "bird" has no ground truth


def _rect(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _gt_dict() -> dict[str, Any]:
    anns = [
        # image, category, bbox, iscrowd ; areas: large, small, crowd, medium, medium, medium
        (1, 1, [10, 10, 100, 100], 0),
        (1, 3, [120, 120, 20, 20], 0),
        (1, 1, [0, 150, 50, 50], 1),
        (2, 1, [50, 50, 40, 40], 0),
        (2, 3, [5, 5, 60, 30], 0),
        (2, 3, [100, 100, 45, 45], 0),
    ]
    return {
        "images": [
            {"id": 1, "file_name": "1.png", "height": 200, "width": 200},
            {"id": 2, "file_name": "2.png", "height": 160, "width": 180},
            {"id": 3, "file_name": "3.png", "height": 100, "width": 100},
        ],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd,
             "segmentation": _rect(*b)}
            for k, (i, c, b, crowd) in enumerate(anns)
        ],
    }  # fmt: skip


@pytest.fixture
def gt_file(tmp_path: Path) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_gt_dict()))
    return path


def _load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _evaluator(gt_file: Path, iou_types: tuple[str, ...] = ("bbox",), backend: str = "faster") -> CocoEvaluator:
    return CocoEvaluator(
        _load(gt_file), class_names=CLASS_NAMES, category_ids=CATEGORY_IDS, iou_types=iou_types, backend=backend
    )


def _pycocotools_stats(
    gt_file: Path, records: list[dict[str, Any]], iou_type: str, *, img_ids: list[int] | None = None,
    cat_ids: list[int] | None = None,
) -> np.ndarray:  # fmt: skip
    """The oracle: pycocotools on a results json file, the documented way."""
    res_file = gt_file.parent / f"res_{iou_type}.json"
    res_file.write_text(json.dumps(records))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes(str(res_file))
        ev = COCOeval(gt, dt, iouType=iou_type)
        if img_ids is not None:
            ev.params.imgIds = img_ids
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _gt_masks(gt: COCO, image_id: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    anns = [a for a in gt.imgToAnns[image_id] if not a["iscrowd"]]
    info = gt.imgs[image_id]
    masks = np.stack([gt.annToMask(a) for a in anns]) if anns else np.zeros((0, info["height"], info["width"]))
    return anns, masks.astype(bool)


def _random_detections(gt: COCO, image_id: int, seed: int) -> Detections:
    """Jittered copies of the ground truth plus false positives, random scores and labels."""
    g = torch.Generator().manual_seed(seed)
    info = gt.imgs[image_id]
    anns = [a for a in gt.imgToAnns[image_id]]
    boxes, labels = [], []
    for a in anns:
        x, y, w, h = a["bbox"]
        for _ in range(2):
            jitter = (torch.rand(4, generator=g) - 0.5) * 0.3 * torch.tensor([w, h, w, h])
            boxes.append(torch.tensor([x, y, x + w, y + h]) + jitter)
            labels.append(CATEGORY_IDS.index(a["category_id"]))
    for _ in range(5):
        xy = torch.rand(2, generator=g) * torch.tensor([info["width"] * 0.7, info["height"] * 0.7])
        wh = 4 + torch.rand(2, generator=g) * 60
        boxes.append(torch.cat([xy, xy + wh]))
        labels.append(int(torch.randint(0, 3, (1,), generator=g)))
    box_tensor = torch.stack(boxes).float()
    box_tensor[:, 0::2] = box_tensor[:, 0::2].clamp(0, info["width"])
    box_tensor[:, 1::2] = box_tensor[:, 1::2].clamp(0, info["height"])
    n = len(boxes)
    masks = torch.zeros((n, info["height"], info["width"]))
    for d, (x1, y1, x2, y2) in enumerate(box_tensor.round().int().tolist()):
        masks[d, y1:y2, x1:x2] = torch.rand((), generator=g) * 0.5 + 0.5  # a "probability"
    return Detections(boxes=box_tensor, scores=torch.rand(n, generator=g), labels=torch.tensor(labels), masks=masks)


# --------------------------------------------------------------------------- pycocotools oracle


def test_stats_equal_pycocotools(gt_file: Path) -> None:
    # the reference backend, bit for bit (test_coco_backends.py compares the faster one with it)
    ev = _evaluator(gt_file, ("bbox", "segm"), backend="pycocotools")
    dets = {i: _random_detections(ev.coco_gt, i, seed=i) for i in (1, 2, 3)}
    for image_id, d in dets.items():
        ev.add(image_id, d)
    metrics = ev.evaluate()
    assert set(metrics) == {"bbox", "segm"}

    bbox_records = []
    segm_records = []
    for image_id, d in dets.items():
        binary = (d.masks >= 0.5).numpy().astype(np.uint8)
        for k in range(len(d)):
            x1, y1, x2, y2 = d.boxes[k].tolist()
            common = {"image_id": image_id, "category_id": CATEGORY_IDS[int(d.labels[k])],
                      "score": round(float(d.scores[k]), 5)}  # fmt: skip
            bbox_records.append({**common, "bbox": [round(v, 3) for v in (x1, y1, x2 - x1, y2 - y1)]})
            rle = mask_utils.encode(np.asfortranarray(binary[k]))
            rle["counts"] = rle["counts"].decode()
            segm_records.append({**common, "segmentation": rle})
    for iou_type, records in (("bbox", bbox_records), ("segm", segm_records)):
        expected = _pycocotools_stats(gt_file, records, iou_type)
        got = [metrics[iou_type][name] for name in METRIC_NAMES]
        assert got == expected.tolist(), iou_type
        assert all(isinstance(v, float) for v in got)
    assert 0.0 < metrics["bbox"]["AP"] < 1.0  # the fixture is not trivial
    assert "Average Precision" in ev.summary_text and "IoU type: segm" in ev.summary_text


def test_partial_evaluation_uses_added_images_only(gt_file: Path) -> None:
    ev = _evaluator(gt_file, backend="pycocotools")
    d = _random_detections(ev.coco_gt, 2, seed=5)
    ev.add(2, d)
    assert ev.image_ids == [2]
    expected = _pycocotools_stats(gt_file, ev.results(), "bbox", img_ids=[2])
    assert [ev.evaluate()["bbox"][n] for n in METRIC_NAMES] == expected.tolist()


def test_per_class_ap_equals_single_category_runs(gt_file: Path) -> None:
    ev = _evaluator(gt_file)
    for i in (1, 2, 3):
        ev.add(i, _random_detections(ev.coco_gt, i, seed=10 + i))
    per_class = ev.evaluate()["bbox"]["per_class"]
    assert list(per_class) == CLASS_NAMES
    for name, cat_id in zip(CLASS_NAMES[:2], CATEGORY_IDS[:2]):
        # oracle: pycocotools' headline AP when it evaluates this category alone
        expected = _pycocotools_stats(gt_file, ev.results(), "bbox", cat_ids=[cat_id])[0]
        assert per_class[name] == pytest.approx(expected, abs=1e-12)
    assert per_class["bird"] == -1.0  # no ground truth


# --------------------------------------------------------------------------- hand-computable


def _perfect(gt: COCO, image_id: int, *, masks: str = "none") -> Detections:
    anns, gt_masks = _gt_masks(gt, image_id)
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
    m: torch.Tensor | None = None
    if masks == "bool":
        m = torch.from_numpy(gt_masks)
    elif masks == "float":  # probabilities: 0.9 inside, 0.2 outside
        m = torch.where(torch.from_numpy(gt_masks), 0.9, 0.2)
    return Detections(
        boxes=boxes.float(),
        scores=torch.linspace(0.9, 0.5, len(anns)),
        labels=torch.tensor([CATEGORY_IDS.index(a["category_id"]) for a in anns], dtype=torch.int64),
        masks=m,
    )


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_perfect_detections(gt_file: Path, mask_kind: str) -> None:
    ev = _evaluator(gt_file, ("bbox", "segm"))
    for i in (1, 2, 3):
        ev.add(i, _perfect(ev.coco_gt, i, masks=mask_kind))
    metrics = ev.evaluate()
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        for name in METRIC_NAMES:
            expected = 1.0
            if name == "AR1":
                # one detection per image and class: cat finds 2 of 2, dog 2 of 3
                # (image 2 has two dogs), averaged over the two classes
                expected = (1.0 + 2.0 / 3.0) / 2
            assert m[name] == pytest.approx(expected, abs=1e-9), (iou_type, name)
        assert m["per_class"] == pytest.approx({"cat": 1.0, "dog": 1.0, "bird": -1.0}, abs=1e-9)


def _single_box_gt(tmp_path: Path) -> Path:
    gt = {
        "images": [{"id": 1, "file_name": "x.png", "height": 200, "width": 300}],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 0}
        ],
    }
    path = tmp_path / "single.json"
    path.write_text(json.dumps(gt))
    return path


@pytest.mark.parametrize(
    ("shift", "ap", "ap50", "ap75"),
    [
        (0, 1.0, 1.0, 1.0),
        (13, 0.6, 1.0, 1.0),  # IoU 87/113 = 0.770: matched at 0.50, 0.55, ..., 0.75 (6 of 10)
        (33, 0.1, 1.0, 0.0),  # IoU 67/133 = 0.504: matched at 0.50 only
        (34, 0.0, 0.0, 0.0),  # IoU 66/134 = 0.493: never matched
    ],
)
def test_iou_thresholds(tmp_path: Path, shift: int, ap: float, ap50: float, ap75: float) -> None:
    ev = CocoEvaluator(_load(_single_box_gt(tmp_path)), class_names=CLASS_NAMES, category_ids=CATEGORY_IDS)
    ev.add(1, Detections(boxes=torch.tensor([[shift, 0.0, 100 + shift, 100]]), scores=torch.tensor([0.9]),
                         labels=torch.tensor([0])))  # fmt: skip
    m = ev.evaluate()["bbox"]
    assert m["AP"] == pytest.approx(ap, abs=1e-9)
    assert (m["AP50"], m["AP75"]) == pytest.approx((ap50, ap75), abs=1e-9)
    assert m["APl"] == pytest.approx(ap, abs=1e-9) and m["APs"] == -1.0 and m["APm"] == -1.0
    assert m["per_class"]["cat"] == pytest.approx(ap, abs=1e-9)
    assert m["per_class"]["dog"] == -1.0


def test_empty_detections(gt_file: Path, tmp_path: Path) -> None:
    ev = _evaluator(gt_file, ("bbox", "segm"))
    for i in (1, 2, 3):
        h, w = ev.coco_gt.imgs[i]["height"], ev.coco_gt.imgs[i]["width"]
        ev.add(i, Detections(masks=torch.zeros((0, h, w))))
    assert ev.results() == []
    metrics = ev.evaluate()
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert [m[n] for n in METRIC_NAMES] == [0.0] * 12  # every area range has ground truth
        assert m["per_class"] == {"cat": 0.0, "dog": 0.0, "bird": -1.0}
    # where pycocotools has nothing to measure it says -1, with or without detections
    single = CocoEvaluator(_load(_single_box_gt(tmp_path)), class_names=CLASS_NAMES, category_ids=CATEGORY_IDS)
    single.add(1, Detections())
    m = single.evaluate()["bbox"]
    assert (m["AP"], m["APs"], m["APm"], m["APl"], m["AR100"], m["ARs"]) == (0.0, -1.0, -1.0, 0.0, 0.0, -1.0)


def test_nothing_added(gt_file: Path) -> None:
    m = _evaluator(gt_file).evaluate()["bbox"]
    assert [m[n] for n in METRIC_NAMES] == [-1.0] * 12


def test_input_checks(gt_file: Path) -> None:
    ev = _evaluator(gt_file, ("segm",))
    with pytest.raises(DataError, match=r"image id 99"):
        ev.add(99, Detections())
    with pytest.raises(ValueError, match=r"masks"):
        ev.add(1, Detections(boxes=torch.zeros(1, 4), scores=torch.ones(1), labels=torch.zeros(1, dtype=torch.int64)))
    wrong = Detections(
        boxes=torch.zeros(1, 4), scores=torch.ones(1), labels=torch.zeros(1, dtype=torch.int64),
        masks=torch.zeros(1, 10, 10),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"original image size"):
        ev.add(1, wrong)
    with pytest.raises(ValueError, match=r"labels"):
        ev.add(1, Detections(boxes=torch.zeros(1, 4), scores=torch.ones(1), labels=torch.tensor([3]),
                             masks=torch.zeros(1, 200, 200)))  # fmt: skip
    with pytest.raises(ValueError):
        CocoEvaluator(ev.coco_gt, class_names=["a"], category_ids=[1, 2])
    with pytest.raises(ValueError):
        CocoEvaluator(ev.coco_gt, class_names=["a"], category_ids=[1], iou_types=("keypoints",))


# --------------------------------------------------------------------------- helpers


def test_encode_masks_roundtrip() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.rand((4, 9, 13), generator=g)
    probs[0, 0, 0] = 0.5  # the threshold itself counts as foreground
    rles = encode_masks(probs)
    assert len(rles) == 4 and all(isinstance(r["counts"], str) and r["size"] == [9, 13] for r in rles)
    for k, rle in enumerate(rles):
        np.testing.assert_array_equal(mask_utils.decode(rle), (probs[k] >= 0.5).numpy())
    binary = probs > 0.7
    for k, rle in enumerate(encode_masks(binary)):
        np.testing.assert_array_equal(mask_utils.decode(rle), binary[k].numpy())
    assert encode_masks(torch.zeros((0, 9, 13))) == []


def test_results_and_write_results(gt_file: Path, tmp_path: Path) -> None:
    ev = _evaluator(gt_file)
    ev.add(1, Detections(boxes=torch.tensor([[1.0, 2.0, 11.5, 22.25]]), scores=torch.tensor([0.75]),
                         labels=torch.tensor([1])))  # fmt: skip
    records = ev.results()
    assert records == [{"image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 10.5, 20.25], "score": 0.75}]
    out = tmp_path / "out" / "results.json"
    write_results(out, records)
    assert json.loads(out.read_text()) == records
    assert [p.name for p in out.parent.iterdir()] == ["results.json"]  # no temporary file left


def test_format_metrics(gt_file: Path, tmp_path: Path) -> None:
    ev = CocoEvaluator(_load(_single_box_gt(tmp_path)), class_names=CLASS_NAMES, category_ids=CATEGORY_IDS)
    ev.add(1, Detections(boxes=torch.tensor([[13.0, 0, 113, 100]]), scores=torch.tensor([0.9]),
                         labels=torch.tensor([0])))  # fmt: skip
    text = format_metrics(ev.evaluate())
    lines = text.splitlines()
    for name in METRIC_NAMES:
        assert any(line.split()[0] == name for line in lines if line.strip()), name
    ap_line = next(line for line in lines if line.split()[0] == "AP")
    assert ap_line.rstrip().endswith(" 0.600")  # a fraction, as metrics.json stores it
    assert "fractions" in lines[0] and "%" not in text
    aps_line = next(line for line in lines if line.split()[0] == "APs")
    assert aps_line.rstrip().endswith("-")
    assert any(line.split() == ["cat", "0.600"] for line in lines)
    metric_lines = [line for line in lines if line.split() and line.split()[0] in METRIC_NAMES]
    assert len({len(line) for line in metric_lines}) == 1, metric_lines  # values in one column
    assert any(line.split() == ["bird", "-"] for line in lines)
