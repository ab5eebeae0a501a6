"""Does fine-tuning pay? Pretrain on shapes, then learn other shapes in other colours from few images.

Three runs of the same recipe (``configs/shapes_faster_rcnn.yaml``), on iteration
budgets so that a busy machine changes the wall time, not the result:

1. **pretrain** on the demo's shapes data (600 images, four shapes, bright colours);
2. **fine-tune** from it on a new dataset: two of the shapes (``--classes``) in the
   pastel palette, ``--num-train`` images; ``train.init_weights`` keeps the rows of
   the classes shared by name;
3. **scratch**: the same new dataset and budget, from random weights.

Both new-data runs are evaluated on the same 100 held-out images of the new dataset;
the table and ``transfer.json`` (in ``--out``) give box AP and AP50 of each.

    python tools/transfer_shapes.py                       # about 10 minutes on 2 CPU cores
    python tools/transfer_shapes.py --pretrained runs/demo/best.pt --iters 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from detkit.config import load_config
from detkit.engine.run import run_training
from detkit.errors import DataError, run_tool
from detkit.importers import CONFIG_DIR
from detkit.io import write_json

RECIPE = CONFIG_DIR / "shapes_faster_rcnn.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/transfer", help="output folder (default runs/transfer)")
    parser.add_argument("--pretrained", default=None, help="a shapes checkpoint to start from (skips step 1)")
    parser.add_argument("--pretrain-iters", type=int, default=1200, help="iterations of step 1 (default 1200)")
    parser.add_argument("--iters", type=int, default=200, help="iterations of steps 2 and 3 (default 200)")
    parser.add_argument("--num-train", type=int, default=60, help="training images of the new data (default 60)")
    parser.add_argument("--num-val", type=int, default=100, help="held-out images of the new data (default 100)")
    parser.add_argument("--classes", default="triangle,circle", help="the new data's shapes (default triangle,circle)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run (default 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    return parser.parse_args(argv)


def budget(iters: int, out: Path, args: argparse.Namespace) -> list[str]:
    """Overrides for a run of exactly ``iters`` iterations, evaluated at its end, into ``out``."""
    return [
        f"train.max_iters={iters}", "train.epochs=1000", "train.max_minutes=null", "train.eval_period=0",
        f"train.warmup_iters={min(100, iters // 4)}", f"train.seed={args.seed}", f"train.device={args.device}",
        f"output.dir={out}",
    ]


def new_data(args: argparse.Namespace, root: Path) -> list[str]:
    classes = "[" + ", ".join(c.strip() for c in args.classes.split(",")) + "]"
    section = (
        f"name: shapes, root: {root}, num_train: {args.num_train}, num_val: {args.num_val}, image_size: 128, "
        f"seed: 1, classes: {classes}, palette: pastel"
    )
    return [f"data.train={{{section}, split: train}}", f"data.val={{{section}, split: val}}"]


def train(overrides: list[str], what: str) -> dict[str, Any]:
    print(f"\n== {what}", flush=True)
    metrics = run_training(load_config(RECIPE, overrides))
    return {"AP": metrics["bbox"]["AP"], "AP50": metrics["bbox"]["AP50"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    pretrained = Path(args.pretrained) if args.pretrained else out / "pretrain" / "best.pt"
    results: dict[str, Any] = {"settings": vars(args)}
    if args.pretrained is None:
        results["pretrain"] = train(budget(args.pretrain_iters, out / "pretrain", args), "1. pretrain on shapes")
    elif not pretrained.is_file():
        raise DataError(f"--pretrained {args.pretrained!r} does not exist")
    data = new_data(args, out / "data")
    results["finetune"] = train(
        [*budget(args.iters, out / "finetune", args), *data, f"train.init_weights={pretrained}"],
        f"2. fine-tune on {args.classes}, pastel, {args.num_train} images",
    )
    results["scratch"] = train([*budget(args.iters, out / "scratch", args), *data], "3. the same from scratch")
    write_json(out / "transfer.json", results)
    print(f"\n{args.num_val} held-out images of {args.classes} in pastel colours, {args.iters} iterations each:")
    print(f"  {'run':<10} {'box AP':>7} {'AP50':>7}")
    for run in ("finetune", "scratch"):
        print(f"  {run:<10} {results[run]['AP']:>7.3f} {results[run]['AP50']:>7.3f}")
    print(f"wrote {out / 'transfer.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, "transfer_shapes"))
