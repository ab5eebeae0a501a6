"""Pictures of an evaluation: error bars, precision-recall curves, a confusion matrix, error galleries.

Plots are drawn on a :class:`~matplotlib.figure.Figure` with the Agg canvas (no
display, no pyplot state) and written atomically, like :mod:`detkit.viz.plots`.
The gallery draws with OpenCV on the image itself, like :mod:`detkit.viz.draw`.

Shape glossary: K classes, R recall thresholds, D detections, G ground-truth boxes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detkit.evaluation.coco import PrecisionCurves
from detkit.evaluation.confusion import ConfusionMatrix
from detkit.io import atomic_path
from detkit.viz.draw import RGB, _box_pixels, _check_image, _draw_label, _style

__all__ = [
    "ERROR_COLORS",
    "GROUND_TRUTH_COLOR",
    "draw_errors",
    "plot_confusion_matrix",
    "plot_error_bars",
    "plot_pr_curves",
]

#: The colour of each kind of detection in a gallery image (RGB): correct ones green,
#: each TIDE error type its own colour.
ERROR_COLORS: dict[str, RGB] = {
    "correct": (40, 200, 70),
    "classification": (230, 25, 75),
    "localization": (255, 160, 0),
    "both": (240, 50, 230),
    "duplicate": (0, 130, 200),
    "background": (145, 30, 180),
}
#: Ground truth is drawn in white with a black rim; missed objects in white with a cyan rim.
GROUND_TRUTH_COLOR: RGB = (255, 255, 255)
MISSED_RIM: RGB = (70, 240, 240)

#: Bar colour of each error type in :func:`plot_error_bars`.
_BAR_COLORS = {name: tuple(v / 255 for v in rgb) for name, rgb in ERROR_COLORS.items()} | {"missed": (0.5, 0.5, 0.5)}


def _save(fig: Figure, out_png: str | os.PathLike[str]) -> Path:
    target = Path(out_png)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target


def plot_error_bars(
    delta_ap: Mapping[str, Mapping[str, float]],
    out_png: str | os.PathLike[str],
    *,
    title: str = "AP gained by fixing each error type (TIDE)",
) -> Path:
    """Horizontal bars of dAP (in AP points) per error type, one panel per entry of ``delta_ap``.

    Args:
        delta_ap: panel title (e.g. ``"bbox"``) -> error type -> dAP as a fraction;
            the keys ``false_positive``/``false_negative`` are drawn below a gap.
    """
    fig = Figure(figsize=(5.5 * len(delta_ap), 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    axes = fig.subplots(1, max(1, len(delta_ap)), squeeze=False)[0]
    for ax, (panel, deltas) in zip(axes, delta_ap.items()):
        names = list(deltas)
        values = [100.0 * deltas[n] for n in names]
        colors = [_BAR_COLORS.get(n, (0.3, 0.3, 0.3)) for n in names]
        y = np.arange(len(names))[::-1]
        ax.barh(y, values, color=colors)
        ax.set_yticks(y, [n.replace("_", " ") for n in names])
        for yi, v in zip(y, values):
            ax.text(v, yi, f" {v:.1f}", va="center", fontsize="small")
        ax.set_xlabel("dAP (AP points)")
        ax.set_xlim(0, max([*values, 1.0]) * 1.2)
        ax.set_title(panel)
        ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, out_png)


def plot_pr_curves(curves: PrecisionCurves, out_png: str | os.PathLike[str], *, title: str = "") -> Path:
    """One panel per class: precision against recall at IoU 0.50 and 0.75, and averaged over 0.50:0.95.

    Each legend gives the curve's AP (the mean precision over the 101 recall points);
    a class without ground truth says so instead.
    """
    names = curves.class_names
    columns = min(5, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    fig = Figure(figsize=(3.0 * columns, 2.7 * rows + 0.5), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title or "precision-recall per class (maxDets=100, all areas)")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    recall = curves.recall_thresholds
    lines = (("IoU .50", curves.at(0.5), "tab:blue", "-"), ("IoU .75", curves.at(0.75), "tab:orange", "-"),
             ("IoU .50:.95", curves.at(None), "black", "--"))  # fmt: skip
    for k, ax in enumerate(axes):
        if k >= len(names):
            ax.set_axis_off()
            continue
        ax.set_title(names[k], fontsize="medium")
        if lines[0][1][0, k] < 0:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
        else:
            for label, precision, color, style in lines:
                p = precision[:, k]
                ax.plot(recall, p, color=color, linestyle=style, linewidth=1.2, label=f"{label} AP {p.mean():.3f}")
            ax.legend(fontsize="x-small", loc="best")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        if k % columns == 0:
            ax.set_ylabel("precision")
        if k >= len(names) - columns:
            ax.set_xlabel("recall")
    return _save(fig, out_png)


def plot_confusion_matrix(confusion: ConfusionMatrix, out_png: str | os.PathLike[str]) -> Path:
    """The matrix as a heat map, each row normalised to its total, with the counts written in the cells.

    Rows are true classes (the last, background, holds detections of nothing), columns
    predicted ones (the last, background, holds missed objects).
    """
    labels = confusion.labels
    counts = confusion.matrix
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    size = min(22.0, 3.0 + 0.45 * len(labels))
    fig = Figure(figsize=(size + 1.2, size), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the row")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(ticks, labels, fontsize="small")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"confusion at score >= {confusion.score_thresh:g}, IoU >= {confusion.iou_thresh:g} "
        f"({confusion.images} images)"
    )
    if len(labels) <= 30:
        for (r, c), n in np.ndenumerate(counts):
            if n:
                ax.text(c, r, str(n), ha="center", va="center", fontsize="x-small",
                        color="white" if share[r, c] > 0.5 else "black")  # fmt: skip
    return _save(fig, out_png)


def draw_errors(
    image: np.ndarray,
    *,
    gt_boxes: np.ndarray,
    gt_labels: Sequence[int],
    gt_missed: Sequence[bool],
    det_boxes: np.ndarray,
    det_labels: Sequence[int],
    det_scores: Sequence[float],
    det_kinds: Sequence[str],
    class_names: Sequence[str],
    min_size: int = 480,
) -> np.ndarray:
    """Ground truth and detections on a copy of ``image``, styled by what went wrong.

    Ground truth is a white box with a black rim (a cyan rim when the object was
    missed) and its class name inside its lower edge; detections are boxes coloured by
    kind (:data:`ERROR_COLORS`) with ``"name 0.93 localization"`` above them. A legend
    of the kinds runs along the top.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        gt_boxes: ``(G, 4)`` xyxy pixels; ``gt_labels``/``gt_missed`` one per box.
        det_boxes: ``(D, 4)`` xyxy pixels; ``det_labels``, ``det_scores`` and
            ``det_kinds`` (keys of :data:`ERROR_COLORS`) one per box.
        min_size: enlarge smaller images (pixels repeated) so the text stays readable.

    Returns:
        A new ``(L + f*H, f*W, 3)`` uint8 RGB array: a legend strip L rows high, then the image.
    """
    _check_image(image)
    height, width = image.shape[:2]
    factor = max(1, math.ceil(min_size / max(1, min(height, width))))
    canvas = np.ascontiguousarray(image).copy()
    if factor > 1:
        canvas = cv2.resize(canvas, (width * factor, height * factor), interpolation=cv2.INTER_NEAREST)
    height, width = canvas.shape[:2]
    thickness, font_scale, text_thickness = _style(height, width)

    def name(label: int) -> str:
        return class_names[label] if 0 <= label < len(class_names) else f"class {label}"

    for box, label, missed in zip(np.asarray(gt_boxes, dtype=float).reshape(-1, 4), gt_labels, gt_missed):
        corners = _box_pixels((box * factor).tolist(), height, width)
        if corners is None:
            continue
        x1, y1, x2, y2 = corners
        rim = MISSED_RIM if missed else (0, 0, 0)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), rim, thickness + 2, lineType=cv2.LINE_8)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), GROUND_TRUTH_COLOR, thickness, lineType=cv2.LINE_8)
        text = f"{name(int(label))} (missed)" if missed else name(int(label))
        cv2.putText(canvas, text, (x1 + thickness + 1, y2 - thickness - 2), cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale * 0.8, GROUND_TRUTH_COLOR, text_thickness, lineType=cv2.LINE_AA)  # fmt: skip
    order = np.argsort(np.asarray(det_scores, dtype=float), kind="stable")  # high scores drawn last
    boxes = np.asarray(det_boxes, dtype=float).reshape(-1, 4)
    for i in order:
        corners = _box_pixels((boxes[i] * factor).tolist(), height, width)
        if corners is None:
            continue
        x1, y1, x2, y2 = corners
        color = ERROR_COLORS[det_kinds[i]]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, lineType=cv2.LINE_8)
        kind = "" if det_kinds[i] == "correct" else f" {det_kinds[i]}"
        _draw_label(canvas, f"{name(int(det_labels[i]))} {det_scores[i]:.2f}{kind}", (x1, y1), color,
                    font_scale, text_thickness)  # fmt: skip
    return np.concatenate([_legend(width, font_scale, text_thickness), canvas], axis=0)


def _legend(width: int, font_scale: float, text_thickness: int) -> np.ndarray:
    """A white strip naming each colour, wrapped to ``width``."""
    entries: list[tuple[str, RGB]] = [("ground truth", (0, 0, 0)), ("missed", MISSED_RIM)]
    entries += [(kind, color) for kind, color in ERROR_COLORS.items()]
    (_, th), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_thickness)
    line = th + baseline + 8
    swatch = th
    placed: list[tuple[int, int, str, RGB]] = []
    x, row = 4, 0
    for text, color in entries:
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_thickness)
        need = swatch + 4 + tw + 12
        if x + need > width and x > 4:
            x, row = 4, row + 1
        placed.append((x, row, text, color))
        x += need
    strip = np.full(((row + 1) * line + 4, width, 3), 255, dtype=np.uint8)
    for x, r, text, color in placed:
        top = 4 + r * line
        cv2.rectangle(strip, (x, top), (x + swatch, top + swatch), color, thickness=cv2.FILLED)
        cv2.putText(strip, text, (x + swatch + 4, top + th), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), text_thickness, lineType=cv2.LINE_AA)  # fmt: skip
    return strip
