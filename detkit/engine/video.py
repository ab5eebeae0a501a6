"""Run a detector over a video file or a camera; write an annotated MP4 and one JSON line per frame.

A video is a stream: its frames come in order, and seeking to a frame by index is
slow and, with many codecs, not exact. So a video is not a
:class:`~detkit.engine.predict.FrameSource` (frames by index, decoded by worker
processes) but a :class:`VideoFrames`, read from start to end. :func:`detect_video`
runs in three overlapping parts, as :func:`~detkit.engine.predict.detect_files` does:

* **reading**: one background thread decodes the frames with OpenCV's
  ``cv2.VideoCapture`` (every ``stride``-th frame, at most ``max_frames`` of them) and
  keeps a few of them ready in a bounded queue;
* **the model**: frames are gathered into batches of ``batch_size`` (a video's frames
  share one size, so nothing is padded) and run by :func:`~detkit.engine.predict.run_batch`;
* **writing**: a background thread draws each frame's detections
  (:func:`detkit.viz.draw.draw_detections`) and the processing rate, and appends the
  frame to the MP4 (``cv2.VideoWriter``, fourcc ``mp4v``), in order, with a bounded
  number of frames waiting.

Outputs, for a video ``clip.mp4`` (``camera0`` for camera 0):

* ``OUT/clip.jsonl``: one line per processed frame, as soon as its batch is done
  (flushed after every batch): ``{"frame", "time_s", "file_name", "score_thresh",
  "best_score", "detections"}``, where ``frame`` is the index in the source (every
  frame counts, also the ones ``stride`` skips), ``time_s`` the frame's timestamp in
  the file (seconds since the first frame read, for a camera), and the rest the image
  line of ``detections.jsonl`` (:func:`~detkit.engine.predict.image_line`) with the
  ``file_name`` ``"clip.mp4#000012"``;
* ``OUT/clip.mp4``: the processed frames with their detections, at the source's frame
  rate divided by ``stride``, drawn at least :data:`~detkit.engine.predict.DRAW_MIN_SIZE`
  pixels on the shorter side (as detect's PNGs), the processing rate (frames per
  second over the last :data:`RATE_WINDOW` batches) in the lower left corner. It is
  written as ``OUT/.clip.incomplete.mp4`` and renamed when complete, so a killed run
  leaves no half file under the final name (the next run replaces the temporary one).

Ctrl-C (:class:`KeyboardInterrupt`) stops the reading, finishes the frames under way,
closes the MP4 under its final name and the JSONL, and returns a report with
``stopped`` set: it is how a camera run ends when ``max_frames`` is not given.

A camera is read as fast as the model takes its frames; when the model is slower
than the camera, the frames wait in the driver's few buffers (so the detections lag
the scene by a few frames) and the camera's other frames are dropped, and its MP4,
written at the camera's rate, plays faster than real time.
"""

from __future__ import annotations

import glob
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch import nn

from detkit.data.images import IMAGE_EXTENSIONS, _opencv_silent
from detkit.engine.predict import (
    DRAW_MIN_SIZE,
    JSON_NAME,
    JSONL_NAME,
    JsonlWriter,
    default_batch_size,
    image_line,
    run_batch,
)
from detkit.errors import ConfigError, DataError
from detkit.progress import progress as progress_bar
from detkit.structures import Detections
from detkit.viz.draw import draw_detections

#: File name extensions (lower case) that ``detkit detect`` reads as videos.
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts",
)
#: The codec of the annotated MP4 (MPEG-4 part 2: every OpenCV build with FFmpeg writes it).
FOURCC = "mp4v"
#: Frames per second of the MP4 when the source does not tell its rate (a camera may not).
DEFAULT_FPS = 30.0
#: The rate drawn on a frame and shown live is measured over this many batches.
RATE_WINDOW = 30
#: Frames of a source kept decoded ahead of the model, per frame of a batch.
AHEAD_PER_BATCH = 2

_GLOB_CHARS = frozenset("*?[")


# ----------------------------------------------------------------------------- finding videos


def is_video_path(path: str | Path) -> bool:
    """Whether ``path`` names a video by its extension (:data:`VIDEO_EXTENSIONS`, any case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def split_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Split ``detkit detect``'s inputs into videos and image inputs.

    A file (or a path that does not exist) with a video extension is a video; a folder
    or glob contributes its video files (sorted) and stays an image input when it also
    holds images or holds no video (so that :func:`~detkit.data.images.find_images`
    reports it). Everything else is an image input, as given.

    Returns:
        ``(videos, image_inputs)``, each in the order given, videos without duplicates.
    """
    videos: list[Path] = []
    images: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() or (not path.exists() and any(ch in str(item) for ch in _GLOB_CHARS)):
            found = sorted(path.iterdir() if path.is_dir() else (Path(m) for m in glob.glob(str(item), recursive=True)))
            found_videos = [p for p in found if p.is_file() and is_video_path(p)]
            videos.extend(found_videos)
            if not found_videos or any(p.suffix.lower() in IMAGE_EXTENSIONS for p in found):
                images.append(str(item))
        elif is_video_path(path):
            videos.append(path)
        else:
            images.append(str(item))
    return list(dict.fromkeys(videos)), images


def output_names(sources: Sequence[VideoFrames]) -> list[str]:
    """Each source's output stem, unique: ``clip``, ``clip_1``, ... (never ``detections``, detect's own files)."""
    used = {Path(JSONL_NAME).stem, Path(JSON_NAME).stem}
    names = []
    for source in sources:
        name, k = source.stem, 1
        while name in used:
            name, k = f"{source.stem}_{k}", k + 1
        used.add(name)
        names.append(name)
    return names


# ----------------------------------------------------------------------------- the source


class VideoFrame(NamedTuple):
    """One decoded frame: its index in the source, its time and its pixels."""

    frame_index: int  # in the source, counting the frames that stride skips
    time_s: float
    image: np.ndarray  # (H, W, 3) uint8 RGB


class VideoFrames:
    """A video file, or a camera, as a stream of RGB frames.

    The capture is opened at construction, so a file that is not a video fails before
    any work; :meth:`close` (or leaving a ``with`` block) releases it.

    Args:
        path: the video file (its records are named ``"clip.mp4#000012"``, its outputs ``clip``).
        camera: instead of ``path``, the index of a camera (``/dev/video<camera>`` on Linux;
            records ``"camera 0#000012"``, outputs ``camera0``).

    Raises:
        DataError: OpenCV cannot open the file as a video (missing, not a video, or a
            codec its FFmpeg lacks), or the camera (none with that index, in use); the
            message names it.
    """

    def __init__(self, path: str | Path | None = None, *, camera: int | None = None) -> None:
        if (path is None) == (camera is None):
            raise TypeError("VideoFrames takes a video file or a camera index, one of them")
        self.path = None if path is None else Path(path)
        self.camera_index = camera
        #: How messages and the records' ``file_name`` name the source.
        self.label = f"camera {camera}" if path is None else str(path)
        #: The stem of the source's outputs.
        self.stem = f"camera{camera}" if self.path is None else self.path.stem
        if self.path is not None and not self.path.is_file():
            raise DataError(f"video '{path}' does not exist; give a video file ({', '.join(VIDEO_EXTENSIONS)})")
        self._capture = _open_capture(str(path) if camera is None else camera)
        if self._capture.isOpened():
            return
        if camera is not None:
            raise DataError(
                f"cannot open camera {camera}: no such camera, or it is in use or not permitted; "
                "check the index (`ls /dev/video*` on Linux)"
            )
        raise DataError(
            f"cannot open video '{path}': not a video, or a codec this OpenCV build cannot decode; "
            "convert it (e.g. to H.264 MP4) or remove it"
        )

    @property
    def is_camera(self) -> bool:
        """Whether the source is a camera (a live stream without an end)."""
        return self.camera_index is not None

    @property
    def fps(self) -> float:
        """The source's frame rate; 0 when it does not tell."""
        fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        return fps if math.isfinite(fps) and fps > 0 else 0.0

    @property
    def frame_count(self) -> int | None:
        """The number of frames of a file as its container tells it (may be approximate); None for a camera."""
        if self.is_camera:
            return None
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        return int(count) if math.isfinite(count) and count > 0 else None

    def key(self, index: int) -> str:
        """Frame ``index``'s ``file_name`` in the records: ``"clip.mp4#000012"``, ``"camera 0#000012"``."""
        return f"{self.label}#{index:06d}"

    def expected(self, *, stride: int = 1, max_frames: int | None = None) -> int | None:
        """How many frames :meth:`frames` will give, where that is known beforehand."""
        count = self.frame_count
        total = None if count is None else -(-count // stride)
        if max_frames is not None:
            total = max_frames if total is None else min(total, max_frames)
        return total

    def frames(
        self, *, stride: int = 1, max_frames: int | None = None, stop: threading.Event | None = None
    ) -> Iterator[VideoFrame]:
        """Frames ``0, stride, 2 * stride, ...`` in order, at most ``max_frames``, until the source ends.

        The frames in between are grabbed, not converted. A file's frame time is its
        timestamp in the file; a camera's, the seconds since its first frame was read.

        Args:
            stop: when set, the stream ends before the next frame.
        """
        start: float | None = None
        given = 0
        index = 0
        while (max_frames is None or given < max_frames) and not (stop is not None and stop.is_set()):
            if index % stride:
                if not self._capture.grab():
                    return
                index += 1
                continue
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                return
            if self.is_camera:
                now = time.monotonic()
                start = now if start is None else start
                time_s = now - start
            else:
                time_s = float(self._capture.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
            yield VideoFrame(index, round(time_s, 3), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            given += 1
            index += 1

    def close(self) -> None:
        """Release the capture."""
        self._capture.release()

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _open_capture(source: str | int) -> cv2.VideoCapture:
    """``cv2.VideoCapture(source)`` without OpenCV's and FFmpeg's log lines (the caller reports a failure once)."""
    # FFmpeg's own messages ("moov atom not found") follow this variable, read when
    # OpenCV first uses FFmpeg; a value the user set is kept.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    with _opencv_silent():
        return cv2.VideoCapture(source)


class _ReadAhead:
    """Iterates ``source``'s frames as decoded by a background thread, up to ``ahead`` of them waiting.

    An error in the thread is raised where the frame would have come. :meth:`close`
    stops the thread (also in the middle of a stream) and waits for it.
    """

    _END = object()

    def __init__(self, source: VideoFrames, *, stride: int, max_frames: int | None, ahead: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._frames = source.frames(stride=stride, max_frames=max_frames, stop=self._stop)
        self._thread = threading.Thread(target=self._run, name="detkit-video-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        item: object
        try:
            for item in self._frames:
                if not self._put(item):
                    return
            item = self._END
        except Exception as exc:  # handed to the consumer, raised there
            item = exc
        self._put(item)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[VideoFrame]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, Exception):
                raise item
            assert isinstance(item, VideoFrame)
            yield item

    def close(self) -> None:
        """Stop reading and wait for the thread."""
        self._stop.set()
        self._thread.join()


def _batches(frames: Iterator[VideoFrame], batch_size: int) -> Iterator[list[VideoFrame]]:
    batch: list[VideoFrame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------- the rate


class RateMeter:
    """Frames per second over the last ``window`` updates (over all of them until there are that many).

    An update is a batch of frames done together, so with batches of one frame the
    window is ``window`` frames.

    Args:
        window: the updates the rate is measured over.
        clock: a function returning seconds (``time.perf_counter``); tests pass a fake one.
    """

    def __init__(self, *, window: int = RATE_WINDOW, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.start = self._clock()
        self._times: deque[float] = deque([self.start], maxlen=window + 1)
        self._counts: deque[int] = deque([0], maxlen=window + 1)
        self.frames = 0

    def tick(self, n: int = 1) -> float:
        """Count ``n`` more frames done now; return the current rate."""
        self.frames += n
        self._times.append(self._clock())
        self._counts.append(self.frames)
        return self.rate

    @property
    def rate(self) -> float:
        """Frames per second over the window (0 before any frame)."""
        seconds = self._times[-1] - self._times[0]
        return (self._counts[-1] - self._counts[0]) / seconds if seconds > 0 else 0.0

    @property
    def seconds(self) -> float:
        """Seconds from the start to the last frame."""
        return self._times[-1] - self.start

    @property
    def overall(self) -> float:
        """Frames per second from the start to the last frame."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# ----------------------------------------------------------------------------- the MP4


class VideoOutput:
    """Draws frames and appends them to an MP4 in a background thread, in order; ``max_pending`` may wait.

    The MP4 is written as ``.<name>.incomplete.mp4`` beside ``path``; :meth:`finish`
    closes it and renames it to ``path``, :meth:`abort` closes and removes it. The
    writer opens on the first frame (its size is the drawn frame's). An error in the
    thread (a frame OpenCV cannot write) is raised by the next :meth:`submit` or by
    :meth:`finish`.

    Args:
        path: the final ``.mp4`` file.
        fps: the frame rate of the file.
        class_names: the name of each label.
        max_pending: frames handed over and not yet written, at most.
    """

    def __init__(self, path: Path, *, fps: float, class_names: Sequence[str], max_pending: int = 8) -> None:
        self.path = path
        self.tmp_path = path.with_name(f".{path.stem}.incomplete{path.suffix}")
        self.fps = fps
        self.class_names = list(class_names)
        self.max_pending = max(1, max_pending)
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detkit-video-write")
        self._pending: deque[Future[None]] = deque()

    def submit(self, image: np.ndarray, dets: Detections, rate: float) -> None:
        """Draw ``dets`` and ``rate`` (frames per second) on ``image`` (``(H, W, 3)`` RGB) and append it."""
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, image, dets, rate))

    def _write(self, image: np.ndarray, dets: Detections, rate: float) -> None:
        canvas = draw_detections(image, dets, class_names=self.class_names, min_size=DRAW_MIN_SIZE)
        draw_rate(canvas, rate)
        height, width = canvas.shape[:2]
        if self._writer is None:
            self._open(width, height)
        if self._size != (width, height):  # a stream that changes its size mid-way
            canvas = cv2.resize(canvas, self._size, interpolation=cv2.INTER_AREA)
        assert self._writer is not None
        self._writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _opencv_silent():
            writer = cv2.VideoWriter(str(self.tmp_path), cv2.VideoWriter.fourcc(*FOURCC), self.fps, (width, height))
        if not writer.isOpened():
            raise DataError(
                f"cannot write '{self.path}': this OpenCV build's VideoWriter does not write fourcc {FOURCC!r} "
                "MP4 files; use --no-draw to write the detections only"
            )
        self._writer, self._size = writer, (width, height)

    def flush(self) -> None:
        """Wait until every frame handed over is in the file (which stays open, under its temporary name)."""
        while self._pending:
            self._pending.popleft().result()

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def finish(self) -> Path | None:
        """Write every waiting frame, close the file and rename it to :attr:`path` (None: no frame came)."""
        try:
            self.flush()
            self._pool.shutdown(wait=True)
        except BaseException:
            self.abort()
            raise
        self._release()
        if not self.tmp_path.exists():
            return None
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the waiting frames, close and remove the temporary file."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)
        self._release()
        self.tmp_path.unlink(missing_ok=True)


def draw_rate(canvas: np.ndarray, rate: float) -> None:
    """Write ``"12.3 FPS"`` on a dark box in the lower left corner of ``canvas`` (``(H, W, 3)``), in place."""
    height, width = canvas.shape[:2]
    text = f"{rate:.1f} FPS"
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.4, min(height, width) / 800)
    thickness = max(1, round(scale * 1.5))
    (tw, th), baseline = cv2.getTextSize(text, font, scale, thickness)
    pad = max(2, thickness * 2)
    top = max(0, height - th - baseline - 2 * pad)
    cv2.rectangle(canvas, (0, top), (min(width - 1, tw + 2 * pad), height - 1), (0, 0, 0), thickness=cv2.FILLED)
    cv2.putText(canvas, text, (pad, height - baseline - pad), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


# ----------------------------------------------------------------------------- detect


@dataclass
class VideoReport:
    """What :func:`detect_video` did with one source."""

    source: str  # the source's label: its path, or "camera N"
    jsonl_path: Path
    video_path: Path | None = None  # the annotated MP4 (None: not drawn, or no frame)
    frames: int = 0  # processed (run through the model)
    frames_written: int = 0  # in the MP4
    num_detections: int = 0
    seconds: float = 0.0  # from the start of reading to the last processed frame
    stopped: bool = False  # ended by Ctrl-C

    @property
    def fps(self) -> float:
        """Processed frames per second, reading and drawing included."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: ``clip.mp4: 24 frames, 31 detections, 9.8 frames/s -> out/clip.jsonl, out/clip.mp4``."""
        outputs = ", ".join(str(p) for p in (self.jsonl_path, self.video_path) if p is not None)
        stopped = " (stopped by Ctrl-C)" if self.stopped else ""
        return (
            f"{self.source}: {self.frames} frames{stopped}, {self.num_detections} detections, "
            f"{self.fps:.1f} frames/s -> {outputs}"
        )


def check_stream_options(*, stride: int, max_frames: int | None) -> None:
    """Fail on a ``stride`` below 1 or a ``max_frames`` below 1.

    Raises:
        ConfigError: naming the value and what it must be.
    """
    if stride < 1:
        raise ConfigError(f"--stride must be at least 1 (every frame), got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames must be at least 1, got {max_frames}")


def detect_video(
    model: nn.Module,
    source: VideoFrames,
    out_dir: str | Path,
    *,
    class_names: Sequence[str],
    name: str | None = None,
    score_thresh: float = 0.5,
    draw: bool = True,
    precision: str = "fp32",
    progress: bool = True,
    batch_size: int | None = None,
    stride: int = 1,
    max_frames: int | None = None,
) -> VideoReport:
    """Detect objects in the frames of ``source``; write ``out_dir/<name>.jsonl`` and ``out_dir/<name>.mp4``.

    See the module's docstring for the outputs. Detections scoring below
    ``score_thresh`` are neither drawn nor written.

    Args:
        model: a detector, on the device it runs on.
        source: the video or camera; it is read to its end (or ``max_frames``), not closed.
        out_dir: where the outputs go (created).
        class_names: the name of each label.
        name: the outputs' stem (None: the source's, :attr:`VideoFrames.stem`).
        score_thresh: the least score of a kept detection.
        draw: write the annotated MP4.
        precision: ``fp32``, ``fp16`` or ``bf16`` (see :func:`~detkit.engine.predict.run_batch`).
        progress: show progress, with the current frames per second.
        batch_size: frames per model call (None: :func:`~detkit.engine.predict.default_batch_size`).
        stride: process every ``stride``-th frame (frames ``0, stride, 2 * stride, ...``).
        max_frames: process at most this many frames (None: to the end of the source).

    Raises:
        ConfigError: ``batch_size``, ``stride`` or ``max_frames`` below 1; the MP4 would
            replace the video it is drawn from.
        DataError: the source gave no frame at all (a file OpenCV opens but cannot decode).
    """
    device = next(model.parameters()).device
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
    check_stream_options(stride=stride, max_frames=max_frames)
    out = Path(out_dir)
    name = source.stem if name is None else name
    report = VideoReport(source=source.label, jsonl_path=out / f"{name}.jsonl")
    video_path = out / f"{name}.mp4"
    if draw and source.path is not None and video_path.resolve() == source.path.resolve():
        raise ConfigError(f"the annotated video would replace its source '{source.path}'; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    fps = (source.fps or DEFAULT_FPS) / stride
    writer = VideoOutput(video_path, fps=fps, class_names=class_names, max_pending=2 * batch_size) if draw else None
    meter = RateMeter()
    total = source.expected(stride=stride, max_frames=max_frames)
    try:
        with (
            JsonlWriter(report.jsonl_path) as jsonl,
            progress_bar(total=total, desc=source.label, unit="frame", enabled=progress) as bar,
        ):
            reader = _ReadAhead(source, stride=stride, max_frames=max_frames, ahead=AHEAD_PER_BATCH * batch_size)
            try:
                for batch in _batches(iter(reader), batch_size):
                    images = [torch.from_numpy(f.image) for f in batch]
                    detections = run_batch(model, images, device, precision)
                    rate = meter.tick(len(batch))
                    for frame, dets in zip(batch, detections):
                        kept = dets[dets.scores >= score_thresh]
                        line = image_line(dets, file_name=source.key(frame.frame_index), class_names=class_names,
                                          score_thresh=score_thresh)
                        jsonl.write({"frame": frame.frame_index, "time_s": frame.time_s, **line})
                        report.frames += 1
                        report.num_detections += len(kept)
                        if writer is not None:
                            writer.submit(frame.image, kept, rate)
                    jsonl.flush()
                    bar.update(len(batch))
                    bar.set_postfix(fps=f"{rate:.1f}", refresh=False)
            except KeyboardInterrupt:
                report.stopped = True
            finally:
                reader.close()
        if report.frames == 0 and not report.stopped:
            raise DataError(f"'{source.label}' gave no frame; OpenCV opened it but could not decode a frame")
        if writer is not None:
            report.video_path = writer.finish()
            report.frames_written = writer.frames
    except BaseException:
        if writer is not None:
            writer.abort()
        if report.frames == 0:
            report.jsonl_path.unlink(missing_ok=True)
        raise
    report.seconds = meter.seconds
    return report



def open_sources(videos: Sequence[str | Path], *, camera: int | None = None) -> list[VideoFrames]:
    """Open every video of ``videos`` and the camera ``camera`` (when not None), before any work.

    Raises:
        DataError: one of them cannot be opened (the ones opened are closed again).
    """
    sources: list[VideoFrames] = []
    try:
        for path in videos:
            sources.append(VideoFrames(path))
        if camera is not None:
            sources.append(VideoFrames(camera=camera))
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources
