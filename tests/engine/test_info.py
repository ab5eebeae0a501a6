"""`detkit info CHECKPOINT` describes every kind of checkpoint detkit writes.

Oracles: the model each recipe builds (its type, its components' names, its number of
weights), the config and metadata that were saved, and the errors `load_checkpoint`
gives for files that are not checkpoints of a readable format. Recipe models are built
on PyTorch's ``meta`` device: the same modules and shapes, no memory, no time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from detkit.cli import main
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.engine.checkpoint import make_checkpoint
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins

RECIPES = sorted(p.name for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("classify_"))


def _info(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    assert main(["info", str(path), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert main(["info", str(path)]) == 0
    return described, capsys.readouterr().out


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_checkpoint_is_described(recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(f"detkit:{recipe}")
    classes = [f"class{i}" for i in range(3)]
    with torch.device("meta"):
        model = build_detector(config, load_plugins().registry, num_classes=len(classes))
    path = tmp_path / "model.pt"
    metrics = {"bbox": {"AP": 0.25, "AP50": 0.5}}
    # the checkpoint of the recipe's model, its weights meta tensors (shapes without data)
    ckpt = make_checkpoint(model=torch.nn.Identity(), config=config, class_names=classes,
                           meta={"iteration": 7, "metrics": metrics})  # fmt: skip
    torch.save({**ckpt, "model": model.state_dict()}, path)
    info, text = _info(path, capsys)
    detector = config["model"]["type"]
    assert info["architecture"]["type"] == detector and info["classes"] == classes
    assert info["architecture"]["components"]["backbone"]["name"] == config["model"]["backbone"]["name"]
    weights = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    assert info["parameters"] == weights
    assert info["training"]["iteration"] == 7 and info["metrics"] == metrics
    assert info["format_version"] == 1 and not info["resumable"]
    assert f"architecture  {detector}" in text and "classes       3: class0, class1, class2" in text
    assert "bbox AP 0.250 (AP50 0.500)" in text and f"{weights:,}" in text


def test_a_trained_run_and_its_last_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["-q", "train", "detkit:shapes_faster_rcnn.yaml", "--out", str(out), "train.max_iters=2",
                 "train.batch_size=2", "data.train.num_train=8", "data.train.num_val=4", "data.val.num_train=8",
                 "data.val.num_val=4", f"data.train.root={tmp_path / 'data'}", f"data.val.root={tmp_path / 'data'}",
                 "train.device=cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    best, text = _info(out / "best.pt", capsys)
    last, _ = _info(out / "last.pt", capsys)
    assert not best["resumable"] and last["resumable"]
    assert best["training"]["data_train"]["name"] == "shapes" and best["training"]["iteration"] == 2
    assert best["architecture"]["components"]["proposer"] == {
        "name": "rpn", "settings": best["architecture"]["components"]["proposer"]["settings"], "plugin": "detkit_rpn"
    }
    assert "holds the trainer's state" not in text and "data.train    name=shapes" in text


def test_an_imported_torchvision_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    twin = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    source = tmp_path / "tv.pth"
    torch.save(twin.state_dict(), source)
    target = tmp_path / "imported.pt"
    assert main(["-q", "import-torchvision", "fasterrcnn_mobilenet_v3_large_320_fpn", str(source), str(target)]) == 0
    capsys.readouterr()
    info, text = _info(target, capsys)
    assert info["training"]["imported_from"] == "torchvision fasterrcnn_mobilenet_v3_large_320_fpn"
    assert info["architecture"]["components"]["backbone"]["name"].startswith("mobilenet_v3_large")
    assert len(info["classes"]) == 90 and info["classes"][0] == "person"
    assert "imported from torchvision fasterrcnn_mobilenet_v3_large_320_fpn" in text


def test_a_classifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lenet"
    assert main(["-q", "classify", "train", str(CONFIG_DIR / "classify_lenet_digits.yaml"), "data.image_size=16",
                 "data.augment=[]", "train.epochs=1", "train.device=cpu", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    info, text = _info(out / "best.pt", capsys)
    assert info["task"] == "classify" and info["architecture"]["components"]["backbone"]["name"] == "lenet5"
    assert info["classes"] == [str(d) for d in range(10)] and "accuracy" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"conv.weight": torch.zeros(2)}, "looks like a raw state dict"),
        ({"format": "detkit-checkpoint", "format_version": 0}, "format_version 0, which no detkit writes"),
        ({"format": "detkit-checkpoint", "format_version": 9}, "upgrade detkit"),
    ],
)
def test_files_that_cannot_be_described(
    content: dict, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.pt"
    torch.save(content, path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert main(["info", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
