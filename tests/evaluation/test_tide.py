"""TIDE error analysis (detkit.evaluation.tide) against tidecv and hand-computed fixtures.

Oracle: ``tidecv`` 1.0.1, the TIDE authors' implementation, on the same annotation file
and results file. The Makefile installs it with ``--no-deps`` (it requires
``opencv-python``, which would overwrite ``opencv-python-headless``'s cv2) and the dev
extra brings what it imports besides (appdirs, pandas, seaborn). It runs with the
installed numpy as it is (it uses no removed alias such as ``np.float``). tidecv prints
AP points (x 100); detkit reports fractions.

Agreement: detkit breaks equal scores in the order tidecv pushes detections, matches,
ignores crowds and types errors by the same rules, so every number agrees to float
rounding: AP, the six dAPs and the FP/FN dAPs within ``TOLERANCE`` = 1e-9 (as
fractions; measured on tiny_coco: below 3e-16, i.e. 3e-14 AP points), the error
counts, the type of every detection and the missed annotation ids exactly. The data
has every error type, equal scores, detections inside crowd regions, classes with
detections but no ground truth and an image with more than ``max_dets`` detections.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import on_ci
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detkit.data.base import coco_from_dict
from detkit.errors import ConfigError, DataError
from detkit.evaluation.tide import ERROR_TYPES, analyze_errors, format_errors

TOLERANCE = 1e-9
#: tidecv's short names of the six error types.
SHORT_NAMES = {"classification": "Cls", "localization": "Loc", "both": "Both", "duplicate": "Dupe",
               "background": "Bkg", "missed": "Miss"}  # fmt: skip


def _tidecv() -> Any:
    try:
        import tidecv
    except ImportError as exc:
        why = f"tidecv is not installed ({exc}); `make venv` installs it"
        if on_ci():
            pytest.fail(why)
        pytest.skip(why)
    return tidecv


def _load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _noisy_records(gt: COCO, seed: int, *, masks: bool) -> list[dict[str, Any]]:
    """The ground truth made into detections with every kind of TIDE error.

    Per object: dropped (missed), shifted by 30-60% of its width (localization), relabelled
    (classification), relabelled and shifted (both), slightly jittered (true positive),
    sometimes with a second detection (duplicate); random boxes of random classes per
    image (background, and classes without ground truth); three detections around every
    crowd region (ignored when their class is the crowd's); 150 small boxes on one image
    (beyond max_dets=100). A third of the scores have one decimal, so some are equal.
    """
    rng = np.random.default_rng(seed)
    cats = sorted(gt.cats)
    records: list[dict[str, Any]] = []

    def add(image_id: int, cat: int, box: Any) -> None:
        score = float(rng.random()) if rng.random() < 0.7 else round(float(rng.random()), 1)
        records.append({"image_id": image_id, "category_id": int(cat), "bbox": [float(v) for v in box], "score": score})

    for image_id, info in gt.imgs.items():
        h, w = info["height"], info["width"]
        for ann in gt.imgToAnns[image_id]:
            x, y, bw, bh = ann["bbox"]
            cat = ann["category_id"]
            other = int(rng.choice([c for c in cats if c != cat]))
            if ann.get("iscrowd"):
                for _ in range(3):
                    label = cat if rng.random() < 0.7 else other
                    add(image_id, label, np.array(ann["bbox"]) * rng.uniform(0.8, 1.1, 4))
                continue
            r = rng.random()
            if r < 0.15:
                continue
            if r < 0.35:
                add(image_id, cat, [x + rng.uniform(0.3, 0.6) * bw * rng.choice([-1, 1]), y, bw, bh])
            elif r < 0.45:
                add(image_id, other, ann["bbox"])
            elif r < 0.52:
                s = rng.uniform(0.35, 0.6)
                add(image_id, other, [x + s * bw, y + 0.5 * s * bh, bw, bh])
            else:
                add(image_id, cat, [x + rng.normal(0, 0.05) * bw, y + rng.normal(0, 0.05) * bh,
                                    bw * rng.uniform(0.9, 1.1), bh * rng.uniform(0.9, 1.1)])  # fmt: skip
            if rng.random() < 0.3:
                add(image_id, cat, np.array(ann["bbox"]) * rng.uniform(0.97, 1.03, 4))
        for _ in range(int(rng.integers(0, 4))):
            bw, bh = rng.uniform(10, w / 4), rng.uniform(10, h / 4)
            add(image_id, int(rng.choice(cats)), [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh])
    crowded = next(iter(gt.imgs.values()))
    for _ in range(150):
        add(crowded["id"], int(rng.choice(cats)),
            [rng.uniform(0, crowded["width"] / 2), rng.uniform(0, crowded["height"] / 2), 50, 60])  # fmt: skip
    if masks:
        for record in records:
            info = gt.imgs[record["image_id"]]
            x, y, bw, bh = record["bbox"]
            mask = np.zeros((info["height"], info["width"]), dtype=np.uint8, order="F")
            # boxes as masks, a little smaller, so that the mask IoUs differ from the box IoUs
            mask[int(y + 0.1 * bh) : int(y + bh), int(x) : int(x + 0.9 * bw)] = 1
            rle = mask_utils.encode(mask)
            record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return records


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_agrees_with_tidecv_on_tiny_coco(shared_data: Callable[[str], Path], tmp_path: Path, iou_type: str) -> None:
    """AP, the six dAPs, FP/FN dAPs, counts, every detection's type and the missed objects
    of detkit and tidecv on tiny_coco val with noisy detections, boxes and masks."""
    tidecv = _tidecv()
    import matplotlib

    annotations = shared_data("tiny_coco") / "annotations" / "instances_val2017.json"
    gt = _load_coco(annotations)
    records = _noisy_records(gt, seed=0, masks=iou_type == "segm")
    results = tmp_path / "results.json"
    results.write_text(json.dumps(records))

    ours = analyze_errors(gt, records, iou_type=iou_type)

    # TIDE() sets seaborn's style in matplotlib's global rcParams; keep it to this test
    with matplotlib.rc_context(), contextlib.redirect_stdout(io.StringIO()):
        tide = tidecv.TIDE()
        run = tide.evaluate(
            tidecv.datasets.COCO(str(annotations)), tidecv.datasets.COCOResult(str(results)),
            mode=tidecv.TIDE.BOX if iou_type == "bbox" else tidecv.TIDE.MASK,
        )  # fmt: skip
        main = tide.get_main_errors()["results"]
        special = tide.get_special_errors()["results"]
        their_counts = {e.short_name: n for e, n in run.count_errors().items()}

    # the data exercises every error type and the special cases
    assert all(ours.counts[name] > 0 for name in ERROR_TYPES), ours.counts
    assert all(ours.delta_ap[name] > 0 for name in ERROR_TYPES), ours.delta_ap  # no 0 == 0 comparisons
    assert max(ours.per_image_errors.values()) > 100  # an image beyond max_dets
    assert sum(e is None for e in ours.detection_errors) > 0

    assert ours.ap == pytest.approx(run.ap / 100, abs=TOLERANCE)
    for name in ERROR_TYPES:
        assert ours.delta_ap[name] == pytest.approx(main[SHORT_NAMES[name]] / 100, abs=TOLERANCE), name
        assert ours.counts[name] == their_counts[SHORT_NAMES[name]], name
    assert ours.false_positive_ap == pytest.approx(special["FalsePos"] / 100, abs=TOLERANCE)
    assert ours.false_negative_ap == pytest.approx(special["FalseNeg"] / 100, abs=TOLERANCE)

    # per detection: tidecv's error objects name the record (its `_id` is the record's index)
    # and, for missed objects, the annotation (`_id` is its index in the annotation file)
    by_short = {short: name for name, short in SHORT_NAMES.items()}
    theirs: list[str | None] = [None] * len(records)
    their_missed = []
    for error in run.errors:
        if hasattr(error, "pred"):
            theirs[error.pred["_id"]] = by_short[error.short_name]
        else:
            their_missed.append(gt.dataset["annotations"][error.gt["_id"]]["id"])
    assert ours.detection_errors == theirs
    assert sorted(ours.missed_annotations) == sorted(their_missed)
    assert ours.images == len(gt.imgs) and ours.detections == len(records)


# A hand-computable fixture: two 100x100 images, classes a (1) and b (2).
# image 1: g1 a [10,10,20,20], g2 a [50,10,20,20], g3 b [10,50,20,20], g4 b [50,50,20,20]
# image 2: g5 a [10,10,30,30], g6 b [60,60,20,20]
_OBJECTS = [
    (1, 1, 1, [10, 10, 20, 20]), (2, 1, 1, [50, 10, 20, 20]), (3, 1, 2, [10, 50, 20, 20]),
    (4, 1, 2, [50, 50, 20, 20]), (5, 2, 1, [10, 10, 30, 30]), (6, 2, 2, [60, 60, 20, 20]),
]  # fmt: skip
# (image, class, box, score, the error it is)
_DETECTIONS = [
    (1, 1, [10, 10, 20, 20], 0.75, None),  # matches g1
    (1, 1, [11, 10, 20, 20], 0.70, "duplicate"),  # IoU 380/420 with g1, already matched
    (1, 1, [60, 10, 20, 20], 0.90, "localization"),  # IoU 1/3 with g2 (class a)
    (1, 1, [10, 50, 20, 20], 0.85, "classification"),  # IoU 1 with g3 (class b)
    (1, 1, [60, 50, 20, 20], 0.80, "both"),  # IoU 1/3 with g4 (class b), nothing of class a
    (1, 2, [50, 50, 20, 20], 0.60, None),  # matches g4
    (2, 2, [80, 0, 15, 15], 0.65, "background"),  # touches nothing
    (2, 1, [10, 10, 30, 30], 0.95, None),  # matches g5
]


def _coco(objects: list[tuple[int, int, int, list[float]]], *, crowds: tuple[int, ...] = ()) -> COCO:
    return coco_from_dict({
        "images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": ann_id, "image_id": image, "category_id": cat, "bbox": box, "area": box[2] * box[3],
             "iscrowd": int(ann_id in crowds),
             "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3],
                               box[0], box[1] + box[3]]]}
            for ann_id, image, cat, box in objects
        ],
    })  # fmt: skip


def _records(detections: list[tuple[int, int, list[float], float, str | None]]) -> list[dict[str, Any]]:
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s, _ in detections]


def test_hand_fixture_each_error_once() -> None:
    """Each error type exactly once, and AP and every dAP worked out by hand.

    AP per class: precision made monotone, read at recalls 0, .01, ..., 1 (101 points).
    Class a (g1, g2, g5), by score: TP F F F TP F -> precision 1 up to recall 1/3 (34
    points), 0.4 up to 2/3 (33 points): 47.2/101. Class b (g3, g4, g6): F TP -> 0.5 up to
    1/3: 17/101. AP = (47.2 + 17) / 202.
    """
    gt = _coco(_OBJECTS)
    analysis = analyze_errors(gt, _records(_DETECTIONS))
    assert analysis.detection_errors == [d[4] for d in _DETECTIONS]
    assert analysis.counts == dict.fromkeys(ERROR_TYPES, 1)
    assert analysis.missed_annotations == [6]  # g2 and g3 are what the loc and cls errors would find
    assert analysis.per_image_errors == {1: 4, 2: 2}
    assert (analysis.images, analysis.detections) == (2, 8)
    ap = (47.2 + 17) / 202
    assert analysis.ap == pytest.approx(ap, abs=1e-12)
    expected = {
        # the cls error becomes a b TP at 0.85: a = TP F F TP F (50.5), b = TP F TP (34 + 33 * 2/3 = 56)
        "classification": (50.5 + 56) / 202,
        # the loc error becomes a TP at 0.9: a = TP TP F F TP F -> 1 to 2/3 (67), 0.6 to 1 (34): 87.4
        "localization": (87.4 + 17) / 202,
        "both": (50.5 + 17) / 202,  # a = TP F F TP F
        "duplicate": ap,  # the last a detection, below the recall it could change
        "background": (47.2 + 34) / 202,  # b = TP
        "missed": (47.2 + 25.5) / 202,  # b has two objects: 0.5 up to recall 1/2 (51 points)
    }
    for name, fixed in expected.items():
        assert analysis.delta_ap[name] == pytest.approx(fixed - ap, abs=1e-12), name
    # every TP first: a reaches 2/3 (67 points), b 1/3 (34 points)
    assert analysis.false_positive_ap == pytest.approx((67 + 34) / 202 - ap, abs=1e-12)
    # only the matched objects: a 2 (51 points at 1, 50 at 0.4 = 71), b 1 (101 at 0.5)
    assert analysis.false_negative_ap == pytest.approx((71 + 50.5) / 202 - ap, abs=1e-12)


def test_hand_fixture_agrees_with_tidecv(tmp_path: Path) -> None:
    """tidecv gives the hand fixture the same numbers (it checks the hand arithmetic too)."""
    tidecv = _tidecv()
    import matplotlib

    gt = _coco(_OBJECTS)
    (tmp_path / "gt.json").write_text(json.dumps(gt.dataset))
    (tmp_path / "dets.json").write_text(json.dumps(_records(_DETECTIONS)))
    with matplotlib.rc_context(), contextlib.redirect_stdout(io.StringIO()):
        tide = tidecv.TIDE()
        run = tide.evaluate(tidecv.datasets.COCO(str(tmp_path / "gt.json")),
                            tidecv.datasets.COCOResult(str(tmp_path / "dets.json")))  # fmt: skip
        main = tide.get_main_errors()["dets"]
    analysis = analyze_errors(gt, _records(_DETECTIONS))
    assert analysis.ap == pytest.approx(run.ap / 100, abs=TOLERANCE)
    for name in ERROR_TYPES:
        assert analysis.delta_ap[name] == pytest.approx(main[SHORT_NAMES[name]] / 100, abs=TOLERANCE), name


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_detections(iou_type: str) -> None:
    gt = _coco(_OBJECTS)
    records = [
        {"image_id": image, "category_id": cat, "bbox": box, "score": 0.5 + 0.05 * ann_id,
         "segmentation": gt.annToRLE(gt.anns[ann_id])}
        for ann_id, image, cat, box in _OBJECTS
    ]  # fmt: skip
    analysis = analyze_errors(gt, records, iou_type=iou_type)
    assert analysis.ap == 1.0
    assert analysis.delta_ap == dict.fromkeys(ERROR_TYPES, 0.0)
    assert analysis.counts == dict.fromkeys(ERROR_TYPES, 0)
    assert (analysis.false_positive_ap, analysis.false_negative_ap) == (0.0, 0.0)
    assert analysis.detection_errors == [None] * len(_OBJECTS)
    assert analysis.missed_annotations == []
    assert analysis.per_image_errors == {1: 0, 2: 0}


def test_no_detections_only_missed() -> None:
    analysis = analyze_errors(_coco(_OBJECTS), [])
    assert analysis.ap == 0.0
    assert analysis.counts == {**dict.fromkeys(ERROR_TYPES, 0), "missed": 6}
    assert sorted(analysis.missed_annotations) == [1, 2, 3, 4, 5, 6]
    assert analysis.per_image_errors == {1: 4, 2: 2}
    assert analysis.delta_ap == dict.fromkeys(ERROR_TYPES, 0.0)  # no class has anything left to measure
    assert analysis.detection_errors == []


def test_image_ids_restrict_the_analysis() -> None:
    """Only image 1: the records of image 2 are not analysed, its objects not counted."""
    gt = _coco(_OBJECTS)
    analysis = analyze_errors(gt, _records(_DETECTIONS), image_ids=[1])
    assert analysis.images == 1 and analysis.detections == len(_DETECTIONS)
    assert analysis.per_image_errors == {1: 4}
    assert analysis.detection_errors == [d[4] if d[0] == 1 else None for d in _DETECTIONS]
    assert analysis.counts == {**dict.fromkeys(ERROR_TYPES, 1), "background": 0, "missed": 0}
    alone = analyze_errors(_coco([o for o in _OBJECTS if o[1] == 1]), _records([d for d in _DETECTIONS if d[0] == 1]))
    assert analysis.ap == alone.ap and analysis.delta_ap == alone.delta_ap


def test_empty_inputs() -> None:
    empty = coco_from_dict({"images": [], "categories": [{"id": 1, "name": "a"}], "annotations": []})
    analysis = analyze_errors(empty, [])
    assert (analysis.ap, analysis.images, analysis.detections) == (0.0, 0, 0)
    assert analysis.per_image_errors == {} and analysis.missed_annotations == []
    none_listed = analyze_errors(_coco(_OBJECTS), _records(_DETECTIONS), image_ids=[])
    assert none_listed.images == 0 and none_listed.detection_errors == [None] * len(_DETECTIONS)
    assert none_listed.counts == dict.fromkeys(ERROR_TYPES, 0)


def test_crowd_region_ignores_detections_in_the_ap() -> None:
    """A detection covering a crowd region of its class leaves the AP alone; tidecv still
    types it (here background: the crowd is not an object)."""
    objects = [*_OBJECTS, (7, 2, 1, [50, 0, 40, 40])]
    gt = _coco(objects, crowds=(7,))
    inside = (2, 1, [55, 5, 30, 30], 0.99, "background")
    other_class = (2, 2, [55, 5, 30, 30], 0.98, "background")
    with_crowd = analyze_errors(gt, _records([*_DETECTIONS, inside]))
    without = analyze_errors(gt, _records(_DETECTIONS))
    assert with_crowd.ap == without.ap
    assert with_crowd.detection_errors[-1] == "background"
    assert analyze_errors(gt, _records([*_DETECTIONS, other_class])).ap < without.ap


def test_max_dets_keeps_the_top_scores_of_an_image() -> None:
    gt = _coco(_OBJECTS)
    analysis = analyze_errors(gt, _records(_DETECTIONS), max_dets=2)
    # image 1 keeps the loc (0.90) and cls (0.85) errors; image 2 both of its detections
    assert analysis.detection_errors == [None, None, "localization", "classification", None, None, "background", None]
    assert analysis.counts["missed"] == 3  # g1, g4 unmatched now, with g6


def test_format_and_to_dict() -> None:
    analysis = analyze_errors(_coco(_OBJECTS), _records(_DETECTIONS))
    text = format_errors(analysis)
    lines = text.splitlines()
    rows = {line.split()[0]: line for line in lines[2:8]}
    assert rows["localization"].split() == ["localization", "1", f"{100 * analysis.delta_ap['localization']:+.1f}"]
    assert list(rows) == list(ERROR_TYPES) and len({len(row) for row in rows.values()}) == 1  # aligned
    assert lines[0] == f"TIDE errors (bbox), AP50 {100 * analysis.ap:.1f} over 2 images, 8 detections"
    assert "false positives" in text and "false negatives" in text
    summary = json.loads(json.dumps(analysis.to_dict()))
    assert summary["delta_ap"] == analysis.delta_ap and summary["counts"] == analysis.counts
    assert "detection_errors" not in summary and "per_image_errors" not in summary


def test_user_errors() -> None:
    gt = _coco(_OBJECTS)
    records = _records(_DETECTIONS)
    with pytest.raises(DataError, match="category ids"):
        analyze_errors(gt, [{**records[0], "category_id": 9}])
    with pytest.raises(DataError, match="image ids"):
        analyze_errors(gt, [{**records[0], "image_id": 9}])
    with pytest.raises(DataError, match="image_ids"):
        analyze_errors(gt, records, image_ids=[1, 9])
    with pytest.raises(DataError, match="'segmentation'"):
        analyze_errors(gt, records, iou_type="segm")
    with pytest.raises(ConfigError, match="iou_type"):
        analyze_errors(gt, records, iou_type="keypoints")
    with pytest.raises(ConfigError, match="background_threshold"):
        analyze_errors(gt, records, background_threshold=0.6)


def test_iou_exactly_pos_threshold_with_a_matched_object_is_localization() -> None:
    """tidecv's localization range ``[t_b, t_f]`` includes ``t_f``: a second detection at IoU
    exactly 0.5 with an object already matched is a localization error, not a duplicate."""
    gt = _coco([(1, 1, 1, [0, 0, 20, 20])])
    records = _records([(1, 1, [0, 0, 20, 20], 0.9, None), (1, 1, [0, 0, 20, 10], 0.8, None)])  # IoU 200/400
    assert analyze_errors(gt, records).detection_errors == [None, "localization"]
    records[1]["bbox"] = [0, 0, 20, 11]  # IoU 0.55: a duplicate
    assert analyze_errors(gt, records).detection_errors == [None, "duplicate"]
