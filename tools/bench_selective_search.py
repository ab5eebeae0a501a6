"""Benchmark detkit's selective search against OpenCV contrib's ``ximgproc`` one.

Both run on the same images with the same preset, single-threaded; detkit runs
in this process, OpenCV contrib in a separate Python environment (it clashes with
``opencv-python-headless``) through a small worker process. The two take turns
image by image (OpenCV, then detkit for each seed), each waiting while the other
works, so a change of machine load during the run weighs on both alike. Reports recall at IoU
0.5 and 0.7 and COCO-style average recall (IoU 0.5:0.05:0.95) at a proposal
budget (both methods capped to their top-ranked ``--budget`` boxes), the mean
number of boxes per image (uncapped and capped), the mean seconds per image and
each method's total time over OpenCV contrib's (``time``).

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
preset = sys.argv[1]
search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
for line in sys.stdin:  # one request a line: image path <TAB> output .npy path
    path, out = line.rstrip("\n").split("\t")
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
    seconds = time.perf_counter() - start
    np.save(out, np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1))
    print(seconds, flush=True)
"""


class OpenCVWorker:
    """OpenCV contrib's selective search in a worker process of another Python, one image per call."""

    def __init__(self, python: str, preset: str) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        worker = Path(self._tmp.name) / "worker.py"
        worker.write_text(_WORKER)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self._python = python
        self._process = subprocess.Popen(
            [python, str(worker), preset], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self._calls = 0

    def __call__(self, path: str) -> tuple[np.ndarray, float]:
        """Boxes ``(R, 4)`` xyxy of the image at ``path`` and the seconds OpenCV took."""
        assert self._process.stdin is not None and self._process.stdout is not None
        out = Path(self._tmp.name) / f"{self._calls}.npy"
        self._calls += 1
        self._process.stdin.write(f"{path}\t{out}\n")
        self._process.stdin.flush()
        reply = self._process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the OpenCV worker ({self._python}) stopped on {path}")
        boxes = np.load(out)
        out.unlink()
        return boxes, float(reply)

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait()
        self._tmp.cleanup()


def score(gt_per_image: list[torch.Tensor], boxes_per_image: list[np.ndarray], budget: int) -> dict[str, float]:
    """Recall at IoU 0.5 and 0.7 and AR (IoU 0.5:0.95) of the top ``budget`` boxes, all objects pooled."""
    recall = ProposalRecall([budget])
    for gt, boxes in zip(gt_per_image, boxes_per_image):
        recall.add(gt, torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))
    summary = recall.summary()
    return {"recall@0.5": summary["recall@0.5"], "recall@0.7": summary["recall@0.7"], "AR": summary["curve"]["AR"][-1]}


def run_interleaved(
    python: str, paths: list[str], preset: str, seeds: list[int], nms_iou: float | None
) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """Boxes and seconds per image of OpenCV contrib and of detkit at each seed, taking turns on every image."""
    cv2.setNumThreads(1)
    names = ["opencv_contrib"] + ["detkit" if len(seeds) == 1 else f"detkit seed={seed}" for seed in seeds]
    boxes: dict[str, list[np.ndarray]] = {name: [] for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    opencv = OpenCVWorker(python, preset)
    try:
        for path in tqdm(paths, desc="OpenCV contrib and detkit", unit="img", leave=False):
            found, took = opencv(path)
            boxes[names[0]].append(found)
            seconds[names[0]].append(took)
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)
            if bgr is None:
                raise FileNotFoundError(f"cannot read image {path}")
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            for name, seed in zip(names[1:], seeds):
                start = time.perf_counter()
                boxes[name].append(selective_search(image, preset=preset, seed=seed, nms_iou=nms_iou))
                seconds[name].append(time.perf_counter() - start)
    finally:
        opencv.close()
    return {name: (boxes[name], np.asarray(seconds[name])) for name in names}


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

    results: dict[str, dict[str, float]] = {}
    runs = run_interleaved(args.opencv_python, paths, args.preset, args.seed, args.nms_iou)
    for name, (boxes, seconds) in runs.items():
        row = score(gt, boxes, args.budget)
        row["boxes_per_image"] = float(np.mean([len(b) for b in boxes]))
        row["boxes_per_image_capped"] = float(np.mean([min(len(b), args.budget) for b in boxes]))
        row["seconds_per_image"] = float(np.mean(seconds))
        row["time_vs_opencv"] = float(np.sum(seconds) / max(np.sum(runs["opencv_contrib"][1]), 1e-12))
        results[name] = row
    if len(args.seed) > 1:
        seeded = [row for name, row in results.items() if name.startswith("detkit seed=")]
        results["detkit mean"] = {key: float(np.mean([row[key] for row in seeded])) for key in seeded[0]}

    header = f"{'method':<20}{'R@0.5':>8}{'R@0.7':>8}{'AR':>8}{'boxes':>9}{'capped':>8}{'s/img':>8}{'time':>7}"
    print(
        f"{args.data} ({count} images, {sum(len(g) for g in gt)} objects), preset={args.preset}, budget={args.budget}"
    )
    print(header)
    for name, row in results.items():
        print(
            f"{name:<20}{row['recall@0.5']:>8.3f}{row['recall@0.7']:>8.3f}{row['AR']:>8.3f}"
            f"{row['boxes_per_image']:>9.0f}{row['boxes_per_image_capped']:>8.0f}{row['seconds_per_image']:>8.3f}"
            f"{row['time_vs_opencv']:>6.2f}x"
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
