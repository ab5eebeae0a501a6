"""Put trained detectors side by side: box AP, AP50, training time and test seconds per image.

Each argument is a training output folder of ``detkit train`` (``best.pt``,
``metrics.jsonl``). AP and AP50 are those of the run's final evaluation, the
training time is the wall time the run recorded at that evaluation (R-CNN's SVM
and box-regressor fitting included). Test time is measured here, one image at a
time on the first ``--max-images`` images of the run's validation set, after
one warm-up image, with proposals computed afresh (the selective-search cache is
turned off), on ``--threads`` CPU threads; the proposer's share is timed apart
(the papers quote detection time without proposals).

    python tools/compare_detectors.py runs/shapes_faster_rcnn runs/shapes_fast_rcnn runs/shapes_rcnn \\
        runs/shapes_sliding_window --max-images 20 --out runs/compare_shapes.json

Prints a Markdown table (the README's) and writes the numbers to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from detkit.engine.build import build_dataset, load_model
from detkit.errors import DataError, run_tool
from detkit.io import write_json


def final_record(run: Path) -> dict:
    """The last evaluation record of a run's ``metrics.jsonl``."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found; give the output folders of detkit train runs")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in records if r.get("type") == "eval"]
    if not evals:
        raise DataError(f"{path}: no evaluation record; did the run finish?")
    return evals[-1]


def test_seconds(run: Path, *, max_images: int) -> tuple[float, float, int]:
    """Mean seconds per image of ``best.pt`` on the run's validation images (proposals not cached),
    the part of them the proposer took, and the number of images timed."""
    from detkit.config import load_config

    config = load_config(run / "config.yaml")
    overrides = []
    if config["model"].get("proposer", {}).get("name") == "selective_search":
        overrides.append("model.proposer.cache=false")
    loaded, plugins = load_model(run / "best.pt", overrides=overrides)
    model = loaded.model.to("cpu").eval()
    dataset = build_dataset(loaded.config, "val", plugins)
    count = min(max_images + 1, len(dataset))
    proposer = getattr(model, "proposer", None)
    # the proposals are timed apart: the papers report detection time without them
    proposer_clock = ForwardClock(proposer) if proposer is not None else None
    seconds, proposals = [], []
    with torch.no_grad():
        for i in tqdm(range(count), desc=run.name, unit="img", leave=False):
            image = dataset[i].image
            start = time.perf_counter()
            model([image])
            seconds.append(time.perf_counter() - start)
            proposals.append(proposer_clock.take() if proposer_clock is not None else 0.0)
    timed = seconds[1:] or seconds  # the first image warms up
    timed_proposals = proposals[1:] or proposals
    return sum(timed) / len(timed), sum(timed_proposals) / len(timed_proposals), len(timed)


class ForwardClock:
    """Seconds a module spends in its ``forward`` (through forward hooks), summed until :meth:`take`."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds = 0.0
        self._started = 0.0
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def _start(self, *_: object) -> None:
        self._started = time.perf_counter()

    def _stop(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._started

    def take(self) -> float:
        """The seconds summed since the last call."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="detkit train output folders")
    parser.add_argument("--max-images", type=int, default=20, help="validation images timed per run (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for run in args.runs:
        record = final_record(run)
        bbox = record["metrics"]["bbox"]
        seconds, proposal_seconds, images = test_seconds(run, max_images=args.max_images)
        rows.append({
            "run": str(run), "AP": bbox["AP"], "AP50": bbox["AP50"], "iterations": record["iter"],
            "train_minutes": record["seconds"] / 60.0, "test_seconds_per_image": seconds,
            "proposal_seconds_per_image": proposal_seconds, "timed_images": images,
        })
        print(f"{run}: done", file=sys.stderr)
    print("| run | box AP | AP50 | iterations | training (min) | test (s/image) | of which proposals | without them |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rest = r["test_seconds_per_image"] - r["proposal_seconds_per_image"]
        print(f"| {r['run']} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['iterations']} | {r['train_minutes']:.1f} "
              f"| {r['test_seconds_per_image']:.3f} | {r['proposal_seconds_per_image']:.3f} | {rest:.3f} |")
    if args.out:
        write_json(args.out, {"threads": args.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(run_tool(main, "compare_detectors.py"))
