"""Time CocoEvaluator's two COCOeval backends on a generated set the size of COCO val2017.

The set is made with numpy: ``--images`` images of 640x480 with a Poisson number of
objects each (mean ``--objects``; 5,000 x 7 = about 35k, as in val2017), boxes of
every COCO area range in 80 categories and 1% crowd regions, and exactly
``--dets`` detections per image (100, pycocotools' maxDets: 500k in all): jittered
copies of the objects, some with the wrong class, and random boxes, with random
scores, the copies mostly higher. Each backend gets a fresh
:class:`~detkit.evaluation.coco.CocoEvaluator` holding the same detections, and its
``evaluate()`` is timed (loading the results, per-image matching, accumulation,
summary). Prints
both times, the ratio pycocotools / faster and the largest difference between the
two backends' twelve numbers and per-class APs.

Example::

    python tools/bench_coco_eval.py
    python tools/bench_coco_eval.py --images 500 --backend faster   # one backend: its peak memory alone
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import numpy as np
import torch

from detkit.data.base import coco_from_dict
from detkit.errors import run_tool
from detkit.evaluation.coco import BACKENDS, METRIC_NAMES, CocoEvaluator
from detkit.structures import Detections

WIDTH, HEIGHT, NUM_CLASSES = 640, 480, 80


def generate(num_images: int, objects: float, dets: int, seed: int) -> tuple[dict, dict[int, Detections]]:
    """A COCO instances dict and ``dets`` detections per image (label index = category id - 1)."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], {}
    size = np.array([WIDTH, HEIGHT])
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": HEIGHT, "width": WIDTH})
        n = int(rng.poisson(objects))
        wh = np.exp(rng.uniform(np.log(6), np.log(450), (n, 2)))  # small, medium and large
        xy = rng.uniform(0, 1, (n, 2)) * (size - wh).clip(1)
        labels = rng.integers(NUM_CLASSES, size=n)
        crowd = rng.random(n) < 0.01
        for k in range(n):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(labels[k]) + 1,
                "bbox": [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
                "area": float(wh[k, 0] * wh[k, 1]), "iscrowd": int(crowd[k]),
            })  # fmt: skip
        # up to 3 jittered copies of each object, the rest random boxes
        copies = rng.integers(0, 4, n)
        source = np.repeat(np.arange(n), copies)[:dets]
        gt_xyxy = np.concatenate([xy, xy + wh], axis=1)
        jittered = gt_xyxy[source] + rng.normal(0, 0.07, (len(source), 4)) * np.tile(wh[source], 2)
        copy_labels = np.where(rng.random(len(source)) < 0.1, rng.integers(NUM_CLASSES, size=len(source)),
                               labels[source])  # fmt: skip
        m = dets - len(source)
        fp_xy = rng.uniform(0, 1, (m, 2)) * size
        random_boxes = np.concatenate([fp_xy, fp_xy + np.exp(rng.uniform(np.log(4), np.log(300), (m, 2)))], axis=1)
        boxes = np.concatenate([jittered, random_boxes]).clip(0, np.tile(size, 2))
        scores = np.concatenate([rng.uniform(0.2, 1.0, len(source)), rng.uniform(0.01, 0.6, m)])
        detections[image_id] = Detections(
            boxes=torch.tensor(boxes, dtype=torch.float32),
            scores=torch.tensor(scores, dtype=torch.float32),
            labels=torch.tensor(np.concatenate([copy_labels, rng.integers(NUM_CLASSES, size=m)]), dtype=torch.int64),
        )
    categories = [{"id": k + 1, "name": f"class{k + 1}"} for k in range(NUM_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--objects", type=float, default=7.0, help="mean objects per image")
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=BACKENDS, action="append", help="time only these (default: both)")
    args = parser.parse_args(argv)
    backends = args.backend or ["pycocotools", "faster"]

    data, detections = generate(args.images, args.objects, args.dets, args.seed)
    gt = coco_from_dict(data)
    print(
        f"{len(data['images'])} images, {len(data['annotations'])} objects, "
        f"{sum(len(d) for d in detections.values())} detections"
    )
    names = [c["name"] for c in data["categories"]]
    ids = [c["id"] for c in data["categories"]]
    seconds, metrics = {}, {}
    for backend in backends:
        evaluator = CocoEvaluator(gt, class_names=names, category_ids=ids, backend=backend)
        for image_id, dets in detections.items():
            evaluator.add(image_id, dets)
        gc.collect()
        start = time.perf_counter()
        metrics[backend] = evaluator.evaluate()["bbox"]
        seconds[backend] = time.perf_counter() - start
        del evaluator
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{backend:<12} evaluate {seconds[backend]:7.2f} s   (process peak RSS so far {peak_gb:.2f} GB)")
        print("  " + "  ".join(f"{n} {metrics[backend][n]:.3f}" for n in METRIC_NAMES))
    if len(seconds) == 2:
        ref, fast = metrics["pycocotools"], metrics["faster"]
        diff = max(
            [abs(ref[n] - fast[n]) for n in METRIC_NAMES]
            + [abs(ref["per_class"][c] - fast["per_class"][c]) for c in names]
        )
        print(f"speed ratio pycocotools / faster: {seconds['pycocotools'] / seconds['faster']:.1f}x")
        print(f"largest difference of the 12 numbers and {len(names)} per-class APs: {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_tool(main, "bench_coco_eval.py"))
