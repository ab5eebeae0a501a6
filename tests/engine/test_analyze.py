"""`detkit analyze` and the analysis `detkit eval` writes: what metrics.json holds and what is drawn.

Oracles: perfect results (every error count and dAP zero, a diagonal confusion matrix,
nothing for the gallery); hand-counted objects per COCO size range; the COCO numbers
the size table repeats; a gallery ranked by the errors each image shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detkit.cli import main
from detkit.data.coco import CocoDataset
from detkit.data.shapes import generate_shapes
from detkit.evaluation.tide import ERROR_TYPES

CLASSES = ["circle", "square", "triangle", "ellipse"]
PICTURES = ["confusion_matrix.png", "errors.png", "pr_curves.png"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve generated shapes images; their annotation json."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=0, num_val=12, image_size=64, seed=5)
    return root / "annotations" / "instances_val.json"


def _records(ann_file: Path, *, noisy: bool, masks: bool = False) -> list[dict[str, Any]]:
    """The ground truth as results: exact, or with every kind of error mixed in (seeded)."""
    data = json.loads(ann_file.read_text())
    cats = [c["id"] for c in data["categories"]]
    rng = np.random.default_rng(0)
    records = []
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        record = {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": [x, y, w, h],
                  "score": float(rng.uniform(0.5, 1.0))}  # fmt: skip
        if masks:
            image = next(i for i in data["images"] if i["id"] == a["image_id"])
            rle = mask_utils.frPyObjects(a["segmentation"], image["height"], image["width"])
            merged = mask_utils.merge(rle) if isinstance(rle, list) else rle
            record["segmentation"] = {"size": merged["size"], "counts": merged["counts"].decode("ascii")}
        if noisy:
            kind = a["id"] % 5
            if kind == 1:  # localization: shifted by most of its width
                record["bbox"] = [x + 0.6 * w, y, w, h]
            elif kind == 2:  # classification
                record["category_id"] = cats[(cats.index(a["category_id"]) + 1) % len(cats)]
            elif kind == 3:  # a duplicate, scored lower
                records.append({**record, "score": record["score"] / 2})
            elif kind == 4:  # missed
                continue
        records.append(record)
    if noisy:  # background detections in an empty corner of every image
        for image in data["images"]:
            record = {"image_id": image["id"], "category_id": cats[0], "bbox": [0.0, 0.0, 3.0, 3.0], "score": 0.6}
            if masks:
                corner = np.zeros((image["height"], image["width"], 1), dtype=np.uint8, order="F")
                corner[:3, :3] = 1
                rle = mask_utils.encode(corner)[0]
                record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            records.append(record)
    return records


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_analyze_writes_metrics_plots_and_gallery(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = _write(tmp_path / "results.json", _records(shapes, noisy=True))
    out = tmp_path / "out"
    assert main(["-q", "analyze", "--results", str(results), "--data", str(shapes), "--out", str(out),
                 "--gallery", "3", "--score-thresh", "0.3"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "bbox errors (TIDE" in printed and "largest confusions" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    errors = metrics["bbox"]["errors"]
    for kind in ("classification", "localization", "duplicate", "background", "missed"):
        assert errors["counts"][kind] > 0 and errors["delta_ap"][kind] >= 0, kind
    assert set(errors["delta_ap"]) == set(ERROR_TYPES)
    assert metrics["images"] == {"evaluated": 12, "total": 12, "skipped": []}
    assert metrics["results"] == str(results)

    data = json.loads(shapes.read_text())
    areas = [a["area"] for a in data["annotations"] if not a.get("iscrowd", 0)]
    by_size = metrics["bbox"]["by_size"]
    assert by_size["small"]["objects"] == sum(a < 32**2 for a in areas)
    assert by_size["medium"]["objects"] == sum(32**2 <= a < 96**2 for a in areas)
    assert by_size["large"]["objects"] == sum(a >= 96**2 for a in areas)
    assert by_size["small"]["AP"] == metrics["bbox"]["APs"] and by_size["medium"]["AR"] == metrics["bbox"]["ARm"]
    assert set(by_size["small"]["per_class"]) == set(CLASSES)

    confusion = np.array(metrics["confusion"]["matrix"])
    assert metrics["confusion"]["labels"] == [*CLASSES, "background"]
    objects = [sum(a["category_id"] == c["id"] for a in data["annotations"]) for c in data["categories"]]
    np.testing.assert_array_equal(confusion[:4].sum(axis=1), objects)
    # the corner detection of every image (circles) is in the background row, beside the
    # shifted boxes and duplicates; the dropped objects are in the background column
    assert confusion[4, 0] >= 12 and confusion[4, 4] == 0
    dropped = [sum(a["category_id"] == c["id"] and a["id"] % 5 == 4 for a in data["annotations"])
               for c in data["categories"]]  # fmt: skip
    assert (confusion[:4, 4] >= dropped).all() and sum(dropped) > 0

    assert sorted(p.name for p in out.iterdir()) == sorted([*PICTURES, "gallery", "metrics.json"])
    gallery = metrics["gallery"]
    assert len(gallery) == 3 and [g["errors"] for g in gallery] == sorted((g["errors"] for g in gallery), reverse=True)
    for entry in gallery:
        image = cv2.imread(entry["file"])
        assert image is not None and image.shape[1] >= 480  # 64 px images drawn enlarged
    assert sorted(p.name for p in (out / "gallery").iterdir()) == sorted(Path(g["file"]).name for g in gallery)


def test_perfect_results_have_nothing_to_explain(shapes: Path, tmp_path: Path) -> None:
    results = _write(tmp_path / "results.json", _records(shapes, noisy=False))
    out = tmp_path / "out"
    assert main(["-q", "analyze", "--results", str(results), "--data", str(shapes), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    errors = metrics["bbox"]["errors"]
    assert errors["ap"] == pytest.approx(1.0) and metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert all(n == 0 for n in errors["counts"].values())
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in errors["delta_ap"].values())
    confusion = np.array(metrics["confusion"]["matrix"])
    assert (confusion == np.diag(np.diag(confusion))).all() and confusion[4].sum() == 0
    assert metrics["gallery"] == [] and not (out / "gallery").exists()


def test_masks_are_analysed_too(shapes: Path, tmp_path: Path) -> None:
    results = _write(tmp_path / "results.json", _records(shapes, noisy=True, masks=True))
    out = tmp_path / "out"
    assert main(["-q", "analyze", "--results", str(results), "--data", str(shapes), "--out", str(out),
                 "--gallery", "0"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["segm"]["errors"]["iou_type"] == "segm" and metrics["segm"]["errors"]["counts"]["missed"] > 0
    assert (out / "pr_curves_segm.png").stat().st_size > 0 and "gallery" not in metrics


def test_eval_writes_the_analysis_unless_told_not_to(shapes: Path, tmp_path: Path) -> None:
    results = _write(tmp_path / "results.json", _records(shapes, noisy=True))
    with_analysis, without = tmp_path / "a", tmp_path / "b"
    assert main(["-q", "eval", "--results", str(results), "--data", str(shapes), "--out", str(with_analysis)]) == 0
    assert main(["-q", "eval", "--results", str(results), "--data", str(shapes), "--out", str(without),
                 "--no-analysis"]) == 0  # fmt: skip
    analysed = json.loads((with_analysis / "metrics.json").read_text())
    plain = json.loads((without / "metrics.json").read_text())
    assert "errors" in analysed["bbox"] and "errors" not in plain["bbox"] and "confusion" not in plain
    assert {k: v for k, v in analysed["bbox"].items() if k not in ("errors", "by_size")} == plain["bbox"]
    assert all((with_analysis / p).exists() for p in PICTURES)
    assert sorted(p.name for p in without.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gallery", "-1"], "--gallery must be 0 or more"),
        (["--score-thresh", "1.5"], "--score-thresh must be in [0, 1]"),
        (["--backend", "cocoapi"], "--backend must be one of"),
    ],
)
def test_bad_flags_are_one_line_errors(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    results = _write(tmp_path / "results.json", _records(shapes, noisy=False))
    argv = ["analyze", "--results", str(results), "--data", str(shapes), "--out", str(tmp_path / "o"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_results_of_other_data_are_refused(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _records(shapes, noisy=False)
    records[0] = {**records[0], "category_id": 99}
    results = _write(tmp_path / "results.json", records)
    assert main(["analyze", "--results", str(results), "--data", str(shapes), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "category ids not in the ground truth (99" in err and str(results) in err
    assert not (tmp_path / "o").exists()


def test_a_dataset_of_the_same_classes_reads_the_images(shapes: Path) -> None:
    dataset = CocoDataset(ann_file=shapes)
    assert dataset.class_names == CLASSES  # the fixture's classes, which the tests above name
