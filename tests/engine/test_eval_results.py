"""`detkit eval --results FILE --data ANN` scores a results file that any detector wrote.

Oracle: the metrics of the evaluation that wrote the file. A results file holds every
detection of every image, so scoring it again over the same images gives the same
numbers, boxes and masks, with either backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _checkpoints import SHAPES_CLASSES, random_shapes_checkpoint
from torch import nn

from detkit.cli import main
from detkit.data.coco import CocoDataset
from detkit.data.shapes import generate_shapes
from detkit.engine.evaluate import evaluate_dataset, evaluate_results
from detkit.structures import Detections

CLASSES = SHAPES_CLASSES


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six generated shapes images; their annotation json."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=0, num_val=6, image_size=64, seed=3)
    return root / "annotations" / "instances_val.json"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised shapes recipe that keeps every detection (score_thresh 0)."""
    return random_shapes_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


class _Replay(nn.Module):
    """A stand-in detector: returns prepared detections, one per image, in the order the images come."""

    has_masks = True

    def __init__(self, detections: list[Detections]) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # the evaluation reads the device from a parameter
        self.queue = list(detections)

    def forward(self, images: list[torch.Tensor]) -> tuple[list[Detections], dict]:
        return [self.queue.pop(0) for _ in images], {}


def _noisy_ground_truth(dataset: CocoDataset) -> list[Detections]:
    """Per image in dataset order: jittered gt boxes with their masks, one relabelled, plus a false positive."""
    gt = dataset.coco_gt()
    g = torch.Generator().manual_seed(0)
    out = []
    for image_id in dataset.image_ids:
        anns = gt.imgToAnns[image_id]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        boxes = torch.cat([boxes + torch.randn(boxes.shape, generator=g) * 2.0, torch.tensor([[5.0, 5.0, 30.0, 25.0]])])
        labels = torch.tensor([dataset.category_ids.index(a["category_id"]) for a in anns] + [0])
        labels[0] = (labels[0] + 1) % len(CLASSES)
        masks = torch.stack([torch.from_numpy(gt.annToMask(a)).bool() for a in anns] + [torch.zeros(64, 64).bool()])
        masks[-1, 5:25, 5:30] = True
        scores = torch.rand(len(boxes), generator=g)
        out.append(Detections(boxes=boxes.float(), scores=scores, labels=labels, masks=masks))
    return out


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_results_file_scores_like_the_evaluation_that_wrote_it(shapes: Path, tmp_path: Path, backend: str) -> None:
    dataset = CocoDataset(ann_file=shapes)
    results = tmp_path / "results.json"
    expected = evaluate_dataset(
        _Replay(_noisy_ground_truth(dataset)), dataset, results_path=results, backend=backend, progress=False
    )
    assert 0.2 < expected["bbox"]["AP"] < 0.95 and 0.2 < expected["segm"]["AP"] < 0.95  # not trivial
    got = evaluate_results(results, dataset, backend=backend)
    for iou_type in ("bbox", "segm"):
        assert got[iou_type] == expected[iou_type]
    assert got["images"] == expected["images"] and got["results"] == str(results)


def test_eval_results_cli_reproduces_eval_weights(shapes: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["-q", "eval", "--weights", str(checkpoint), "--data", str(shapes), "--out", str(run),
                 "--device", "cpu"]) == 0  # fmt: skip
    expected = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "results.json").read_text())  # the model detected something
    scored = tmp_path / "scored"
    capsys.readouterr()
    assert main(["eval", "--results", str(run / "results.json"), "--data", str(shapes), "--out", str(scored)]) == 0
    got = json.loads((scored / "metrics.json").read_text())
    assert got["bbox"] == expected["bbox"]
    assert "evaluated on 6 of 6 images" in capsys.readouterr().out


def _fail(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_unknown_image_and_category_ids_are_named(shapes: Path, tmp_path: Path, capsys) -> None:
    records = [{"image_id": 1, "category_id": 2, "bbox": [1, 2, 10, 10], "score": 0.9}]
    records += [{"image_id": 900 + k, "category_id": 2, "bbox": [1, 2, 10, 10], "score": 0.5} for k in range(7)]
    records += [{"image_id": 1, "category_id": 77, "bbox": [1, 2, 10, 10], "score": 0.5}]
    path = tmp_path / "other.json"
    path.write_text(json.dumps(records))
    err = _fail(["eval", "--results", str(path), "--data", str(shapes), "--out", str(tmp_path / "o")], capsys)
    assert str(path) in err
    assert "7 image ids" in err and "900, 901, 902, 903, 904 and 2 more" in err
    assert "1 category ids" in err and "77" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json at all", "is not JSON"),
        ('{"annotations": []}', "holds a JSON dict, not a list"),
        ('[{"image_id": 1, "category_id": 1, "score": 0.5}]', "record #0 has neither 'bbox' nor 'segmentation'"),
        ('[{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [1, 2]}]', "record #0 has bbox [1, 2]"),
        ('[[1, 2, 3]]', "record #0 is a JSON list, not an object"),
    ],
)
def test_a_file_that_is_not_a_list_of_records(shapes: Path, tmp_path: Path, capsys, text: str, says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    err = _fail(["eval", "--results", str(path), "--data", str(shapes)], capsys)
    assert says in err and str(path) in err


def test_eval_argument_errors(shapes: Path, tmp_path: Path, capsys) -> None:
    results = tmp_path / "r.json"
    results.write_text("[]")
    assert "needs --data" in _fail(["eval", "--results", str(results)], capsys)
    assert "--backend must be one of faster, pycocotools, got 'fast'" in _fail(
        ["eval", "--results", str(results), "--data", str(shapes), "--backend", "fast"], capsys
    )
    assert "--weights CHECKPOINT" in _fail(["eval", "--data", str(shapes)], capsys)
