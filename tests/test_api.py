"""The Python API, `detkit.Detector`: every kind of input gives what `detkit detect` gives.

Oracles: `detkit detect`'s detections.json for the same files (the CLI users already
trust), and the model called directly on the float tensor. README's example runs here
too, in a folder laid out as README assumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _checkpoints import SHAPES_CLASSES, random_shapes_checkpoint
from PIL import Image

import detkit
from detkit import DetectionResult, Detector
from detkit.cli import main
from detkit.data.shapes import generate_shapes
from detkit.errors import CheckpointError, ConfigError, DataError

CLASSES = SHAPES_CLASSES
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shapes dataset folder (``data/``: val/000000.png ...)."""
    root = tmp_path_factory.mktemp("demo") / "data"
    generate_shapes(root, num_train=0, num_val=4, image_size=96, seed=2)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random shapes Faster R-CNN that keeps weak detections (so there are some to compare)."""
    return random_shapes_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(scope="module")
def det(checkpoint: Path) -> Detector:
    return Detector.from_checkpoint(checkpoint, device="cpu", score_thresh=0.0)


def _same(a: DetectionResult, b: DetectionResult, atol: float = 1e-4) -> None:
    assert len(a) == len(b) and a.names == b.names
    torch.testing.assert_close(a.boxes, b.boxes, atol=atol, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=atol, rtol=0)


def test_public_names() -> None:
    assert {"Detector", "DetectionResult"} <= set(detkit.__all__)
    assert detkit.Detector is Detector and detkit.DetectionResult is DetectionResult


def test_paths_give_what_detect_writes(det: Detector, checkpoint: Path, shapes: Path, tmp_path: Path) -> None:
    files = sorted((shapes / "val").glob("*.png"))
    out = tmp_path / "detect"
    assert main(["-q", "detect", "--weights", str(checkpoint), "--out", str(out), "--device", "cpu",
                 "--score-thresh", "0.0", "--no-draw", *map(str, files)]) == 0  # fmt: skip
    expected = json.loads((out / "detections.json").read_text())
    results = det([str(f) for f in files])
    assert [r.source for r in results] == [str(f) for f in files]
    got = [record for r in results for record in r.to_records()]
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected):
        assert (g["file_name"], g["category"]) == (e["file_name"], e["category"])
        assert g["bbox"] == pytest.approx(e["bbox"], abs=0.011) and g["score"] == pytest.approx(e["score"], abs=1e-4)


def test_every_kind_of_input_agrees(det: Detector, shapes: Path) -> None:
    path = shapes / "val" / "000001.png"
    reference = det(path)
    assert isinstance(reference, DetectionResult) and len(reference) > 0
    bgr = cv2.imread(str(path))
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    _same(det(bgr), reference)
    _same(det(rgb, color="rgb"), reference)
    _same(det(Image.open(path)), reference)
    _same(det(torch.from_numpy(rgb).permute(2, 0, 1)), reference)
    as_float = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
    _same(det(as_float), reference)
    np.testing.assert_array_equal(det(as_float).image, rgb)
    with torch.no_grad():
        direct, _ = det.model([as_float])
    torch.testing.assert_close(reference.boxes, direct[0].boxes, atol=1e-4, rtol=0)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert det(gray).image.shape == bgr.shape  # repeated to three channels


def test_lists_keep_order_and_batches_change_nothing(checkpoint: Path, det: Detector, shapes: Path) -> None:
    files = sorted((shapes / "val").glob("*.png"))
    one_by_one = [det(f) for f in files]
    batched = Detector.from_checkpoint(checkpoint, device="cpu", score_thresh=0.0, batch_size=3)(files)
    assert isinstance(batched, list) and len(batched) == len(files)
    for a, b in zip(batched, one_by_one):
        _same(a, b)
    assert det([]) == []


def test_winograd_gives_the_same_detections(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``winograd=True`` swaps the 128-channel FPN and RPN convs; the detections match up to order of ties."""
    from detkit.ops.winograd import WinogradConv2d

    monkeypatch.setattr(WinogradConv2d, "min_tiles", 1)  # 96 px test images
    checkpoint = random_shapes_checkpoint(tmp_path / "wide.pt", ["model.neck.out_channels=128"])
    plain = Detector.from_checkpoint(checkpoint, device="cpu", score_thresh=0.0)
    winograd = Detector.from_checkpoint(checkpoint, device="cpu", score_thresh=0.0, winograd=True)
    assert sum(isinstance(m, WinogradConv2d) for m in winograd.model.modules()) == 8
    assert not any(isinstance(m, WinogradConv2d) for m in plain.model.modules())
    a, b = plain(shapes / "val" / "000001.png"), winograd(shapes / "val" / "000001.png")
    assert len(a) == len(b) > 0
    for box, label in zip(a.boxes, a.labels, strict=True):  # each box has a twin of its class in the other set
        twins = b.boxes[b.labels == label]
        assert float((twins - box).abs().amax(dim=1).min()) < 0.01
    # the command line: `detect --winograd` writes as many detections of each class as plain `detect`
    counts = []
    for flags in ([], ["--winograd"]):
        out = tmp_path / f"detect{len(flags)}"
        args = ["-q", "detect", "--weights", str(checkpoint), "--out", str(out), "--no-draw", "--score-thresh", "0"]
        assert main([*args, *flags, str(shapes / "val" / "000001.png")]) == 0
        records = json.loads((out / "detections.json").read_text())
        counts.append(sorted(r["category"] for r in records))
    assert counts[0] == counts[1] and len(counts[0]) == len(a)


def test_threshold_drawing_and_saving(checkpoint: Path, shapes: Path, tmp_path: Path) -> None:
    path = shapes / "val" / "000002.png"
    everything = Detector.from_checkpoint(checkpoint, device="cpu", score_thresh=0.0)(path)
    threshold = float(everything.scores.median())
    strict = Detector.from_checkpoint(checkpoint, device="cpu", score_thresh=threshold)(path)
    assert len(strict) == int((everything.scores >= threshold).sum()) and bool((strict.scores >= threshold).all())
    drawn = strict.draw()
    assert drawn.shape == strict.image.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, strict.image)  # boxes were drawn
    saved = strict.save(tmp_path / "a.png")
    assert cv2.imread(str(saved)) is not None


def test_bad_inputs_say_what_is_wrong(det: Detector, checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="input 1 is a dict"):
        det([np.zeros((8, 8, 3), np.uint8), {"not": "an image"}])
    with pytest.raises(DataError, match=r"input 0: a tensor image must be \(3, H, W\)"):
        det(torch.zeros(2, 3, 8, 8))
    with pytest.raises(DataError, match=r"values in \[0, 1\]"):
        det(np.full((8, 8, 3), 200.0))
    with pytest.raises(DataError, match=r"missing\.png"):
        det(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="color must be"):
        det(np.zeros((8, 8, 3), np.uint8), color="bgra")
    with pytest.raises(ConfigError, match="precision must be"):
        Detector.from_checkpoint(checkpoint, device="cpu", precision="int8")
    with pytest.raises(ConfigError, match="score_thresh must be"):
        Detector.from_checkpoint(checkpoint, device="cpu", score_thresh=2.0)
    (tmp_path / "text.pt").write_text("no")
    with pytest.raises(CheckpointError, match=r"text\.pt"):
        Detector.from_checkpoint(tmp_path / "text.pt")


def test_readme_example_runs(checkpoint: Path, shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README's Python API section has no python block"
    demo = tmp_path / "runs" / "demo"
    demo.mkdir(parents=True)
    shutil.copy(checkpoint, demo / "best.pt")
    shutil.copytree(shapes, demo / "data")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    assert os.path.getsize("annotated.png") > 0
    assert isinstance(namespace["second"], DetectionResult) and isinstance(namespace["records"], list)
