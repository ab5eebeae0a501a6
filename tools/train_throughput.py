"""Training throughput (images per second) of a recipe at each precision, in one run.

For each precision the recipe's model, data and loader are built as ``detkit train``
builds them, the trainer runs ``--warmup`` iterations, then ``--iters`` timed ones;
throughput is the images of the timed iterations over their wall time (the
trainer's own records, so data loading counts, as it does in a real run).

    python tools/train_throughput.py detkit:shapes_faster_rcnn.yaml                # fp32, bf16 on the CPU
    python tools/train_throughput.py detkit:bccd_faster_rcnn.yaml --device cuda \\
        --precisions fp32 fp16 bf16 train.batch_size=8

Prints a table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from detkit.config import load_config
from detkit.engine.build import build_dataset, model_and_components, plugins_for
from detkit.engine.run import seed_and_threads, train_loader
from detkit.engine.trainer import Trainer
from detkit.io import write_json
from detkit.memory import reuse_freed_memory


def measure(
    recipe: str, overrides: list[str], precision: str, *, device: str, warmup: int, iters: int
) -> dict[str, Any]:
    """Images per second of ``iters`` timed iterations after ``warmup`` ones."""
    config = load_config(recipe, [
        *overrides, f"train.precision={precision}", f"train.device={device}", f"train.max_iters={warmup + iters}",
        f"train.log_period={warmup}", "train.max_minutes=null", "train.eval_period=0", "data.check=off",
    ])
    seed_and_threads(config["train"])
    plugins = plugins_for(config, ())
    dataset = build_dataset(config, "train", plugins)
    class_names = list(dataset.class_names)
    config["model"]["class_names"], config["model"]["num_classes"] = class_names, len(class_names)
    model, _ = model_and_components(config, plugins, class_names=class_names)
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU-without-AMX note, once per precision
        Trainer(
            model=model, train_loader=train_loader(config, dataset), evaluate=lambda m: {}, out_dir=out,
            config=config, class_names=class_names, progress=False,
        ).train()
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    seconds = {r["iter"]: r["seconds"] for r in records if r["type"] == "train"}
    elapsed = seconds[warmup + iters] - seconds[warmup]
    images = iters * int(config["train"]["batch_size"])
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and device != "cpu" else None
    return {"precision": precision, "img_per_s": images / elapsed, "seconds": elapsed, "images": images,
            "batch_size": int(config["train"]["batch_size"]), "cuda_max_mb": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a config file or detkit:NAME.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda (default cpu)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first (default 10)")
    parser.add_argument("--iters", type=int, default=40, help="timed iterations, a multiple of --warmup (default 40)")
    parser.add_argument("--out", default="runs/train_throughput.json", help="where the JSON goes")
    args = parser.parse_args()
    logging.getLogger("detkit.engine.trainer").setLevel(logging.ERROR)  # no evaluation here, and no AP to miss
    if args.iters % args.warmup:
        parser.error("--iters must be a multiple of --warmup")
    reuse_freed_memory()  # as `detkit train` does
    rows = [measure(args.recipe, args.overrides, p, device=args.device, warmup=args.warmup, iters=args.iters)
            for p in args.precisions]
    base = rows[0]["img_per_s"]
    print(f"{args.recipe} on {args.device}, batch {rows[0]['batch_size']}, {args.iters} timed iterations")
    for row in rows:
        ratio = row["img_per_s"] / base
        print(f"  {row['precision']:5s} {row['img_per_s']:8.2f} img/s  ({ratio:.2f}x {rows[0]['precision']})")
    write_json(args.out, {"recipe": args.recipe, "device": args.device, "overrides": args.overrides, "rows": rows,
                          "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
