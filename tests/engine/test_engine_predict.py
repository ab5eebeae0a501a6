"""detkit detect in batches: the same detections as one image at a time, streamed to detections.jsonl,
drawn in the background, resumable after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkit.cli import main
from detkit.config import load_config
from detkit.data.images import read_image
from detkit.data.shapes import render_shapes_image
from detkit.detectors import build_detector
from detkit.engine.checkpoint import save_checkpoint
from detkit.engine.predict import (
    JSONL_NAME,
    Frame,
    ImageFiles,
    batch_by_orientation,
    detect_files,
    run_batch,
)
from detkit.errors import ConfigError
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins

CLASSES = ["circle", "square", "triangle", "ellipse"]
REPO = Path(__file__).resolve().parents[2]


def _model(score_thresh: float = 0.0) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", [f"model.postprocess.score_thresh={score_thresh}"])
    return build_detector(config, load_plugins().registry, num_classes=len(CLASSES)).eval(), config


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """A randomly initialised shapes Faster R-CNN that keeps every detection."""
    return _model()[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    net, config = _model()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model=net, config=config, class_names=CLASSES)
    return path


def _shapes(folder: Path, n: int, *, size: int = 128) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image, _ = render_shapes_image(np.random.default_rng([7, i]), size)
        path = folder / f"{i:03d}.png"
        assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- batches


def test_a_batch_gives_the_detections_of_one_image_at_a_time(model, tmp_path):
    images = [torch.from_numpy(read_image(p)) for p in _shapes(tmp_path, 6)]
    together = run_batch(model, images, torch.device("cpu"), "fp32")
    for image, batched in zip(images, together):
        (alone,) = run_batch(model, [image], torch.device("cpu"), "fp32")
        assert len(alone) == len(batched) > 0
        torch.testing.assert_close(batched.boxes, alone.boxes, atol=1e-4, rtol=0)
        torch.testing.assert_close(batched.scores, alone.scores, atol=1e-4, rtol=0)
        assert torch.equal(batched.labels, alone.labels)


def test_detect_files_in_batches_writes_what_batch_one_writes(model, tmp_path):
    paths = _shapes(tmp_path / "in", 7)
    runs = {}
    for batch_size, workers in ((1, 0), (4, 2)):
        out = tmp_path / f"b{batch_size}"
        report = detect_files(model, paths, out, class_names=CLASSES, score_thresh=0.2, progress=False,
                              batch_size=batch_size, workers=workers)
        assert report.num_images == 7 and not report.failed and len(report.written) == 7
        runs[batch_size] = json.loads((out / "detections.json").read_text())
    one, four = runs[1], runs[4]
    assert [r["file_name"] for r in four] == [r["file_name"] for r in one]  # the inputs' order
    assert [r["category"] for r in four] == [r["category"] for r in one]
    # detections.json rounds boxes to 0.01 px and scores to 1e-5
    np.testing.assert_allclose([r["bbox"] for r in four], [r["bbox"] for r in one], atol=0.011)
    np.testing.assert_allclose([r["score"] for r in four], [r["score"] for r in one], atol=2e-5)


def test_batches_keep_portrait_and_landscape_apart():
    def frame(i: int, h: int, w: int) -> Frame:
        return Frame(i, torch.zeros((h, w, 3), dtype=torch.uint8))

    frames = [frame(0, 40, 60), frame(1, 60, 40), frame(2, 40, 60), Frame(3, None, "bad"), frame(4, 60, 40),
              frame(5, 50, 60)]
    batches = [[f.source_index for f in b] for b in batch_by_orientation(iter(frames), 2)]
    assert batches == [[0, 2], [3], [1, 4], [5]]


# ----------------------------------------------------------------------------- detections.jsonl and .json


def test_jsonl_has_a_line_per_image_and_json_keeps_its_schema(checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    _shapes(folder, 5)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    assert main(["-q", "detect", "--weights", str(checkpoint), "--out", str(out), "--device", "cpu",
                 "--batch-size", "2", "--workers", "2", "--score-thresh", "0.2", str(folder)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("corrupt.png") == 1 and "Traceback" not in captured.err  # reported once
    assert "5 images (1 skipped)" in captured.out
    lines = _lines(out / JSONL_NAME)
    assert sorted(line["file_name"] for line in lines) == [str(folder / f"{i:03d}.png") for i in range(5)]
    assert all(set(line) == {"file_name", "score_thresh", "best_score", "detections"} for line in lines)
    records = json.loads((out / "detections.json").read_text())
    by_file = {line["file_name"]: line["detections"] for line in lines}
    assert records == [r for i in range(5) for r in by_file[str(folder / f"{i:03d}.png")]]
    assert records and all(set(r) == {"file_name", "category", "bbox", "score"} for r in records)
    assert all(r["category"] in CLASSES and len(r["bbox"]) == 4 and r["score"] >= 0.2 for r in records)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:03d}.png" for i in range(5)]
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_without_resume_the_jsonl_starts_afresh(model, tmp_path):
    paths = _shapes(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / JSONL_NAME).write_text('{"file_name": "old.png", "detections": []}\n')
    detect_files(model, paths, out, class_names=CLASSES, progress=False, workers=0, draw=False)
    assert [line["file_name"] for line in _lines(out / JSONL_NAME)] == [str(p) for p in paths]


def test_resume_skips_the_images_done_and_a_cut_last_line(model, tmp_path, caplog):
    paths = _shapes(tmp_path / "in", 4)
    out = tmp_path / "out"
    options = {"class_names": CLASSES, "score_thresh": 0.0, "progress": False, "workers": 0, "draw": False}
    detect_files(model, paths[:2], out, **options)
    complete = (out / JSONL_NAME).read_text()
    with open(out / JSONL_NAME, "a") as f:
        f.write('{"file_name": "' + str(paths[2]) + '", "detec')  # killed while writing image 2
    report = detect_files(model, paths, out, resume=True, **options)
    assert "cut short" in caplog.text
    assert report.resumed == 2 and report.num_images == 4
    text = (out / JSONL_NAME).read_text()
    assert text.startswith(complete) and len(text.splitlines()) == 4  # the cut line is gone, 2 new lines
    records = json.loads((out / "detections.json").read_text())
    assert list(dict.fromkeys(r["file_name"] for r in records)) == [str(p) for p in paths]


def test_resume_refuses_another_score_threshold(model, tmp_path):
    paths = _shapes(tmp_path / "in", 1)
    detect_files(model, paths, tmp_path / "out", class_names=CLASSES, progress=False, workers=0, draw=False)
    with pytest.raises(ConfigError, match=r"score threshold 0\.5, this run.s is 0\.3"):
        detect_files(model, paths, tmp_path / "out", class_names=CLASSES, score_thresh=0.3, progress=False,
                     workers=0, draw=False, resume=True)


def test_a_drawing_error_loses_one_png_only(model, tmp_path, monkeypatch):
    import detkit.engine.predict as predict

    paths = _shapes(tmp_path / "in", 3)
    real = predict.save_image

    def save_image(path: Path, image: np.ndarray) -> Path:
        if path.name == "001.png":
            raise OSError("No space left on device")
        return real(path, image)

    monkeypatch.setattr(predict, "save_image", save_image)
    report = detect_files(model, ImageFiles(paths), tmp_path / "out", class_names=CLASSES, progress=False,
                          workers=0, batch_size=2)
    assert [p.name for p in report.written] == ["000.png", "002.png"]
    assert report.not_drawn == [(paths[1], f"cannot draw '{paths[1]}': No space left on device")]
    assert report.num_images == 3 and len(_lines(tmp_path / "out" / JSONL_NAME)) == 3


def test_bad_batch_size_and_workers_are_refused_before_any_work(checkpoint, tmp_path, capsys):
    for flag, value, message in (("--batch-size", "0", "--batch-size must be at least 1, got 0"),
                                 ("--workers", "-1", "--workers must be at least 0, got -1")):
        assert main(["detect", "--weights", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o"),
                     flag, value, str(tmp_path / "nothing")]) == 2
        assert capsys.readouterr().err == f"detkit: error: {message}\n"


# ----------------------------------------------------------------------------- kill -9, then --resume


def _detect_command(checkpoint: Path, out: Path, folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "detkit", "-q", "detect", "--weights", str(checkpoint), "--out", str(out),
            "--device", "cpu", "--batch-size", "2", "--score-thresh", "0", *extra, str(folder)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
            "OMP_NUM_THREADS": "1"}


def test_a_killed_run_resumes_without_detecting_again(checkpoint, tmp_path):
    folder = tmp_path / "in"
    paths = _shapes(folder, 40)
    out = tmp_path / "out"
    jsonl = out / JSONL_NAME
    proc = subprocess.Popen(_detect_command(checkpoint, out, folder), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # its reading workers too
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.is_file() and jsonl.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.communicate()
    assert not (out / "detections.json").exists()

    text = jsonl.read_text()
    *complete, last = text.split("\n")
    before = [json.loads(line) for line in complete]  # every finished line parses; `last` may be cut
    assert len(before) >= 2 and len(before) < 40
    if last:
        with pytest.raises(json.JSONDecodeError):
            json.loads(last)
    drawn = {line["file_name"] for line in before if (out / f"{Path(line['file_name']).stem}.png").is_file()}

    done = subprocess.run(_detect_command(checkpoint, out, folder, "--resume"), env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"40 images ({len(drawn)} already done)" in done.stdout
    after = _lines(jsonl)
    assert after[: len(before)] == before
    assert sorted(line["file_name"] for line in after[len(before):]) == sorted(
        str(p) for p in paths if str(p) not in drawn
    )  # the images already done (detected and drawn) were not run again
    records = json.loads((out / "detections.json").read_text())
    latest = {line["file_name"]: line["detections"] for line in after}
    assert records == [r for p in paths for r in latest[str(p)]]  # every image once, in order
    assert {r["file_name"] for r in records} == {str(p) for p in paths}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in paths)
