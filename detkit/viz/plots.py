"""Training plots drawn from a run's ``metrics.jsonl``.

The JSON-lines file holds two kinds of records (see :mod:`detkit.engine.trainer`)::

    {"type": "train", "iter": 20, "epoch": 1, "lr": 0.01, "loss": 1.3, "loss_rpn_cls": 0.4, ...,
     "seconds": 12.5}
    {"type": "eval", "iter": 500, "epoch": 1, "metrics": {"bbox": {"AP": 0.12, ...}}, ...}

Figures are drawn on a :class:`~matplotlib.figure.Figure` with the Agg canvas
directly, so plotting neither needs a display nor touches pyplot's global state.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detkit.errors import DataError
from detkit.io import atomic_path

#: Keys of a training record that are not loss terms.
_NOT_LOSS_TERMS = frozenset({"type", "iter", "epoch", "lr", "loss", "seconds", "nonfinite_steps"})

#: Use a log y axis when the positive losses span more than this factor.
LOG_SCALE_RATIO = 20.0


@dataclass
class _Curves:
    iters: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    terms: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    eval_iters: list[float] = field(default_factory=list)
    eval_ap: list[float] = field(default_factory=list)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def read_metrics(metrics_jsonl: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file; unparsable lines (a cut-off last line) are skipped.

    Raises:
        DataError: the file does not exist or cannot be read.
    """
    path = Path(metrics_jsonl)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read metrics file {str(path)!r}: {exc}") from exc
    records = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _collect(records: list[dict[str, Any]]) -> _Curves:
    curves = _Curves()
    for rec in records:
        it = _number(rec.get("iter"))
        if it is None:
            continue
        metrics = rec.get("metrics")
        if rec.get("type") == "eval" or isinstance(metrics, dict):
            bbox = metrics.get("bbox") if isinstance(metrics, dict) else None
            ap = _number(bbox.get("AP")) if isinstance(bbox, dict) else None
            if ap is not None:
                curves.eval_iters.append(it)
                curves.eval_ap.append(ap)
            continue
        total = _number(rec.get("loss"))
        if total is not None:
            curves.iters.append(it)
            curves.total.append(total)
            lr = _number(rec.get("lr"))
            curves.lr.append(lr if lr is not None else math.nan)
        for key, value in rec.items():
            v = _number(value)
            if key not in _NOT_LOSS_TERMS and v is not None:
                xs, ys = curves.terms.setdefault(key, ([], []))
                xs.append(it)
                ys.append(v)
    return curves


def _use_log_scale(curves: _Curves) -> bool:
    values = curves.total + [v for _, ys in curves.terms.values() for v in ys]
    if not values or min(values) <= 0:
        return False
    return max(values) / min(values) > LOG_SCALE_RATIO


def _draw(fig: Figure, curves: _Curves, title: str) -> None:
    has_eval = bool(curves.eval_ap)
    axes = fig.subplots(2 if has_eval else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    ax.set_title(title)
    if not curves.iters and not curves.terms:
        ax.text(
            0.5, 0.5, "no training records yet", ha="center", va="center", transform=ax.transAxes
        )
    for name, (xs, ys) in sorted(curves.terms.items()):
        ax.plot(xs, ys, linewidth=1.0, alpha=0.8, label=name)
    if curves.iters:
        ax.plot(curves.iters, curves.total, color="black", linewidth=2.0, label="total loss")
    if _use_log_scale(curves):
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if any(math.isfinite(v) for v in curves.lr):
        ax_lr = ax.twinx()
        ax_lr.plot(
            curves.iters, curves.lr, color="tab:gray", linestyle="--", linewidth=1.0, label="lr"
        )
        ax_lr.set_ylabel("learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        lines, labels = ax.get_legend_handles_labels()
        lines_lr, labels_lr = ax_lr.get_legend_handles_labels()
        ax.legend(lines + lines_lr, labels + labels_lr, fontsize="small", loc="upper right")
    elif curves.iters or curves.terms:
        ax.legend(fontsize="small", loc="upper right")
    if has_eval:
        ax_ap = axes[1]
        ax_ap.plot(
            curves.eval_iters, curves.eval_ap, marker="o", color="tab:green", label="bbox AP"
        )
        annotated = zip(curves.eval_iters, curves.eval_ap) if len(curves.eval_ap) <= 20 else ()
        for x, y in annotated:  # values are readable only while there are few points
            ax_ap.annotate(
                f"{y:.3f}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 5),
                ha="center",
                fontsize="x-small",
            )
        ax_ap.set_ylabel("bbox AP")
        ax_ap.grid(True, alpha=0.3)
        ax_ap.legend(fontsize="small", loc="lower right")
    axes[-1].set_xlabel("iteration")


def plot_loss_curve(metrics_jsonl: str | os.PathLike[str], out_png: str | os.PathLike[str]) -> Path:
    """Draw losses, learning rate and evaluation AP of a run into a PNG (atomically).

    Upper panel: the total loss (thick) and each loss term against the
    iteration, on a log y axis when they span more than :data:`LOG_SCALE_RATIO`,
    with the learning rate on a twin y axis. Lower panel (only when the file has
    evaluation records with ``metrics["bbox"]["AP"]``): AP against the iteration.

    Args:
        metrics_jsonl: a run's ``metrics.jsonl``.
        out_png: the image to (re)write.

    Returns:
        ``out_png`` as a :class:`Path`.

    Raises:
        DataError: ``metrics_jsonl`` cannot be read.
    """
    src = Path(metrics_jsonl)
    curves = _collect(read_metrics(src))
    fig = Figure(figsize=(9, 6.5 if curves.eval_ap else 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    _draw(fig, curves, title=f"{src.parent.name or src.name}: training")
    target = Path(out_png)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target


class NamedRecords(Protocol):
    """A run as :func:`plot_training_curves` draws it (:class:`detkit.evaluation.compare.RunSummary` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def records(self) -> list[dict[str, Any]] | None: ...


def _eval_points(records: list[dict[str, Any]], iou_type: str) -> tuple[list[float], list[float]]:
    """Iterations and ``metrics[iou_type]["AP"]`` of the evaluation records."""
    xs, ys = [], []
    for rec in records:
        metrics = rec.get("metrics")
        if rec.get("type") != "eval" or not isinstance(metrics, dict):
            continue
        block = metrics.get(iou_type)
        it = _number(rec.get("iter"))
        ap = _number(block.get("AP")) if isinstance(block, dict) else None
        if it is not None and ap is not None and ap >= 0:
            xs.append(it)
            ys.append(ap)
    return xs, ys


def plot_training_curves(runs: Sequence[NamedRecords], out_png: str | os.PathLike[str]) -> Path:
    """Draw several runs' training curves into one PNG (atomically), one colour per run.

    Left: the total training loss against the iteration, every run on one axes (log y
    when the losses span more than :data:`LOG_SCALE_RATIO`). Right: evaluation AP
    against the iteration, box AP solid and mask AP dashed where a run has it. Runs
    without records (``records is None``: no ``metrics.jsonl``) are not drawn; the
    legend names them.

    Args:
        runs: each with a ``name`` (the legend) and the ``records`` of its
            ``metrics.jsonl`` (see :func:`read_metrics`) or ``None``.
        out_png: the image to (re)write.

    Returns:
        ``out_png`` as a :class:`Path`.
    """
    fig = Figure(figsize=(12, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_ap = fig.subplots(1, 2)
    drawn = [r for r in runs if r.records is not None]
    losses: list[float] = []
    for index, run in enumerate(drawn):
        color = f"C{index % 10}"
        curves = _collect(run.records or [])
        ax_loss.plot(curves.iters, curves.total, color=color, linewidth=1.5, label=run.name)
        losses += curves.total
        for iou_type, style in (("bbox", "-"), ("segm", "--")):
            xs, ys = _eval_points(run.records or [], iou_type)
            if xs:
                kind = "box" if iou_type == "bbox" else "mask"
                ax_ap.plot(xs, ys, color=color, linestyle=style, marker="o", markersize=3,
                           label=f"{run.name} {kind} AP")
    if losses and min(losses) > 0 and max(losses) / min(losses) > LOG_SCALE_RATIO:
        ax_loss.set_yscale("log")
    ax_ap.set_ylim(bottom=0.0)
    missing = [r.name for r in runs if r.records is None]
    if missing:  # an empty line whose label names the runs that have no curve
        ax_loss.plot([], [], " ", label="not drawn (no metrics.jsonl): " + ", ".join(missing))
    for ax, ylabel, title in ((ax_loss, "total loss", "training loss"), (ax_ap, "AP", "evaluation AP")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
    target = Path(out_png)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target
