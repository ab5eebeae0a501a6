"""The detkit command: help, errors without tracebacks, train/eval/detect end to end."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkit.cli import main
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.engine import run
from detkit.engine.checkpoint import save_checkpoint
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins

CLASSES = ["circle", "square", "triangle", "ellipse"]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A randomly initialised shapes recipe that keeps every detection (score_thresh 0)."""
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", ["model.postprocess.score_thresh=0.0"])
    model = build_detector(config, load_plugins().registry, num_classes=len(CLASSES))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model=model, config=config, class_names=CLASSES)
    return path


@pytest.mark.parametrize(
    "command",
    ["plugins", "train", "eval", "detect", "proposals", "import-torchvision", "demo", "explain", "classify train",
     "data convert", "data check"],
)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "detkit.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("detkit ")


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["train", str(CONFIG_DIR / "shapes_faster_rcnn.yaml"), "train.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'lr'" in err and "Traceback" not in err
    assert main(["detect", "--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path), str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    assert main(["train", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err


def _write(path, array):
    assert cv2.imwrite(str(path), array)
    return path


def test_detect_survives_bad_and_unusual_images(small_checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write(folder / "color.jpg", rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    _write(folder / "gray.png", rng.integers(0, 255, (50, 40), dtype=np.uint8))
    _write(folder / "rgba.png", rng.integers(0, 255, (40, 50, 4), dtype=np.uint8))
    _write(folder / "deep.png", rng.integers(0, 65535, (30, 30, 3), dtype=np.uint16))
    _write(folder / "tiny.png", np.full((1, 1, 3), 200, dtype=np.uint8))
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "notes.png").write_text("plain text with an image extension")
    out = tmp_path / "out"
    code = main(["-q", "detect", "--weights", str(small_checkpoint), "--out", str(out),
                 "--score-thresh", "0", "--device", "cpu", str(folder)])
    captured = capsys.readouterr()
    assert code == 0
    assert "corrupt.jpg" in captured.err and "notes.png" in captured.err
    assert "Traceback" not in captured.err
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["color.png", "deep.png", "gray.png", "rgba.png", "tiny.png"]
    records = json.loads((out / "detections.json").read_text())
    assert {r["category"] for r in records} <= set(CLASSES)
    assert {"file_name", "category", "bbox", "score"} <= set(records[0])
    tiny = [r for r in records if r["file_name"].endswith("tiny.png")]
    assert all(r["bbox"][0] + r["bbox"][2] <= 1.0 + 1e-6 for r in tiny)
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    names = ["color.jpg", "deep.png", "gray.png", "rgba.png", "tiny.png"]  # one line per readable image
    assert sorted(Path(line["file_name"]).name for line in lines) == names
    assert records == [r for name in names for line in lines if line["file_name"].endswith(name)
                       for r in line["detections"]]
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_detect_input_matching_nothing_is_a_clear_error(small_checkpoint, tmp_path, capsys):
    assert main(["detect", "--weights", str(small_checkpoint), "--out", str(tmp_path / "o"),
                 str(tmp_path / "nothing*.jpg")]) == 2
    assert "nothing*.jpg" in capsys.readouterr().err


def test_train_then_eval_then_detect_on_shapes(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(run, "reuse_freed_memory", lambda: calls.append(1) or True)
    out = tmp_path / "run"
    data = tmp_path / "data"
    overrides = [
        f"data.train.root={data}", f"data.val.root={data}", "data.train.num_train=16", "data.train.num_val=8",
        "data.val.num_train=16", "data.val.num_val=8", "train.max_iters=3", "train.batch_size=4",
        "train.warmup_iters=1", f"output.dir={out}",
        "model.channels_last=true", "model.winograd=true", "model.neck.out_channels=128",  # the CPU speed-ups
    ]
    assert main(["-q", "train", str(CONFIG_DIR / "shapes_faster_rcnn.yaml"), *overrides, "--device", "cpu"]) == 0
    assert calls  # training keeps freed memory for the next step, as detect and eval do
    for name in ("best.pt", "last.pt", "metrics.json", "metrics.jsonl", "loss_curve.png", "config.yaml"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    expected = {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl", "per_class",
                "backend"}  # fmt: skip
    assert set(metrics["bbox"]) == expected and set(metrics["bbox"]["per_class"]) == set(CLASSES)
    assert metrics["bbox"]["backend"] == "faster"  # the default eval.backend

    eval_out = tmp_path / "eval"
    ann = data / "annotations" / "instances_val.json"
    assert main(["-q", "eval", "--weights", str(out / "best.pt"), "--data", str(ann), "--out", str(eval_out)]) == 0
    evaluated = json.loads((eval_out / "metrics.json").read_text())
    assert evaluated["bbox"].keys() == metrics["bbox"].keys() | {"errors", "by_size"}  # eval explains its AP
    assert {k: evaluated["bbox"][k] for k in ("AP", "AP50")} == {k: metrics["bbox"][k] for k in ("AP", "AP50")}

    assert main(["-q", "detect", "--weights", str(out / "best.pt"), "--out", str(tmp_path / "det"),
                 str(data / "val")]) == 0
    assert len(list((tmp_path / "det").glob("*.png"))) == 8


def test_plugins_lists_components(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "detkit_rpn" in out and "rpn (detkit_rpn)" in out and "resnet50 (detkit.components)" in out


def test_tool_scripts_end_a_user_error_with_one_line_and_status_2(tmp_path):
    """The scripts under tools/ report a bad input like the detkit command: no traceback."""
    root = Path(__file__).resolve().parents[1]
    missing = tmp_path / "no_such_run"
    done = subprocess.run(
        [sys.executable, str(root / "tools" / "compare_detectors.py"), str(missing)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.startswith("compare_detectors.py: error: ") and str(missing) in done.stderr
    done = subprocess.run(
        [sys.executable, str(root / "tools" / "bench_winograd.py"), "--tile", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and done.stderr == "bench_winograd.py: error: --tile must be one of [2, 4, 6], got 3\n"
