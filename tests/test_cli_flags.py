"""The detkit command's flags and messages: --device checked first and named, -q/--traceback anywhere,
a skipped image reported once, empty detections explained."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detkit.cli import build_parser, main
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.device import command_device, resolve_device
from detkit.engine.checkpoint import save_checkpoint
from detkit.errors import ConfigError
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins

CLASSES = ["circle", "square", "triangle", "ellipse"]
SHAPES = str(CONFIG_DIR / "shapes_faster_rcnn.yaml")
LENET = str(CONFIG_DIR / "classify_lenet_digits.yaml")


def _checkpoint(path, overrides=()):
    torch.manual_seed(0)
    config = load_config(SHAPES, ["model.postprocess.score_thresh=0.0", *overrides])
    model = build_detector(config, load_plugins().registry, num_classes=len(CLASSES))
    return save_checkpoint(path, model=model, config=config, class_names=CLASSES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised shapes detector that keeps every detection."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        assert cv2.imwrite(str(folder / name), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    return folder


# ----------------------------------------------------------------------------- devices


def test_resolve_device_names_its_source(no_cuda):
    with pytest.raises(ConfigError, match=r"^--device is 'cuda' but no CUDA device is available; use --device cpu$"):
        resolve_device("cuda", source="--device")
    with pytest.raises(ConfigError, match=r"^train\.device is 'cuda:1' .*; use train\.device=cpu$"):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match=r"^train\.device of checkpoint 'x\.pt' is 'cuda' .*; use --device cpu$"):
        command_device(None, "cuda", source="train.device of checkpoint 'x.pt'")
    with pytest.raises(ConfigError, match=r"^--device: unknown device 'gpu'"):
        command_device("gpu", "cpu")
    assert command_device("cpu", "cuda") == torch.device("cpu")  # the flag wins over the config
    assert resolve_device("auto") == torch.device("cpu")


def _device_commands(tmp, checkpoint):
    missing = str(tmp / "missing.pt")
    return {
        "train": ["train", SHAPES, f"output.dir={tmp / 'train'}"],
        "demo": ["demo", "--out", str(tmp / "demo")],
        "eval": ["eval", "--weights", missing, "--data", str(tmp / "missing.json")],
        "detect": ["detect", "--weights", missing, "--out", str(tmp / "det"), str(tmp / "nothing")],
        "proposals": ["proposals", "--data", str(tmp / "missing.json"), "--proposer", f"rpn:weights={missing}"],
        "classify train": ["classify", "train", LENET, "--out", str(tmp / "cls")],
        "classify eval": ["classify", "eval", "--weights", missing],
        "explain": ["explain", "--weights", missing, "--out", str(tmp / "explain")],
    }


@pytest.mark.parametrize(
    "command", ["train", "demo", "eval", "detect", "proposals", "classify train", "classify eval", "explain"]
)
def test_device_flag_is_checked_before_any_work(command, tmp_path, checkpoint, no_cuda, capsys):
    """Inputs that do not exist: the device error comes first, so nothing was read or generated."""
    argv = _device_commands(tmp_path, checkpoint)[command]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == "detkit: error: --device is 'cuda' but no CUDA device is available; use --device cpu\n"
    assert not any(p.name in ("demo", "train", "cls") for p in tmp_path.iterdir())  # no data, no outputs


def test_config_device_is_named_as_the_config_key(tmp_path, no_cuda, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "train.device=cuda"]) == 2
    err = capsys.readouterr().err
    assert "train.device is 'cuda'" in err and "use train.device=cpu" in err and "--device" not in err
    assert not out.exists()  # checked before the shapes data is generated


def test_checkpoint_device_points_at_the_flag(tmp_path, images, no_cuda, capsys):
    gpu_trained = _checkpoint(tmp_path / "gpu.pt", ["train.device=cuda"])
    assert main(["detect", "--weights", str(gpu_trained), "--out", str(tmp_path / "o"), str(images)]) == 2
    err = capsys.readouterr().err
    assert f"train.device of checkpoint '{gpu_trained}' is 'cuda'" in err and "use --device cpu" in err
    assert main(["-q", "detect", "--weights", str(gpu_trained), "--out", str(tmp_path / "o"), str(images),
                 "--device", "cpu"]) == 0


# ----------------------------------------------------------------------------- global flags


def test_quiet_and_traceback_go_before_or_after_the_command(checkpoint, images, tmp_path, capsys):
    for argv in (["-q", "detect"], ["detect", "-q"]):
        out = tmp_path / "-".join(argv)
        assert main([*argv, "--weights", str(checkpoint), "--out", str(out), str(images)]) == 0
        assert "detect:" not in capsys.readouterr().err  # no progress bar
    assert main(["plugins", "--quiet"]) == 0
    capsys.readouterr()
    args = build_parser().parse_args(["classify", "compare-linear", "-q", "--traceback"])  # nested commands too
    assert args.quiet and args.traceback
    args = build_parser().parse_args(["-q", "classify", "eval", "--weights", "w.pt"])
    assert args.quiet and not args.traceback  # a flag before the command is not reset by the command's default


@pytest.mark.parametrize("how", ["before", "after", "env"])
def test_traceback_shows_user_errors_in_full(how, monkeypatch, capsys):
    argv = ["train", SHAPES, "train.lrr=0.1"]
    if how == "before":
        argv = ["--traceback", *argv]
    elif how == "after":
        argv = [*argv, "--traceback"]
    else:
        monkeypatch.setenv("DETKIT_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "ConfigError" in err and "did you mean" in err


def test_without_traceback_user_errors_stay_one_line(monkeypatch, capsys):
    monkeypatch.setenv("DETKIT_DEBUG", "0")
    assert main(["train", SHAPES, "train.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("detkit: error: ") and "Traceback" not in err


# ----------------------------------------------------------------------------- detect's messages


def test_unreadable_image_is_reported_once_without_opencv_lines(checkpoint, images, tmp_path, capfd):
    _, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    (images / "cut.png").write_bytes(png.tobytes()[:20])
    _, bmp = cv2.imencode(".bmp", np.zeros((8, 8, 3), np.uint8))
    (images / "cut.bmp").write_bytes(bmp.tobytes()[:20])
    code = main(["-q", "detect", "--weights", str(checkpoint), "--out", str(tmp_path / "o"), str(images)])
    captured = capfd.readouterr()  # file descriptors: OpenCV logs below Python
    assert code == 0
    text = captured.out + captured.err
    assert text.count("cut.png") == 1 and text.count("cut.bmp") == 1, text
    assert "[ERROR" not in text and "WARN:" not in text, text
    assert "2 images (2 skipped)" in captured.out


def test_images_without_detections_are_explained(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["-q", "detect", "--weights", str(checkpoint), "--out", str(out), str(images),
                 "--score-thresh", "1.01"]) == 0
    text = capsys.readouterr().out
    assert "2 of 2 images had no detection at or above --score-thresh 1.01; the best score among them was 0." in text
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    assert main(["-q", "detect", "--weights", str(checkpoint), "--out", str(out), str(images),
                 "--score-thresh", "0"]) == 0
    assert "had no detection" not in capsys.readouterr().out
