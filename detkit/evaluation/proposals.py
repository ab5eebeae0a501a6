"""Proposal quality: recall and average recall (AR) against the number of proposals.

A proposer is scored on how well its top-ranked boxes cover the ground-truth
objects, whatever their class (Hosang et al., "What makes for effective detection
proposals?", 2015, and the COCO evaluation's AR):

* for every object, its *best IoU* with the first ``k`` proposals of its image
  (proposals in the proposer's ranking, objects with ``iscrowd`` left out);
* recall at IoU ``t`` and budget ``k``: the fraction of objects whose best IoU with
  the first ``k`` proposals is at least ``t``;
* AR@k: recall at ``k`` averaged over the COCO thresholds ``0.50:0.05:0.95``;
  AR_small/medium/large@k: the same over objects of a COCO size range (box area in
  the original image's pixels: small below 32², medium below 96², large above).

Objects are pooled over all images (an image with many objects weighs more). An
object may be covered by the same proposal as another object: there is no
one-to-one assignment, as in proposal-recall evaluations (pycocotools' AR matches
greedily and can come out a little lower).

Shape glossary: G objects of one image, R proposals of one image, B budgets,
T IoU thresholds, O objects of all images pooled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detkit.io import atomic_path
from detkit.ops import box_iou

__all__ = [
    "AREA_RANGES",
    "COCO_IOU_THRESHOLDS",
    "SUMMARY_BUDGETS",
    "ProposalRecall",
    "average_recall",
    "best_iou_per_budget",
    "box_areas",
    "format_table",
    "plot_recall_curves",
    "proposal_budgets",
    "recall_at_thresholds",
    "size_masks",
    "summarize",
]

#: IoU thresholds of COCO's AR: 0.50, 0.55, ..., 0.95.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

#: COCO size ranges ``[low, high)`` of an object's area in square pixels.
AREA_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}

#: Budgets with a headline AR number (``AR@10``, ``AR@100``, ``AR@1000``).
SUMMARY_BUDGETS: tuple[int, ...] = (10, 100, 1000)

#: The budget of the size breakdown (``AR_small@1000``, ...).
SIZE_BUDGET = 1000


def proposal_budgets(max_proposals: int) -> list[int]:
    """The budgets ``k`` of a recall curve: 1, 2, 5, 10, 20, 50, ... up to ``max_proposals``.

    ``max_proposals`` itself is always the last budget.
    """
    if max_proposals < 1:
        raise ValueError(f"max_proposals must be at least 1, got {max_proposals}")
    budgets: list[int] = []
    decade = 1
    while decade <= max_proposals:
        budgets += [k for k in (decade, 2 * decade, 5 * decade) if k <= max_proposals]
        decade *= 10
    if budgets[-1] != max_proposals:
        budgets.append(max_proposals)
    return budgets


def best_iou_per_budget(gt_boxes: Tensor, proposal_boxes: Tensor, budgets: Sequence[int]) -> Tensor:
    """Best IoU of every object with the first ``k`` proposals, for each budget ``k``.

    The IoU is computed once against the first ``max(budgets)`` proposals; a running
    maximum over proposals then gives the best IoU for every prefix.

    Args:
        gt_boxes: ``(G, 4)`` xyxy objects of one image.
        proposal_boxes: ``(R, 4)`` xyxy proposals of the same image, best first.
        budgets: B positive budgets (need not be sorted); a budget above R sees all R.

    Returns:
        ``(G, B)`` float32; 0 where the image has no proposals.
    """
    if any(int(k) < 1 for k in budgets):
        raise ValueError(f"budgets must be positive, got {list(budgets)}")
    num_gt, num_budgets = int(gt_boxes.shape[0]), len(budgets)
    k_max = min(max((int(k) for k in budgets), default=0), int(proposal_boxes.shape[0]))
    if num_gt == 0 or num_budgets == 0 or k_max == 0:
        return torch.zeros((num_gt, num_budgets), dtype=torch.float32)
    iou = box_iou(gt_boxes.detach().float().cpu(), proposal_boxes[:k_max].detach().float().cpu())  # (G, k_max)
    running_best = iou.cummax(dim=1).values  # (G, k_max): column j = best over proposals 0..j
    columns = torch.tensor([min(int(k), k_max) - 1 for k in budgets], dtype=torch.int64)  # (B,)
    return running_best[:, columns]  # (G, k_max) -> (G, B)


def recall_at_thresholds(best_iou: Tensor, thresholds: Sequence[float] = COCO_IOU_THRESHOLDS) -> Tensor:
    """Fraction of objects whose best IoU reaches each threshold.

    Args:
        best_iou: ``(O, B)`` best IoU per object and budget.
        thresholds: T IoU thresholds (an object counts when its IoU is ``>=`` the threshold).

    Returns:
        ``(T, B)`` float64 recall; NaN when there are no objects (O = 0).
    """
    thr = torch.tensor(list(thresholds), dtype=torch.float64)  # (T,)
    if best_iou.shape[0] == 0:
        return torch.full((len(thr), best_iou.shape[1]), math.nan, dtype=torch.float64)
    # (1, O, B) >= (T, 1, 1) -> (T, O, B) -> mean over objects -> (T, B)
    hits = best_iou.double()[None] >= thr[:, None, None]
    return hits.double().mean(dim=1)


def average_recall(best_iou: Tensor, thresholds: Sequence[float] = COCO_IOU_THRESHOLDS) -> Tensor:
    """AR per budget: recall averaged over ``thresholds`` (COCO's by default).

    ``(O, B) -> (B,)`` float64; NaN when there are no objects.
    """
    return recall_at_thresholds(best_iou, thresholds).mean(dim=0)


def box_areas(boxes: Tensor) -> Tensor:
    """Areas of ``(G, 4)`` xyxy boxes, ``(G,)`` float32 (negative sides count as 0)."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).float()
    return wh[:, 0] * wh[:, 1]


def size_masks(areas: Tensor, ranges: Mapping[str, tuple[float, float]] = AREA_RANGES) -> dict[str, Tensor]:
    """For each size range, a ``(O,)`` bool mask of the objects whose area lies in ``[low, high)``."""
    return {name: (areas >= low) & (areas < high) for name, (low, high) in ranges.items()}


def _number(value: float) -> float | None:
    """A float for JSON: ``None`` for NaN (no objects to measure)."""
    return None if math.isnan(value) else float(value)


def summarize(best_iou: Tensor, areas: Tensor, budgets: Sequence[int]) -> dict[str, Any]:
    """Every proposal-recall number from the pooled best IoUs.

    Args:
        best_iou: ``(O, B)`` best IoU of every object (all images) per budget.
        areas: ``(O,)`` object box areas in original image pixels.
        budgets: the B budgets of the columns, increasing.

    Returns:
        A JSON-ready dict; numbers are ``None`` where undefined (no objects of a
        size, or a headline budget above the largest budget)::

            num_objects, num_objects_by_size {small, medium, large},
            max_proposals (the largest budget),
            "recall@0.5", "recall@0.7"        at the largest budget,
            "AR@10", "AR@100", "AR@1000",
            "AR_small@1000", "AR_medium@1000", "AR_large@1000",
            curve: {proposals: budgets, "recall@0.5", "recall@0.7", AR,
                    AR_small, AR_medium, AR_large: one value per budget}
    """
    budgets = [int(k) for k in budgets]
    recall_50_70 = recall_at_thresholds(best_iou, (0.5, 0.7))  # (2, B)
    ar = average_recall(best_iou)  # (B,)
    masks = size_masks(areas)
    ar_by_size = {name: average_recall(best_iou[mask]) for name, mask in masks.items()}

    def at(values: Tensor, k: int) -> float | None:
        return _number(float(values[budgets.index(k)])) if k in budgets else None

    curve: dict[str, Any] = {
        "proposals": budgets,
        "recall@0.5": [_number(float(v)) for v in recall_50_70[0]],
        "recall@0.7": [_number(float(v)) for v in recall_50_70[1]],
        "AR": [_number(float(v)) for v in ar],
        **{f"AR_{name}": [_number(float(v)) for v in values] for name, values in ar_by_size.items()},
    }
    summary: dict[str, Any] = {
        "num_objects": int(best_iou.shape[0]),
        "num_objects_by_size": {name: int(mask.sum()) for name, mask in masks.items()},
        "max_proposals": budgets[-1],
        "recall@0.5": at(recall_50_70[0], budgets[-1]),
        "recall@0.7": at(recall_50_70[1], budgets[-1]),
        **{f"AR@{k}": at(ar, k) for k in SUMMARY_BUDGETS},
        **{f"AR_{name}@{SIZE_BUDGET}": at(values, SIZE_BUDGET) for name, values in ar_by_size.items()},
        "curve": curve,
    }
    return summary


@dataclass
class ProposalRecall:
    """Accumulates the best IoUs of every object, image by image.

    Only ``(G, B)`` numbers per image are kept, never the proposals.

    Args:
        budgets: the B budgets, increasing (see :func:`proposal_budgets`).
    """

    budgets: list[int]
    _best_iou: list[Tensor] = field(default_factory=list)
    _areas: list[Tensor] = field(default_factory=list)
    num_images: int = 0

    def add(self, gt_boxes: Tensor, proposal_boxes: Tensor, iscrowd: Tensor | None = None) -> Tensor:
        """Score one image; returns its ``(G', B)`` best IoUs (crowd objects left out).

        Args:
            gt_boxes: ``(G, 4)`` objects in original image pixels.
            proposal_boxes: ``(R, 4)`` proposals in the same pixels, best first.
            iscrowd: ``(G,)`` bool; crowd objects are not scored.
        """
        if iscrowd is not None:
            gt_boxes = gt_boxes[~iscrowd.bool().to(gt_boxes.device)]
        best = best_iou_per_budget(gt_boxes, proposal_boxes, self.budgets)
        self._best_iou.append(best)
        self._areas.append(box_areas(gt_boxes.detach().cpu()))
        self.num_images += 1
        return best

    def pooled(self) -> tuple[Tensor, Tensor]:
        """``(O, B)`` best IoUs and ``(O,)`` areas of every object added so far."""
        if not self._best_iou:
            return torch.zeros((0, len(self.budgets))), torch.zeros((0,))
        return torch.cat(self._best_iou), torch.cat(self._areas)

    def summary(self) -> dict[str, Any]:
        """:func:`summarize` of every object added so far, plus ``num_images``."""
        best, areas = self.pooled()
        return {"num_images": self.num_images, **summarize(best, areas, self.budgets)}


# ----------------------------------------------------------------------------- reports


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """One line per proposer.

    Each row has ``name``, ``proposals_per_image``, ``seconds_per_image`` and the
    keys of :func:`summarize`; ``-`` marks a number that is undefined.
    """
    rows = list(rows)
    columns = [
        ("props/img", "proposals_per_image", ".1f"),
        ("s/img", "seconds_per_image", ".4f"),
        ("R@0.5", "recall@0.5", ".3f"),
        ("R@0.7", "recall@0.7", ".3f"),
        *[(f"AR@{k}", f"AR@{k}", ".3f") for k in SUMMARY_BUDGETS],
        *[(f"AR{name[0]}@{SIZE_BUDGET}", f"AR_{name}@{SIZE_BUDGET}", ".3f") for name in AREA_RANGES],
    ]
    width = max([len("proposer"), *(len(str(r["name"])) for r in rows)])
    widths = [max(len(title), 7) for title, _, _ in columns]
    lines = ["  ".join([f"{'proposer':<{width}}", *(f"{t:>{w}}" for (t, _, _), w in zip(columns, widths))])]
    for row in rows:
        cells = [f"{_cell(row.get(key), fmt):>{w}}" for (_, key, fmt), w in zip(columns, widths)]
        lines.append("  ".join([f"{row['name']!s:<{width}}", *cells]))
    max_k = ", ".join(sorted({str(r.get("max_proposals")) for r in rows}))
    lines.append(
        f"R@t: recall at IoU t with up to {max_k} proposals per image; AR@k: recall averaged over "
        f"IoU 0.50:0.05:0.95 with the top k; ARs/m/l: small/medium/large objects"
    )
    return "\n".join(lines)


def plot_recall_curves(results: Sequence[Mapping[str, Any]], out_png: str | os.PathLike[str]) -> Path:
    """Draw recall@0.5 and AR against the number of proposals (log x), one curve per proposer.

    Args:
        results: per proposer, ``name`` and the ``curve`` of :func:`summarize`.
        out_png: the image to (re)write, atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_recall, ax_ar = fig.subplots(1, 2, sharex=True)
    for result in results:
        curve = result["curve"]
        ks = curve["proposals"]
        for ax, key in ((ax_recall, "recall@0.5"), (ax_ar, "AR")):
            ys = [math.nan if v is None else v for v in curve[key]]
            ax.plot(ks, ys, marker="o", markersize=3, linewidth=1.5, label=str(result["name"]))
    for ax, title in ((ax_recall, "recall at IoU 0.5"), (ax_ar, "average recall, IoU 0.50:0.05:0.95")):
        ax.set_xscale("log")
        ax.set_xlabel("number of proposals per image")
        ax.set_ylim(0.0, 1.0)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_recall.set_ylabel("recall")
    ax_ar.set_ylabel("AR")
    if results:
        ax_recall.legend(fontsize="small", loc="lower right")
    target = Path(out_png)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target
