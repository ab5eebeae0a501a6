"""Benchmark detkit's selective search against OpenCV contrib's ``ximgproc`` one.

Both run on the same images with the same preset, single-threaded; detkit runs
in this process, OpenCV contrib in a separate Python environment (it clashes with
``opencv-python-headless``) through a small worker script. Reports recall at IoU
0.5 and 0.7 and COCO-style average recall (IoU 0.5:0.05:0.95) at a proposal
budget (both methods capped to their top-ranked ``--budget`` boxes), the mean
number of boxes per image (uncapped and capped) and the mean seconds per image.

Example::

    python3 -m venv /tmp/cvenv && /tmp/cvenv/bin/pip install opencv-contrib-python-headless numpy
    python tools/bench_selective_search.py --opencv-python /tmp/cvenv/bin/python \\
        --data /work/shared/data/BCCD --split test --out runs/bench_ss_bccd.json
    python tools/bench_selective_search.py --opencv-python /tmp/cvenv/bin/python \\
        --data /work/shared/data/tiny_coco/annotations/instances_val2017.json \\
        --images /work/shared/data/tiny_coco/val2017 --out runs/bench_ss_coco.json

``--seed 0,1,2,3`` runs detkit once per seed of its randomized ranking (a row each
and their mean); ``--nms-iou 1.0`` gives the paper's order (no near-duplicate demotion).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from detkit_selective_search import selective_search
from tqdm import tqdm

from detkit.engine.build import dataset_from_path
from detkit.errors import run_tool
from detkit.evaluation.proposals import ProposalRecall
from detkit.io import write_json

_WORKER = r"""
import sys, time
import numpy as np
import cv2

cv2.setNumThreads(1)
list_file, preset, out = sys.argv[1], sys.argv[2], sys.argv[3]
paths = [line.rstrip("\n") for line in open(list_file) if line.strip()]
search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
boxes, counts, seconds = [], [], []
for path in paths:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    start = time.perf_counter()
    search.setBaseImage(image)
    if preset == "fast":
        search.switchToSelectiveSearchFast()
    elif preset == "quality":
        search.switchToSelectiveSearchQuality()
    else:
        search.switchToSingleStrategy()
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)
    seconds.append(time.perf_counter() - start)
    xyxy = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    boxes.append(xyxy)
    counts.append(len(xyxy))
np.savez(out, boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
         counts=np.asarray(counts, np.int64), seconds=np.asarray(seconds, np.float64))
"""


def score(gt_per_image: list[torch.Tensor], boxes_per_image: list[np.ndarray], budget: int) -> dict[str, float]:
    """Recall at IoU 0.5 and 0.7 and AR (IoU 0.5:0.95) of the top ``budget`` boxes, all objects pooled."""
    recall = ProposalRecall([budget])
    for gt, boxes in zip(gt_per_image, boxes_per_image):
        recall.add(gt, torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))
    summary = recall.summary()
    return {"recall@0.5": summary["recall@0.5"], "recall@0.7": summary["recall@0.7"], "AR": summary["curve"]["AR"][-1]}


def run_opencv(python: str, paths: list[str], preset: str) -> tuple[list[np.ndarray], np.ndarray]:
    print(f"OpenCV contrib on {len(paths)} images ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "worker.py"
        worker.write_text(_WORKER)
        list_file = Path(tmp) / "images.txt"
        list_file.write_text("\n".join(paths) + "\n")
        out = Path(tmp) / "boxes.npz"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([python, str(worker), str(list_file), preset, str(out)], check=True, env=env)
        data = np.load(out)
        boxes = np.split(data["boxes"], np.cumsum(data["counts"])[:-1])
        return boxes, data["seconds"]


def run_detkit(paths: list[str], preset: str, seed: int, nms_iou: float | None) -> tuple[list[np.ndarray], np.ndarray]:
    cv2.setNumThreads(1)
    boxes, seconds = [], []
    for path in tqdm(paths, desc=f"detkit seed={seed}", unit="img", leave=False):
        image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        start = time.perf_counter()
        boxes.append(selective_search(image, preset=preset, seed=seed, nms_iou=nms_iou))
        seconds.append(time.perf_counter() - start)
    return boxes, np.asarray(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a Pascal VOC root or a COCO instances json")
    parser.add_argument("--images", default=None, help="image folder of a COCO json")
    parser.add_argument("--split", default="test", help="VOC split (ImageSets/Main/<split>.txt)")
    parser.add_argument("--opencv-python", required=True, help="python of a venv with opencv-contrib-python-headless")
    parser.add_argument("--preset", default="fast", choices=["single", "fast", "quality"])
    parser.add_argument("--budget", type=int, default=1000, help="proposals per image for the recall metrics")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument(
        "--seed",
        type=seed_list,
        default=[0],
        help="seeds of the randomized ranking, comma-separated (0,1,2: a row each, and the mean)",
    )
    parser.add_argument(
        "--nms-iou",
        type=float,
        default=None,
        help="detkit's near-duplicate suppression (default: the preset's; 1.0 turns it off)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    torch_threads()
    dataset = dataset_from_path(args.data, images=args.images, split=args.split)
    count = len(dataset) if args.max_images is None else min(len(dataset), args.max_images)
    paths = [str(dataset.image_path(i)) for i in range(count)]
    gt = [dataset[i].targets.without_crowd().boxes for i in range(count)]

    runners: list[tuple[str, Callable[[], tuple[list[np.ndarray], np.ndarray]]]] = [
        ("opencv_contrib", lambda: run_opencv(args.opencv_python, paths, args.preset))
    ]
    for seed in args.seed:
        name = "detkit" if len(args.seed) == 1 else f"detkit seed={seed}"
        runners.append((name, lambda seed=seed: run_detkit(paths, args.preset, seed, args.nms_iou)))
    results: dict[str, dict[str, float]] = {}
    for name, runner in runners:
        boxes, seconds = runner()
        row = score(gt, boxes, args.budget)
        row["boxes_per_image"] = float(np.mean([len(b) for b in boxes]))
        row["boxes_per_image_capped"] = float(np.mean([min(len(b), args.budget) for b in boxes]))
        row["seconds_per_image"] = float(np.mean(seconds))
        results[name] = row
    if len(args.seed) > 1:
        seeded = [row for name, row in results.items() if name.startswith("detkit seed=")]
        results["detkit mean"] = {key: float(np.mean([row[key] for row in seeded])) for key in seeded[0]}

    header = f"{'method':<20}{'R@0.5':>8}{'R@0.7':>8}{'AR':>8}{'boxes':>9}{'capped':>8}{'s/img':>8}"
    print(
        f"{args.data} ({count} images, {sum(len(g) for g in gt)} objects), preset={args.preset}, budget={args.budget}"
    )
    print(header)
    for name, row in results.items():
        print(
            f"{name:<20}{row['recall@0.5']:>8.3f}{row['recall@0.7']:>8.3f}{row['AR']:>8.3f}"
            f"{row['boxes_per_image']:>9.0f}{row['boxes_per_image_capped']:>8.0f}{row['seconds_per_image']:>8.3f}"
        )
    if args.out:
        write_json(
            args.out,
            {
                "data": args.data,
                "images": count,
                "objects": int(sum(len(g) for g in gt)),
                "preset": args.preset,
                "budget": args.budget,
                "seed": args.seed,
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "results": results,
            },
        )
    return 0


def seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers separated by commas, e.g. 0,1,2") from None


def torch_threads() -> None:
    """Single-threaded timing for every library detkit's search touches."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, "bench_selective_search.py"))
