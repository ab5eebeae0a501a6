"""`detkit export`: ONNX (through onnxruntime) and TorchScript files give detkit's detections.

Oracle: the detkit model the file was exported from, run eagerly on the same image.
Detections pair up by label and score (:func:`detkit.export.compare_detections`: equal
scores may leave two NMS implementations in either order); the files must give the same
number of detections, every one paired, boxes within 0.01 px, scores within 1e-4, and for
Mask R-CNN pasted masks whose binarized (> 0.5) IoU with detkit's is above 0.99 and whose
mean absolute difference is below 1e-3. SSD and YOLO files are checked on a second image
of another size (dynamic height and width); the fixed-size files refuse another size.

The models are the shapes recipes with seeded random weights, made less degenerate than
a fresh initialisation: small noise on every weight, batch-norm statistics taken from a
few generated images, and (anchor-free YOLO) random box-bin biases, so that scores and
boxes spread out; the score threshold is 0, so every image has many detections.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from detkit.cli import main
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.engine.build import load_model
from detkit.engine.checkpoint import save_checkpoint
from detkit.errors import ConfigError, DataError
from detkit.export import (
    ExportedModel,
    compare_detections,
    example_image,
    export_model,
    is_exported_file,
)
from detkit.plugins import load_plugins

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# torch.jit.load and torch.jit.trace warn that TorchScript is deprecated in favour of torch.export
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

CLASSES = ["circle", "square", "triangle", "ellipse"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}


def _random_model(recipe: str) -> tuple[nn.Module, dict]:
    """The shapes recipe with seeded random weights that give spread-out scores and boxes."""
    torch.manual_seed(0)
    config = load_config(f"detkit:{recipe}.yaml", ["model.postprocess.score_thresh=0.0"])
    model = build_detector(config, load_plugins().registry, num_classes=len(CLASSES)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for branch in getattr(getattr(model, "dense_head", None), "box_branches", []):
            branch[-1].bias.normal_(0.0, 3.0)  # anchor-free YOLO: its bins start uniform (every box the image)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # the running statistics become the mean over the images
            norm.train()
        model([example_image((128, 128), seed=s) for s in range(4)])
    return model.eval(), config


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints of the four recipes, built on first use."""
    root = tmp_path_factory.mktemp("export")
    made: dict[str, Path] = {}

    class Lazy(dict):
        def __missing__(self, recipe: str) -> Path:
            model, config = _random_model(recipe)
            path = save_checkpoint(root / f"{recipe}.pt", model=model, config=config, class_names=CLASSES)
            self[recipe] = path
            return path

    return Lazy(made)


def _assert_parity(checkpoint: Path, exported: ExportedModel, sizes: list[tuple[int, int]]) -> None:
    model = load_model(checkpoint)[0].model
    for seed, size in enumerate(sizes):
        image = example_image(size, seed=seed + 10)
        with torch.no_grad():
            (reference,), _ = model([image])
            (result,), _ = exported([image])
        report = compare_detections(reference, result, size)
        assert len(reference) >= 5, "the check needs detections"
        assert report.count == report.exported_count and report.labels_equal, report.line()
        assert report.max_box_diff <= 0.01 and report.max_score_diff <= 1e-4, report.line()
        if reference.masks is not None:
            assert result.masks is not None and result.masks.shape == reference.masks.shape
            assert report.mask_min_iou is not None and report.mask_min_iou > 0.99, report.line()
            assert report.mask_mean_abs_diff is not None and report.mask_mean_abs_diff < 1e-3, report.line()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("recipe", ["shapes_yolo", "shapes_ssd"])
def test_single_stage_any_size(
    checkpoints: dict[str, Path], tmp_path: Path, recipe: str, fmt: str
) -> None:
    out = export_model(checkpoints[recipe], tmp_path / f"model{SUFFIX[fmt]}", format=fmt, image_size=(100, 150),
                       check=False)
    assert out.metadata["dynamic_size"] is True
    exported = ExportedModel.load(out.path)
    _assert_parity(checkpoints[recipe], exported, [(100, 150), (157, 96)])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("recipe", ["shapes_faster_rcnn", "shapes_mask_rcnn"])
def test_two_stage_fixed_size(checkpoints: dict[str, Path], tmp_path: Path, recipe: str, fmt: str) -> None:
    out = export_model(checkpoints[recipe], tmp_path / f"model{SUFFIX[fmt]}", format=fmt, image_size=(96, 160),
                       check=False)
    assert out.metadata["dynamic_size"] is False and out.metadata["image_size"] == [96, 160]
    exported = ExportedModel.load(out.path)
    assert exported.has_masks == (recipe == "shapes_mask_rcnn")
    _assert_parity(checkpoints[recipe], exported, [(96, 160)])
    with pytest.raises(DataError, match=r"exported for 96x160 images.*--size 100 160"):
        exported([example_image((100, 160))])
    if fmt == "torchscript":  # the file alone refuses too (scripted size check)
        module = torch.jit.load(str(out.path))
        with pytest.raises(torch.jit.Error, match="exported for images of"):
            module(example_image((100, 160)))


def test_metadata_round_trip(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = checkpoints["shapes_ssd"]
    config = load_model(checkpoint)[0].config
    onnx_out = export_model(checkpoint, tmp_path / "m.onnx", format="onnx", check=False)
    ts_out = export_model(checkpoint, tmp_path / "m.ts", format="torchscript", check=False)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_out.path)).metadata_props}
    extra = {"detkit.json": ""}
    torch.jit.load(str(ts_out.path), _extra_files=extra)
    for meta in (props, json.loads(extra["detkit.json"]), ExportedModel.load(onnx_out.path).metadata):
        assert meta["class_names"] == CLASSES
        assert meta["model_type"] == "single_stage"
        assert meta["outputs"] == ["boxes", "scores", "labels"]
        assert meta["preprocess"] == config["model"]["preprocess"]
        assert meta["detkit_version"]
    assert ExportedModel.load(ts_out.path).class_names == CLASSES
    assert is_exported_file(onnx_out.path) and is_exported_file(ts_out.path) and not is_exported_file(checkpoint)


def test_cli_export_and_detect_with_the_onnx_file(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`detect --weights model.onnx` writes the detections of `detect --weights best.pt`."""
    from PIL import Image

    checkpoint = checkpoints["shapes_mask_rcnn"]
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(2):
        rgb = example_image((96, 128), seed=seed).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
        Image.fromarray(rgb).save(images / f"{seed}.png")
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", str(checkpoint), str(onnx_file), "--size", "96", "128"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {onnx_file}" in printed and "outputs: boxes, scores, labels, mask_probs" in printed
    assert "96 x 128 only" in printed and "parity with detkit, 96x128 image" in printed
    for weights, out in ((checkpoint, "pt"), (onnx_file, "onnx")):
        args = ["detect", "-q", "--weights", str(weights), "--out", str(tmp_path / out), "--no-draw"]
        assert main([*args, "--score-thresh", "0.3", str(images)]) == 0
    expected = json.loads((tmp_path / "pt" / "detections.json").read_text())
    got = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    assert len(expected) == len(got) > 0
    key = lambda r: (r["file_name"], r["category"], -r["score"], r["bbox"])  # noqa: E731
    for e, g in zip(sorted(expected, key=key), sorted(got, key=key), strict=True):
        assert (e["file_name"], e["category"]) == (g["file_name"], g["category"])
        assert e["score"] == pytest.approx(g["score"], abs=2e-5)
        assert e["bbox"] == pytest.approx(g["bbox"], abs=0.011)
        assert e["segmentation"]["size"] == g["segmentation"]["size"]


def test_errors(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    config = load_config("detkit:shapes_fast_rcnn.yaml")
    model = build_detector(config, load_plugins().registry, num_classes=len(CLASSES))
    fast_rcnn = save_checkpoint(tmp_path / "fast.pt", model=model, config=config, class_names=CLASSES)
    assert main(["export", "--format", "onnx", str(fast_rcnn), str(tmp_path / "f.onnx")]) == 2
    err = capsys.readouterr().err
    assert "selective_search" in err and "supported: single_stage" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f.onnx").exists()

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx fails
    with pytest.raises(ConfigError, match=r"pip install detkit\[export\]"):
        export_model(checkpoints["shapes_ssd"], tmp_path / "s.onnx", format="onnx")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="onnx, torchscript"):
        export_model(checkpoints["shapes_ssd"], tmp_path / "s.bin", format="tflite")
    with pytest.raises(DataError, match="not one detkit exported"):
        ExportedModel.load(_plain_onnx(tmp_path))


def _plain_onnx(tmp_path: Path) -> Path:
    """An ONNX file that detkit did not write."""
    path = tmp_path / "plain.onnx"
    torch.onnx.export(nn.Identity(), (torch.zeros(1),), str(path), dynamo=False)
    return path
