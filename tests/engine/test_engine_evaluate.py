"""Evaluation says what it evaluated: images evaluated and skipped, and `detkit eval` refuses to skip silently.

Oracle: metrics over the readable images with one image skipped equal the metrics of
the same model on a copy of the annotations without that image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detkit.cli import main
from detkit.config import load_config
from detkit.data.coco import CocoDataset
from detkit.data.shapes import generate_shapes
from detkit.detectors import build_detector
from detkit.engine.checkpoint import save_checkpoint
from detkit.engine.evaluate import evaluate_dataset
from detkit.errors import DataError
from detkit.plugins import load_plugins

CLASSES = ["circle", "square", "triangle", "ellipse"]


@pytest.fixture(scope="module")
def model_and_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A randomly initialised shapes recipe that keeps every detection (score_thresh 0), and its checkpoint."""
    torch.manual_seed(0)
    config = load_config("detkit:shapes_faster_rcnn.yaml", ["model.postprocess.score_thresh=0.0"])
    model = build_detector(config, load_plugins().registry, num_classes=len(CLASSES)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model=model, config=config, class_names=CLASSES)
    return model, path


@pytest.fixture
def val_set(tmp_path: Path) -> tuple[Path, Path]:
    """Four generated shapes images and their json, the third image deleted: ``(json, missing image)``."""
    generate_shapes(tmp_path / "shapes", num_train=0, num_val=4, image_size=64, seed=1)
    ann = tmp_path / "shapes" / "annotations" / "instances_val.json"
    missing = tmp_path / "shapes" / "val" / "000002.png"
    missing.unlink()
    return ann, missing


def test_metrics_record_the_images_evaluated_and_skipped(model_and_checkpoint, val_set, tmp_path) -> None:
    model, _ = model_and_checkpoint
    ann, missing = val_set
    metrics = evaluate_dataset(model, CocoDataset(ann_file=ann), progress=False)
    images = metrics["images"]
    assert (images["evaluated"], images["total"]) == (3, 4)
    assert [(s["image_id"], s["file"]) for s in images["skipped"]] == [(3, str(missing))]
    assert "does not exist" in images["skipped"][0]["reason"]
    # the oracle: the same model on the annotations without the missing image
    data = json.loads(ann.read_text())
    data["images"] = [im for im in data["images"] if im["id"] != 3]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 3]
    without = tmp_path / "without.json"
    without.write_text(json.dumps(data))
    expected = evaluate_dataset(model, CocoDataset(ann_file=without, images=missing.parent), progress=False)
    assert metrics["bbox"] == expected["bbox"]
    assert expected["images"] == {"evaluated": 3, "total": 3, "skipped": []}


def test_refusing_to_skip_names_the_files_before_running_the_model(model_and_checkpoint, val_set) -> None:
    model, _ = model_and_checkpoint
    ann, missing = val_set
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(DataError) as info:
            evaluate_dataset(model, CocoDataset(ann_file=ann), skip_unreadable=False, progress=False)
    finally:
        hook.remove()
    assert not calls
    message = str(info.value)
    assert "1 of 4 images" in message and f"'{missing}' (missing)" in message and "--skip-unreadable" in message


def test_refusing_to_skip_catches_files_that_fail_only_when_decoded(model_and_checkpoint, val_set) -> None:
    model, _ = model_and_checkpoint
    ann, missing = val_set
    good = missing.parent / "000000.png"
    missing.write_bytes(good.read_bytes()[:120])  # a valid PNG header, the pixels cut off
    with pytest.raises(DataError, match=r"1 of 4 images .*000002\.png' \(unusable\)"):
        evaluate_dataset(model, CocoDataset(ann_file=ann), skip_unreadable=False, progress=False)


def test_eval_exits_2_naming_the_missing_image(model_and_checkpoint, val_set, tmp_path, capsys) -> None:
    _, checkpoint = model_and_checkpoint
    ann, missing = val_set
    out = tmp_path / "eval"
    code = main(["-q", "eval", "--weights", str(checkpoint), "--data", str(ann), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(missing) in err and "--skip-unreadable" in err
    assert not out.exists()  # no metrics that look like a full evaluation


def test_eval_skip_unreadable_says_n_of_m_and_lists_the_file(model_and_checkpoint, val_set, tmp_path, capsys) -> None:
    _, checkpoint = model_and_checkpoint
    ann, missing = val_set
    out = tmp_path / "eval"
    code = main(["-q", "eval", "--weights", str(checkpoint), "--data", str(ann), "--out", str(out), "--device", "cpu",
                 "--skip-unreadable"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "evaluated on 3 of 4 images" in printed and str(missing) in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"]["evaluated"] == 3 and metrics["images"]["total"] == 4
    assert [s["file"] for s in metrics["images"]["skipped"]] == [str(missing)]
    assert {r["image_id"] for r in json.loads((out / "results.json").read_text())} <= {1, 2, 4}
