"""Run a detector over image files and write annotated images and ``detections.json``.

One unreadable file (corrupt, not an image, missing) is skipped and recorded in
:attr:`DetectReport.failed` (the caller reports it, once); the rest of the inputs are
still processed. Images without a detection above the score threshold are recorded
too, with their best score, so a folder of empty PNGs comes with a reason
(:meth:`DetectReport.empty_note`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn

from detkit.data.images import image_to_tensor, read_image
from detkit.device import autocast
from detkit.errors import DataError
from detkit.io import write_json
from detkit.progress import progress as progress_bar
from detkit.structures import Detections, xyxy_to_xywh
from detkit.viz.draw import draw_detections, save_image

#: Annotated images are drawn at least this large (shorter side, by an integer factor),
#: so labels do not cover the objects of small images.
DRAW_MIN_SIZE = 384


@dataclass
class DetectReport:
    """What :func:`detect_files` did."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    num_images: int = 0  # read and run through the model
    num_detections: int = 0
    json_path: Path | None = None
    #: images read without any detection at or above the score threshold -> their best
    #: score (None: the model returned no detection at all)
    empty: dict[Path, float | None] = field(default_factory=dict)
    score_thresh: float = 0.5

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


def detect_files(
    model: nn.Module,
    files: Sequence[Path],
    out_dir: str | Path,
    *,
    class_names: Sequence[str],
    score_thresh: float = 0.5,
    draw: bool = True,
    precision: str = "fp32",
    progress: bool = True,
) -> DetectReport:
    """Detect objects in ``files``; write ``out_dir/<stem>.png`` and ``out_dir/detections.json``.

    Detections scoring below ``score_thresh`` are neither drawn nor written. Images
    are drawn at least :data:`DRAW_MIN_SIZE` pixels on the shorter side (enlarged by
    an integer factor), so that labels stay readable on small images.

    Args:
        precision: ``fp32``, or ``fp16``/``bf16`` to run the model under autocast
            (see :func:`detkit.device.autocast`); the post-processing gives float32
            boxes, scores and masks either way.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    model.eval()
    report = DetectReport(score_thresh=score_thresh)
    records: list[dict[str, Any]] = []
    used_names: set[str] = set()
    for path in progress_bar(files, desc="detect", unit="image", enabled=progress):
        try:
            image = read_image(path)
        except DataError as exc:
            report.failed.append((path, str(exc)))
            continue
        report.num_images += 1
        with torch.no_grad(), autocast(device, precision):
            detections, _ = model([image_to_tensor(image).to(device)])
        dets = detections[0].to("cpu")
        kept = dets.scores >= score_thresh
        if not bool(kept.any()):
            report.empty[path] = float(dets.scores.max()) if len(dets) else None
        dets = dets[kept]
        records += detections_to_records(dets, file_name=str(path), class_names=class_names)
        report.num_detections += len(dets)
        if draw:
            name = _unique_name(path, used_names)
            target = out / f"{name}.png"
            save_image(target, draw_detections(image, dets, class_names=class_names, min_size=DRAW_MIN_SIZE))
            report.written.append(target)
    report.json_path = out / "detections.json"
    write_json(report.json_path, records)
    return report


def _unique_name(path: Path, used: set[str]) -> str:
    name = path.stem
    k = 1
    while name in used:
        name = f"{path.stem}_{k}"
        k += 1
    used.add(name)
    return name
