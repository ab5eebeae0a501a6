"""Run a detector over images; stream ``detections.jsonl``, then write ``detections.json`` and annotated PNGs.

The input is a :class:`FrameSource`: frames by index, each with a key (the
``file_name`` of its records), a name (of its PNG) and its pixels.
:class:`ImageFiles` is the source of image files; a sequence of paths is taken
as one. :func:`detect_files` runs in three overlapping parts:

* **reading**: DataLoader worker processes decode frames into uint8 tensors (the
  float conversion happens on the model's device: a quarter of the bytes cross
  the process boundary and the host-to-GPU copy);
* **the model**: frames are gathered into batches of like orientation (portrait
  with portrait, landscape with landscape, so that a batch pads little) and run
  together under :func:`detkit.device.autocast`;
* **drawing**: annotated PNGs are drawn and written by a background thread, with a
  bounded number of images waiting, so the model never waits for PNG encoding. A
  drawing error is recorded in :attr:`DetectReport.not_drawn`; it ends nothing.

Each image's detections are appended to ``OUT/detections.jsonl`` as one line as
soon as its batch is done (the file is flushed after every batch), so an
interrupted run keeps every finished image; ``resume=True`` skips the images
already there. At the end ``OUT/detections.json`` is assembled from the JSONL,
atomically, in the source's order.

One unreadable file (corrupt, not an image, missing) is skipped and recorded in
:attr:`DetectReport.failed` (the caller reports it, once); the rest of the inputs are
still processed. Images without a detection above the score threshold are recorded
too, with their best score, so a folder of empty PNGs comes with a reason
(:meth:`DetectReport.empty_note`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from detkit.data.images import find_images, read_image
from detkit.device import autocast
from detkit.errors import ConfigError, DataError
from detkit.io import write_json
from detkit.progress import progress as progress_bar
from detkit.structures import Detections, xyxy_to_xywh
from detkit.viz.draw import draw_detections, save_image

logger = logging.getLogger(__name__)

#: Annotated images are drawn at least this large (shorter side, by an integer factor),
#: so labels do not cover the objects of small images.
DRAW_MIN_SIZE = 384
#: Images per model call when none is given, on a CPU and on a CUDA device. A CPU gains
#: nothing from batching (its cores are busy with one image's convolutions), and a batch
#: pads its images to one size: ResNet-50 Faster R-CNN on 2 cores ran 0.27 img/s at
#: batch 4 against 0.37 at batch 1.
CPU_BATCH_SIZE = 1
CUDA_BATCH_SIZE = 8
#: At most this many reading processes when none is given (fewer on fewer cores).
MAX_WORKERS = 4
#: The streamed results (one line per image) and the final list of detections.
JSONL_NAME = "detections.jsonl"
JSON_NAME = "detections.json"


# ----------------------------------------------------------------------------- frame sources


@runtime_checkable
class FrameSource(Protocol):
    """Frames to detect on, by index in ``[0, len(source))``.

    The source goes to DataLoader worker processes, which call :meth:`read`; keep
    it light (paths, not pixels). A video, which is read in order rather than by
    index, is a :class:`detkit.engine.video.VideoFrames` instead (its frames' keys
    are ``"clip.mp4#000012"``).
    """

    def __len__(self) -> int:
        """The number of frames."""
        ...

    def key(self, index: int) -> str:
        """Frame ``index``'s ``file_name`` in the records; unique in the source (``resume`` matches by it)."""
        ...

    def name(self, index: int) -> str:
        """The stem of frame ``index``'s annotated PNG; unique in the source."""
        ...

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as an ``(H, W, 3)`` uint8 RGB array.

        Raises:
            DataError: the frame cannot be read; the message names it.
        """
        ...


class ImageFiles:
    """Image files as a :class:`FrameSource`: key ``str(path)``, name the file's stem.

    Two files with the same stem get distinct names (``a``, ``a_1``, ...), in order.

    Args:
        paths: the image files, in order (:meth:`find` expands folders and globs).
    """

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]
        used: set[str] = set()
        self._names = [_unique_name(p, used) for p in self.paths]

    @classmethod
    def find(cls, inputs: Sequence[str | Path]) -> ImageFiles:
        """The images of files, folders and glob patterns (see :func:`detkit.data.images.find_images`)."""
        return cls(find_images(inputs))

    def __len__(self) -> int:
        return len(self.paths)

    def key(self, index: int) -> str:
        """The path as given."""
        return str(self.paths[index])

    def name(self, index: int) -> str:
        """The file's stem, made unique."""
        return self._names[index]

    def read(self, index: int) -> np.ndarray:
        """The decoded image (:func:`detkit.data.images.read_image`)."""
        return read_image(self.paths[index])


def _unique_name(path: Path, used: set[str]) -> str:
    name = path.stem
    k = 1
    while name in used:
        name = f"{path.stem}_{k}"
        k += 1
    used.add(name)
    return name


class Frame(NamedTuple):
    """One frame as the reading workers deliver it: the pixels, or why they could not be read."""

    source_index: int
    image: Tensor | None  # (H, W, 3) uint8 RGB
    error: str = ""


class _ReadFrames(Dataset[Frame]):
    """The frames ``indices`` of ``source``, read in a worker; a :class:`DataError` becomes ``Frame.error``."""

    def __init__(self, source: FrameSource, indices: Sequence[int]) -> None:
        self.source = source
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> Frame:
        index = self.indices[item]
        try:
            return Frame(index, torch.from_numpy(np.ascontiguousarray(self.source.read(index))))
        except DataError as exc:
            return Frame(index, None, str(exc))


def _as_is(frame: Any) -> Any:
    return frame


def read_frames(
    source: FrameSource, indices: Sequence[int], *, workers: int, pin_memory: bool = False, ahead: int = 8
) -> Generator[Frame, None, None]:
    """Frames ``indices`` of ``source`` in order, decoded by ``workers`` processes (0: in this one).

    Args:
        ahead: about how many frames the workers keep decoded ahead of the consumer.
        pin_memory: put the pixels in pinned memory (for a fast copy to a GPU).
    """
    dataset = _ReadFrames(source, indices)
    if workers == 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=pin_memory,
        prefetch_factor=max(2, -(-ahead // workers)),
    )
    yield from loader


def batch_by_orientation(frames: Iterator[Frame], batch_size: int) -> Iterator[list[Frame]]:
    """Readable frames in batches of up to ``batch_size``: portrait ones together, landscape ones together.

    A padded batch is as large as its largest image in each direction, so mixing
    orientations makes every image in it nearly square. At most ``2 * (batch_size - 1)``
    frames wait; what is left at the end comes in smaller batches. Unreadable frames
    come at once, alone (a batch of one frame whose ``image`` is None).
    """
    waiting: dict[bool, list[Frame]] = {False: [], True: []}
    for frame in frames:
        if frame.image is None:
            yield [frame]
            continue
        group = waiting[frame.image.shape[0] > frame.image.shape[1]]
        group.append(frame)
        if len(group) >= batch_size:
            yield group[:]
            group.clear()
    for group in sorted(waiting.values(), key=lambda g: g[0].source_index if g else 0):
        if group:
            yield group


# ----------------------------------------------------------------------------- the report


@dataclass
class DetectReport:
    """What :func:`detect_files` did.

    With ``resume``, the counts and :attr:`empty` cover every image of the final
    ``detections.json``, the ones an earlier run did included (:attr:`resumed` of them).
    """

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    num_images: int = 0  # read and run through the model
    num_detections: int = 0
    json_path: Path | None = None
    #: images read without any detection at or above the score threshold -> their best
    #: score (None: the model returned no detection at all)
    empty: dict[Path, float | None] = field(default_factory=dict)
    score_thresh: float = 0.5
    #: images whose annotated PNG could not be drawn or written -> why (their detections are kept)
    not_drawn: list[tuple[Path, str]] = field(default_factory=list)
    #: images taken from an earlier run's ``detections.jsonl`` (``resume``), not run again
    resumed: int = 0
    jsonl_path: Path | None = None

    def empty_note(self, flag: str = "--score-thresh") -> str | None:
        """Why some images have no detection, in one line (None when every image has one).

        Args:
            flag: how the caller names the threshold (``--score-thresh``, a config key).
        """
        if not self.empty:
            return None
        best = [s for s in self.empty.values() if s is not None]
        n = len(self.empty)
        head = f"{n} of {self.num_images} images had no detection at or above {flag} {self.score_thresh:g}"
        if not best:
            return f"{head}; the model returned no detection for {'them' if n != 1 else 'it'} at all"
        return f"{head}; the best score among {'them' if n != 1 else 'it'} was {max(best):.2f}"


def detections_to_records(
    dets: Detections, *, file_name: str, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """``detections.json`` records of one image: file name, category name, xywh box, score (+ RLE)."""
    boxes = xyxy_to_xywh(dets.boxes.float().cpu()).tolist()
    records = []
    for i, (box, score, label) in enumerate(zip(boxes, dets.scores.tolist(), dets.labels.tolist())):
        rec: dict[str, Any] = {
            "file_name": file_name,
            "category": class_names[label],
            "bbox": [round(v, 2) for v in box],
            "score": round(float(score), 5),
        }
        if dets.masks is not None:
            binary = np.asfortranarray((dets.masks[i] >= 0.5).cpu().numpy().astype(np.uint8))
            rle = mask_utils.encode(binary)
            rec["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        records.append(rec)
    return records


# ----------------------------------------------------------------------------- detections.jsonl


def image_line(
    dets: Detections, *, file_name: str, class_names: Sequence[str], score_thresh: float
) -> dict[str, Any]:
    """One image's line of ``detections.jsonl``.

    ``{"file_name", "score_thresh", "best_score", "detections"}``: ``detections`` holds the
    image's ``detections.json`` records (scoring at least ``score_thresh``), ``best_score``
    the best score the model gave at all (None: no detection).
    """
    kept = dets.scores >= score_thresh
    return {
        "file_name": file_name,
        "score_thresh": score_thresh,
        "best_score": float(dets.scores.max()) if len(dets) else None,
        "detections": detections_to_records(dets[kept], file_name=file_name, class_names=class_names),
    }


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The image lines of a ``detections.jsonl`` and the byte length of its complete part.

    A last line cut short (a run killed while writing it) is left out, with a warning.

    Raises:
        DataError: a line other than the last is not an image line (the file is not
            one detkit wrote, or was edited).
    """
    data = path.read_bytes()
    lines: list[dict[str, Any]] = []
    offset = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        chunk = data[offset:] if end < 0 else data[offset:end]
        line = _parse_line(chunk)
        if line is None:
            if end < 0 or not data[end + 1 :].strip():
                logger.warning(
                    "%s: its last line was cut short (the run was stopped while writing it); "
                    "that image is detected again", path
                )
                break
            raise DataError(
                f"'{path}' line {len(lines) + 1} is not a detkit image line; "
                "run without resume to start afresh"
            )
        if end < 0:  # a complete line but no newline: written, then stopped before the newline
            logger.warning("%s: its last line has no newline; that image is detected again", path)
            break
        lines.append(line)
        offset = end + 1
    return lines, offset


def _parse_line(chunk: bytes) -> dict[str, Any] | None:
    """An image line, or None when ``chunk`` is not one."""
    try:
        line = json.loads(chunk)
    except (ValueError, UnicodeDecodeError):
        return None
    if not (isinstance(line, dict) and isinstance(line.get("file_name"), str)
            and isinstance(line.get("detections"), list)):
        return None
    return line


class JsonlWriter:
    """Appends image lines to ``detections.jsonl``; :meth:`flush` makes them reach the file.

    Args:
        path: the file.
        keep: bytes of an earlier run's file to keep (``resume``: its complete lines);
            0 starts the file afresh.
    """

    def __init__(self, path: Path, *, keep: int = 0) -> None:
        self.path = path
        self._file: IO[str] = open(path, "r+" if keep else "w", encoding="utf-8")  # noqa: SIM115 (closed in close)
        if keep:
            self._file.truncate(keep)
            self._file.seek(keep)

    def write(self, line: dict[str, Any]) -> None:
        """Append one image line (it reaches the file at the next :meth:`flush`)."""
        self._file.write(json.dumps(line) + "\n")

    def flush(self) -> None:
        """Hand the lines written so far to the operating system (they survive a killed process)."""
        self._file.flush()

    def close(self) -> None:
        """Flush, sync to disk and close."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def assemble_json(jsonl: Path, target: Path, source: FrameSource) -> list[dict[str, Any]]:
    """Write ``target`` (``detections.json``) from ``jsonl`` atomically; return the image lines it used.

    An image with several lines (drawn again after a resume) counts once, by its last
    line. Images come in the source's order; images of the JSONL that the source does
    not have (an earlier run on more inputs) follow, in the file's order.
    """
    lines, _ = read_jsonl(jsonl)
    latest = {line["file_name"]: line for line in lines}
    order = {source.key(i): i for i in range(len(source))}
    keys = sorted(latest, key=lambda k: order.get(k, len(order)))  # stable: unknown keys keep their order
    ordered = [latest[k] for k in keys]
    write_json(target, [record for line in ordered for record in line["detections"]])
    return ordered


def _resume_from(
    path: Path, source: FrameSource, out: Path, *, draw: bool, score_thresh: float
) -> tuple[set[int], int]:
    """The frames an earlier run finished (in its JSONL, and drawn when drawing) and the bytes to keep."""
    if not path.is_file():
        return set(), 0
    lines, keep = read_jsonl(path)
    for line in lines:
        earlier = line.get("score_thresh")
        if isinstance(earlier, (int, float)) and float(earlier) != score_thresh:
            raise ConfigError(
                f"cannot resume from '{path}': its detections were kept at score threshold {earlier:g}, "
                f"this run's is {score_thresh:g}; use {earlier:g}, or start afresh without resuming"
            )
    keys = {line["file_name"] for line in lines}
    done = {
        i for i in range(len(source))
        if source.key(i) in keys and (not draw or (out / f"{source.name(i)}.png").is_file())
    }
    return done, keep


# ----------------------------------------------------------------------------- drawing


class BackgroundDrawer:
    """Draws and writes annotated PNGs in a thread; at most ``max_pending`` images wait.

    :meth:`submit` returns at once unless ``max_pending`` images are waiting; then it
    waits for the oldest. A drawing error goes to :attr:`failed`; it stops nothing.
    """

    def __init__(self, out: Path, *, class_names: Sequence[str], threads: int = 1, max_pending: int = 8) -> None:
        self.out = out
        self.class_names = list(class_names)
        self.max_pending = max(1, max_pending)
        self.written: list[Path] = []
        self.failed: list[tuple[Path, str]] = []
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="detkit-draw")
        self._pending: deque[tuple[str, Future[Path]]] = deque()

    def submit(self, key: str, name: str, image: np.ndarray, dets: Detections) -> None:
        """Draw ``dets`` on ``image`` into ``out/<name>.png`` (``key`` names the image in errors)."""
        while len(self._pending) >= self.max_pending:
            self._collect(*self._pending.popleft())
        target = self.out / f"{name}.png"
        self._pending.append((key, self._pool.submit(self._draw, target, image, dets)))

    def _draw(self, target: Path, image: np.ndarray, dets: Detections) -> Path:
        return save_image(target, draw_detections(image, dets, class_names=self.class_names, min_size=DRAW_MIN_SIZE))

    def _collect(self, key: str, future: Future[Path]) -> None:
        try:
            self.written.append(future.result())
        except Exception as exc:  # a drawing error loses one PNG, never the run
            self.failed.append((Path(key), f"cannot draw '{key}': {exc}"))

    def close(self) -> None:
        """Wait for every waiting image."""
        while self._pending:
            self._collect(*self._pending.popleft())
        self._pool.shutdown(wait=True)

    def __enter__(self) -> BackgroundDrawer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:  # stopped: draw nothing more than what is under way
            for _, future in self._pending:
                future.cancel()
        self.close()


# ----------------------------------------------------------------------------- detect


def default_batch_size(device: torch.device) -> int:
    """Images per model call when none is given: :data:`CUDA_BATCH_SIZE` on CUDA, else :data:`CPU_BATCH_SIZE`."""
    return CUDA_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


def default_workers() -> int:
    """Reading processes when none is given: ``min(MAX_WORKERS, CPU count)``."""
    return min(MAX_WORKERS, os.cpu_count() or 1)


def run_batch(model: nn.Module, images: list[Tensor], device: torch.device, precision: str) -> list[Detections]:
    """Detections (on the CPU) of uint8 ``(H, W, 3)`` ``images``, run as one batch under autocast."""
    inputs = [im.to(device, non_blocking=True).permute(2, 0, 1).float().div_(255.0) for im in images]
    with torch.no_grad(), autocast(device, precision):
        detections, _ = model(inputs)
    return [d.to("cpu") for d in detections]


def detect_files(
    model: nn.Module,
    files: FrameSource | Sequence[Path],
    out_dir: str | Path,
    *,
    class_names: Sequence[str],
    score_thresh: float = 0.5,
    draw: bool = True,
    precision: str = "fp32",
    progress: bool = True,
    batch_size: int | None = None,
    workers: int | None = None,
    resume: bool = False,
) -> DetectReport:
    """Detect objects in ``files``; write ``out_dir/<name>.png``, ``detections.jsonl`` and ``detections.json``.

    Detections scoring below ``score_thresh`` are neither drawn nor written. Images
    are drawn at least :data:`DRAW_MIN_SIZE` pixels on the shorter side (enlarged by
    an integer factor), so that labels stay readable on small images.

    Args:
        model: a detector, on the device it runs on.
        files: a :class:`FrameSource`, or image paths (an :class:`ImageFiles`).
        out_dir: where the outputs go (created).
        class_names: the name of each label.
        score_thresh: the least score of a kept detection.
        draw: write annotated PNGs.
        precision: ``fp32``, or ``fp16``/``bf16`` to run the model under autocast
            (see :func:`detkit.device.autocast`); the post-processing gives float32
            boxes, scores and masks either way.
        progress: show progress.
        batch_size: images per model call (None: :func:`default_batch_size`).
        workers: reading processes (None: :func:`default_workers`; 0 reads in this one).
        resume: keep the images of ``out_dir/detections.jsonl`` (and, when drawing,
            with their PNG) and detect only the others; else the file starts afresh.

    Raises:
        ConfigError: ``batch_size`` below 1 or ``workers`` below 0; a resumed file
            kept another score threshold.
    """
    source = files if isinstance(files, FrameSource) else ImageFiles(files)
    device = next(model.parameters()).device
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    workers = default_workers() if workers is None else workers
    _check_counts(batch_size, workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    jsonl_path, json_path = out / JSONL_NAME, out / JSON_NAME
    report = DetectReport(score_thresh=score_thresh, json_path=json_path, jsonl_path=jsonl_path)
    done, keep = set[int](), 0
    if resume:
        done, keep = _resume_from(jsonl_path, source, out, draw=draw, score_thresh=score_thresh)
    report.resumed = len(done)
    todo = [i for i in range(len(source)) if i not in done]
    frames = read_frames(source, todo, workers=workers, pin_memory=device.type == "cuda", ahead=2 * batch_size)
    with (
        contextlib.closing(frames),  # stops the reading workers, also on an error
        JsonlWriter(jsonl_path, keep=keep) as jsonl,
        BackgroundDrawer(out, class_names=class_names, max_pending=2 * batch_size) as drawer,
        progress_bar(total=len(todo), desc="detect", unit="image", enabled=progress) as bar,
    ):
        run = _BatchRun(model, source, device, precision, jsonl, drawer if draw else None, report, class_names)
        for batch in batch_by_orientation(frames, batch_size):
            run(batch)
            bar.update(len(batch))
    report.written, report.not_drawn = drawer.written, drawer.failed
    _summarize(report, assemble_json(jsonl_path, json_path, source))
    return report


def _check_counts(batch_size: int, workers: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"the number of reading workers must be at least 0, got {workers}")


@dataclass
class _BatchRun:
    """Runs one batch; appends its lines to the JSONL (flushed) and hands its images to the drawer."""

    model: nn.Module
    source: FrameSource
    device: torch.device
    precision: str
    jsonl: JsonlWriter
    drawer: BackgroundDrawer | None
    report: DetectReport
    class_names: Sequence[str]

    def __call__(self, batch: list[Frame]) -> None:
        read = [f for f in batch if f.image is not None]
        for frame in batch:
            if frame.image is None:
                self.report.failed.append((Path(self.source.key(frame.source_index)), frame.error))
        if not read:
            return
        detections = run_batch(self.model, [f.image for f in read if f.image is not None], self.device, self.precision)
        thresh = self.report.score_thresh
        for frame, dets in zip(read, detections):
            key = self.source.key(frame.source_index)
            self.jsonl.write(image_line(dets, file_name=key, class_names=self.class_names, score_thresh=thresh))
            if self.drawer is not None and frame.image is not None:
                name = self.source.name(frame.source_index)
                self.drawer.submit(key, name, frame.image.numpy(), dets[dets.scores >= thresh])
        self.jsonl.flush()


def _summarize(report: DetectReport, lines: list[dict[str, Any]]) -> None:
    """Fill the report's counts and empty images from the final image lines."""
    report.num_images = len(lines)
    report.num_detections = sum(len(line["detections"]) for line in lines)
    report.empty = {Path(line["file_name"]): line.get("best_score") for line in lines if not line["detections"]}
