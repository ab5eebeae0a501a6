"""detkit vs torchvision inference time, same weights, same image, one process.

Builds torchvision's fasterrcnn_resnet50_fpn with random weights (fixed seed),
imports its state dict into detkit, checks the detections agree, then times both
alternately (median of --runs runs after --warmup runs). Post-processing is forced
to full load (score threshold 0, 100 detections per image), as a trained model on
a busy image would be.

    python tools/benchmark.py                      # CPU, 2 threads
    python tools/benchmark.py --device cuda --runs 20
    python tools/benchmark.py --precision bf16     # both models under bf16 autocast
    python tools/benchmark.py --image photo.jpg --threads 4
    python tools/benchmark.py --single-shot          # also detkit's single-shot recipes vs
                                                     # torchvision's ssd300_vgg16 and ssdlite320

The single-shot table times each model at its own input size (SSD300 300x300, YOLOv1
448x448, the YOLOv3-style grid at 416) with random weights and the score threshold at 0.

--precision fp16|bf16 times every model under the same autocast (detkit's `--precision`).
The agreement check runs in fp32 first: with random weights the scores nearly tie, so
half-precision rounding reorders them differently in any two implementations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

from detkit.backbones.fold import fold_frozen_batchnorm
from detkit.data.images import image_to_tensor, read_image
from detkit.detectors import Detector, build_detector
from detkit.device import PRECISION_FLAG, PRECISIONS, autocast, check_precision
from detkit.errors import run_tool
from detkit.importers import fasterrcnn_resnet50_fpn
from detkit.plugins import load_plugins

DATA_ROOT = Path(os.environ.get("DETKIT_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
DEFAULT_IMAGE_DIR = DATA_ROOT / "tiny_coco" / "val2017"


def load_image(path: str | None) -> tuple[torch.Tensor, str]:
    if path:
        return image_to_tensor(read_image(path)), path
    photos = sorted(DEFAULT_IMAGE_DIR.glob("*.jpg"))
    if photos:
        return image_to_tensor(read_image(photos[0])), str(photos[0])
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 480, 640, generator=g), "random 480x640 image"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_model(fn, image: torch.Tensor, device: torch.device, precision: str = "fp32") -> float:
    sync(device)
    start = time.perf_counter()
    with torch.no_grad(), autocast(device, precision):
        fn([image])
    sync(device)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image", default=None, help="image file (default: a tiny_coco photo)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--single-shot", action="store_true", help="also time the single-shot recipes")
    parser.add_argument(
        "--channels-last", action="store_true",
        help="run detkit's convolutions on NHWC tensors (faster on the CPU; boxes move by up to ~0.012 px)",
    )
    parser.add_argument(
        "--precision", default="fp32", metavar="|".join(PRECISIONS),
        help="time the models under this autocast precision (default fp32)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with warnings.catch_warnings(record=True) as caught:  # a CPU without AMX: one line, as detkit's
        warnings.simplefilter("always")
        precision = check_precision(args.precision, device, source=PRECISION_FLAG)
    for warning in caught:
        print(f"benchmark.py: warning: {warning.message}", file=sys.stderr)

    torch.manual_seed(0)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0
    ).eval().to(device)
    config, class_names, state = fasterrcnn_resnet50_fpn().convert(tv.state_dict())
    config["model"]["postprocess"]["score_thresh"] = 0.0
    ours = build_detector(config, load_plugins().registry, num_classes=len(class_names)).eval().to(device)
    ours.load_state_dict(state)
    fold_frozen_batchnorm(ours)  # as `detkit detect` and `detkit eval` do
    if args.channels_last:
        ours.use_channels_last()
    image, image_name = load_image(args.image)
    image = image.to(device)

    with torch.no_grad():
        a = tv([image])[0]
        b = ours([image])[0][0]
    same = len(a["boxes"]) == len(b) and torch.allclose(a["boxes"], b.boxes, atol=0.01)
    print(
        f"image: {image_name} {tuple(image.shape[1:])}, device {device}, threads {torch.get_num_threads()}, "
        f"precision {precision}"
    )
    print(f"channels-last: {args.channels_last}")
    print(f"detections (fp32): torchvision {len(a['boxes'])}, detkit {len(b)}, identical boxes: {same}")

    for _ in range(args.warmup):
        time_model(tv, image, device, precision)
        time_model(ours, image, device, precision)
    tv_times, our_times = [], []
    for _ in range(args.runs):  # interleaved, so drifts in machine load hit both alike
        tv_times.append(time_model(tv, image, device, precision))
        our_times.append(time_model(ours, image, device, precision))
    tv_ms = statistics.median(tv_times) * 1000
    our_ms = statistics.median(our_times) * 1000
    ratio = tv_ms / our_ms
    print(f"{'model (' + precision + ')':<34}{'median ms':>12}")
    print(f"{'torchvision fasterrcnn_resnet50_fpn':<34}{tv_ms:>12.1f}")
    print(f"{'detkit faster_rcnn_r50_fpn':<34}{our_ms:>12.1f}")
    print(f"speed-up (torchvision / detkit): {ratio:.2f}x")
    figures: dict = {"device": str(device), "threads": torch.get_num_threads(), "image": image_name,
                     "precision": precision, "torchvision_ms": tv_ms, "detkit_ms": our_ms, "ratio": ratio,
                     "identical": same, "channels_last": args.channels_last}
    if args.single_shot:
        figures["single_shot_ms"] = time_single_shot(
            image, device, runs=args.runs, warmup=args.warmup, precision=precision,
            channels_last=args.channels_last,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if same else 1


SINGLE_SHOT_CONFIGS = ("ssd300_vgg16.yaml", "yolo_v1.yaml", "yolo_grid.yaml")


def time_single_shot(
    image: torch.Tensor, device: torch.device, *, runs: int, warmup: int, precision: str = "fp32",
    channels_last: bool = False,
) -> dict[str, float]:
    """Median ms of detkit's single-shot recipes and torchvision's SSDs, interleaved."""
    from detkit.config import load_config
    from detkit.importers import CONFIG_DIR, torchvision_coco_classes

    num_classes = len(torchvision_coco_classes())
    registry = load_plugins().registry
    models = {
        "torchvision ssd300_vgg16": torchvision.models.detection.ssd300_vgg16(
            weights=None, weights_backbone=None, score_thresh=0.0),
        "torchvision ssdlite320_mobilenet_v3_large": torchvision.models.detection.ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, score_thresh=0.0),
    }
    for name in SINGLE_SHOT_CONFIGS:
        config = load_config(CONFIG_DIR / name, ["model.postprocess.score_thresh=0.0"])
        models[f"detkit {name}"] = build_detector(config, registry, num_classes=num_classes)
    for model in models.values():
        model.eval().to(device)
        fold_frozen_batchnorm(model)
        if channels_last and isinstance(model, Detector):
            model.use_channels_last()
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(warmup + runs):
        for name, model in models.items():
            elapsed = time_model(model, image, device, precision)
            if i >= warmup:
                times[name].append(elapsed)
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(f"\n{'single-shot model (random weights, ' + precision + ')':<46}{'median ms':>12}")
    for name, ms in medians.items():
        print(f"{name:<46}{ms:>12.1f}")
    return medians


if __name__ == "__main__":
    raise SystemExit(run_tool(main, "benchmark.py"))
