"""detkit detect on videos and cameras: an annotated MP4 and one JSON line per processed frame.

Oracle: the model as ``detect`` loads it, run on the same frames read with
``cv2.VideoCapture`` one at a time; the JSON lines must hold exactly its detections.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _checkpoints import SHAPES_CLASSES, random_shapes_checkpoint

from detkit.cli import main
from detkit.engine import video as video_module
from detkit.engine.build import load_model
from detkit.engine.predict import image_line, run_batch
from detkit.engine.video import (
    RateMeter,
    VideoFrames,
    VideoOutput,
    detect_video,
    output_names,
    split_inputs,
)
from detkit.errors import ConfigError
from detkit.structures import Detections

CLASSES = SHAPES_CLASSES
FRAMES, FPS, SIZE = 24, 12.0, 64


def _write_clip(path: Path, frames: int = FRAMES) -> Path:
    """A square moving right across a grey background, ``frames`` frames of SIZE x SIZE at FPS."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (SIZE, SIZE))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((SIZE, SIZE, 3), 60, np.uint8)
        frame[20:44, 2 * i : 2 * i + 20] = (40, 40, 230)  # BGR
        cv2.circle(frame, (48, 12), 8, (30, 200, 30), -1)
        writer.write(frame)
    writer.release()
    return path


def _read_all(path: Path) -> list[np.ndarray]:
    """Every frame of a video, RGB, as VideoCapture decodes it."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised shapes Faster R-CNN that keeps every detection (score_thresh 0)."""
    return random_shapes_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> torch.nn.Module:
    """The checkpoint's model as ``detect`` loads it (frozen norms folded)."""
    loaded, _ = load_model(checkpoint)
    return loaded.model.eval()


@pytest.fixture(scope="module")
def oracle(clip: Path, model: torch.nn.Module) -> list[list[dict]]:
    """Per frame of the clip: the detections records of the model run on that frame alone."""
    frames = _read_all(clip)
    assert len(frames) == FRAMES
    out = []
    for i, frame in enumerate(frames):
        (dets,) = run_batch(model, [torch.from_numpy(frame)], torch.device("cpu"), "fp32")
        line = image_line(dets, file_name=f"{clip}#{i:06d}", class_names=CLASSES, score_thresh=0.0)
        out.append(line["detections"])
    return out


def _detect(checkpoint: Path, out: Path, *args: str) -> int:
    return main(["-q", "detect", "--weights", str(checkpoint), "--out", str(out), "--device", "cpu",
                 "--score-thresh", "0", *args])


def _mp4_frames(path: Path) -> tuple[int, float, tuple[int, int]]:
    """Frames decoded from an MP4 (counted, not the header's count), its frame rate and size."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    fps = capture.get(cv2.CAP_PROP_FPS)
    count, size = 0, (0, 0)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, size = count + 1, frame.shape[:2]
    capture.release()
    return count, fps, size


# ----------------------------------------------------------------------------- the outputs


def test_every_frame_is_detected_drawn_and_written(checkpoint, clip, oracle, tmp_path, capsys):
    out = tmp_path / "out"
    assert _detect(checkpoint, out, str(clip)) == 0
    summary = capsys.readouterr().out
    assert f"{clip}: {FRAMES} frames" in summary and "frames/s" in summary
    count, fps, size = _mp4_frames(out / "clip.mp4")
    assert count == FRAMES and fps == pytest.approx(FPS)
    assert size == (384, 384)  # enlarged to DRAW_MIN_SIZE, as detect's PNGs are
    lines = _lines(out / "clip.jsonl")
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["time_s"] for line in lines] == pytest.approx([i / FPS for i in range(FRAMES)], abs=1e-3)
    assert [line["file_name"] for line in lines] == [f"{clip}#{i:06d}" for i in range(FRAMES)]
    assert [line["detections"] for line in lines] == oracle
    assert all(oracle)  # score_thresh 0: the comparison is not between empty lists
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip.mp4"]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "frames"),
    [
        (["--stride", "5"], [0, 5, 10, 15, 20]),
        (["--max-frames", "4", "--batch-size", "3"], [0, 1, 2, 3]),
        (["--stride", "7", "--max-frames", "3", "--no-draw"], [0, 7, 14]),
    ],
)
def test_stride_and_max_frames_choose_the_frames(checkpoint, clip, oracle, tmp_path, args, frames):
    out = tmp_path / "out"
    assert _detect(checkpoint, out, str(clip), *args) == 0
    lines = _lines(out / "clip.jsonl")
    assert [line["frame"] for line in lines] == frames
    stride = int(args[args.index("--stride") + 1]) if "--stride" in args else 1
    for line, i in zip(lines, frames):
        if "--batch-size" in args:  # a batch may round differently from one frame alone
            assert [r["category"] for r in line["detections"]] == [r["category"] for r in oracle[i]]
            np.testing.assert_allclose([r["bbox"] for r in line["detections"]], [r["bbox"] for r in oracle[i]],
                                       atol=0.02)
            np.testing.assert_allclose([r["score"] for r in line["detections"]],
                                       [r["score"] for r in oracle[i]], atol=1e-4)
        else:
            assert line["detections"] == oracle[i]
    if "--no-draw" in args:
        assert not (out / "clip.mp4").exists()
    else:
        count, fps, _ = _mp4_frames(out / "clip.mp4")
        assert count == len(frames) and fps == pytest.approx(FPS / stride)


def test_images_and_videos_in_one_call_get_their_own_outputs(checkpoint, clip, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "still.png"), np.full((48, 64, 3), 90, np.uint8))
    _write_clip(folder / "detections.mp4", frames=3)  # a stem that detect's own files use
    out = tmp_path / "out"
    assert _detect(checkpoint, out, str(folder), str(clip), "--max-frames", "2") == 0
    printed = capsys.readouterr().out
    assert "1 images" in printed and f"{clip}: 2 frames" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "clip.jsonl", "clip.mp4", "detections.json", "detections.jsonl", "detections_1.jsonl", "detections_1.mp4",
        "still.png",
    ]
    assert [line["file_name"] for line in _lines(out / "detections.jsonl")] == [str(folder / "still.png")]
    assert [line["frame"] for line in _lines(out / "detections_1.jsonl")] == [0, 1]


def test_split_inputs_finds_videos_in_files_folders_and_globs(tmp_path):
    (tmp_path / "a.MP4").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "only_videos").mkdir()
    (tmp_path / "only_videos" / "c.avi").write_bytes(b"")
    videos, images = split_inputs([
        str(tmp_path / "missing.mkv"), str(tmp_path), str(tmp_path / "only_videos"), str(tmp_path / "*.MP4"),
        str(tmp_path / "b.png"),
    ])
    assert videos == [tmp_path / "missing.mkv", tmp_path / "a.MP4", tmp_path / "only_videos" / "c.avi"]
    assert images == [str(tmp_path), str(tmp_path / "b.png")]  # the folder also holds an image


def test_output_names_are_unique_and_avoid_detect_files(tmp_path):
    class Source:
        def __init__(self, stem: str) -> None:
            self.stem = stem

    names = output_names([Source(s) for s in ("clip", "clip", "detections", "camera0")])  # type: ignore[misc]
    assert names == ["clip", "clip_1", "detections_1", "camera0"]


def test_a_camera_runs_until_max_frames_or_ctrl_c(checkpoint, clip, tmp_path, monkeypatch, capsys):
    """The clip stands in for camera 0: the same capture calls, a camera's names, times and ending."""
    opened: list[object] = []

    def fake_camera(source: str | int) -> cv2.VideoCapture:
        opened.append(source)
        return cv2.VideoCapture(str(clip))

    monkeypatch.setattr(video_module, "_open_capture", fake_camera)
    out = tmp_path / "max"
    assert _detect(checkpoint, out, "--camera", "0", "--max-frames", "5") == 0
    assert opened == [0]
    lines = _lines(out / "camera0.jsonl")
    assert [line["frame"] for line in lines] == list(range(5))
    assert [line["file_name"] for line in lines] == [f"camera 0#{i:06d}" for i in range(5)]
    times = [line["time_s"] for line in lines]
    assert times[0] == 0.0 and times == sorted(times)  # seconds since the first frame was read
    assert _mp4_frames(out / "camera0.mp4")[0] == 5
    assert "camera 0: 5 frames" in capsys.readouterr().out

    calls = {"n": 0}

    def interrupted(*args: object, **kwargs: object) -> list:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return run_batch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(video_module, "run_batch", interrupted)
    out = tmp_path / "ctrl_c"
    assert _detect(checkpoint, out, "--camera", "0") == 0  # Ctrl-C is how a camera run ends
    assert "camera 0: 2 frames (stopped by Ctrl-C)" in capsys.readouterr().out
    assert len(_lines(out / "camera0.jsonl")) == 2 and _mp4_frames(out / "camera0.mp4")[0] == 2


# ----------------------------------------------------------------------------- stopping


def test_ctrl_c_closes_the_mp4_and_the_jsonl(model, clip, tmp_path, monkeypatch):
    calls = {"n": 0}

    def interrupted(*args: object, **kwargs: object) -> list:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return run_batch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(video_module, "run_batch", interrupted)
    with VideoFrames(clip) as source:
        report = detect_video(model, source, tmp_path, class_names=CLASSES, score_thresh=0.0, progress=False)
    assert report.stopped and report.frames == 3
    assert report.video_path == tmp_path / "clip.mp4"
    assert _mp4_frames(tmp_path / "clip.mp4")[0] == 3  # a complete file under its final name
    assert [line["frame"] for line in _lines(tmp_path / "clip.jsonl")] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.jsonl", "clip.mp4"]


def test_ctrl_c_on_a_video_file_exits_130(checkpoint, clip, tmp_path, monkeypatch, capsys):
    def interrupted(*args: object, **kwargs: object) -> list:
        raise KeyboardInterrupt

    monkeypatch.setattr(video_module, "run_batch", interrupted)
    assert _detect(checkpoint, tmp_path / "out", str(clip)) == 130
    assert "0 frames (stopped by Ctrl-C)" in capsys.readouterr().out


def test_an_error_leaves_no_mp4(model, clip, tmp_path, monkeypatch):
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> list:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory")
        return run_batch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(video_module, "run_batch", failing)
    with VideoFrames(clip) as source, pytest.raises(RuntimeError, match="out of memory"):
        detect_video(model, source, tmp_path, class_names=CLASSES, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.jsonl"]  # the finished frames' lines stay
    assert len(_lines(tmp_path / "clip.jsonl")) == 2


def test_video_output_renames_only_when_finished(tmp_path):
    target = tmp_path / "v.mp4"
    writer = VideoOutput(target, fps=5.0, class_names=CLASSES)
    empty = _empty_detections()
    for _ in range(3):
        writer.submit(np.zeros((400, 400, 3), np.uint8), empty, 2.5)
    writer.flush()  # every frame written, the file not closed: what a killed run leaves
    assert not target.exists() and writer.tmp_path.exists() and writer.tmp_path.name.startswith(".")
    assert writer.finish() == target and not writer.tmp_path.exists()
    assert _mp4_frames(target)[:2] == (3, pytest.approx(5.0))


def _empty_detections() -> Detections:
    return Detections(
        boxes=torch.zeros((0, 4)), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64)
    )


# ----------------------------------------------------------------------------- errors


def test_a_text_file_named_mp4_is_a_one_line_error(checkpoint, tmp_path, capsys):
    fake = tmp_path / "x.mp4"
    fake.write_text("not a video\n")
    assert _detect(checkpoint, tmp_path / "out", str(fake)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"'{fake}'" in err and "not a video" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_missing_camera_is_a_one_line_error_without_waiting(checkpoint, tmp_path, capsys):
    if Path("/dev/video99").exists():
        pytest.skip("this machine has a /dev/video99")
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(_detect(checkpoint, tmp_path / "out", "--camera", "99")))
    thread.start()
    thread.join(timeout=60)  # a capture that waits for a device would hang here
    assert not thread.is_alive() and status == [2]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "camera 99" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stride", "0", "CLIP"], "--stride must be at least 1"),
        (["--max-frames", "-1", "CLIP"], "--max-frames must be at least 1"),
        (["--camera", "0", "CLIP"], "give no INPUT with it"),
        ([], "or --camera INDEX"),
        (["--stride", "2", "IMAGE"], "the inputs hold no video"),
    ],
)
def test_bad_stream_options_are_refused(checkpoint, clip, tmp_path, capsys, args, message):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    args = [str(clip) if a == "CLIP" else str(image) if a == "IMAGE" else a for a in args]
    assert _detect(checkpoint, tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err


def test_the_mp4_may_not_replace_its_source(model, tmp_path):
    clip = _write_clip(tmp_path / "clip.mp4", frames=2)
    with VideoFrames(clip) as source, pytest.raises(ConfigError, match="replace its source"):
        detect_video(model, source, tmp_path, class_names=CLASSES, progress=False)


# ----------------------------------------------------------------------------- the rate


def test_rate_is_measured_over_the_last_frames():
    now = [100.0]
    meter = RateMeter(window=2, clock=lambda: now[0])
    now[0] = 101.0
    assert meter.tick(2) == pytest.approx(2.0)  # 2 frames in 1 s
    now[0] = 101.5
    assert meter.tick(1) == pytest.approx(3 / 1.5)
    now[0] = 101.75
    assert meter.tick(1) == pytest.approx(2 / 0.75)  # the last two ticks: from 101.0 to 101.75
    assert meter.overall == pytest.approx(4 / 1.75) and meter.seconds == pytest.approx(1.75)
