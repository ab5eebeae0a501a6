"""Fill the proposal cache of a config's train and val images before training.

Selective search takes up to a second per image; a recipe that uses it (R-CNN,
Fast R-CNN) computes each image's proposals in its first epoch and reads them
from the on-disk cache afterwards. Running this first moves that work out of the
training time budget (as the papers did: proposals were precomputed) and spreads
it over processes:

    python tools/precompute_proposals.py configs/bccd_fast_rcnn.yaml --workers 2

The images go through the model's own preprocessing in eval mode, so the cache
keys match training only when ``model.preprocess.min_size`` is one size and
flips are off (the shipped R-CNN and Fast R-CNN recipes do both).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from tqdm import tqdm

from detkit.config import load_config
from detkit.engine.build import build_dataset, model_from_config, plugins_for
from detkit.errors import run_tool


def _work(args: tuple[str, list[str], str, list[int]]) -> int:
    config_path, overrides, split, indices = args
    torch.set_num_threads(1)
    config = load_config(config_path, overrides)
    plugins = plugins_for(config)
    dataset = build_dataset(config, split, plugins)
    model = model_from_config(config, plugins, class_names=dataset.class_names).eval()
    with torch.no_grad():
        for i in indices:
            batch, _ = model.preprocess([dataset[i].image])
            model.proposer(batch, None, None)
    return len(indices)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    if isinstance(config["model"]["preprocess"]["min_size"], list) or config["data"]["augment"]["hflip"] > 0:
        print("warning: multi-scale or flipped training sees other pixels than these; "
              "only the unflipped images at the last size are cached", file=sys.stderr)
    plugins = plugins_for(config)
    start = time.perf_counter()
    for split in args.splits:
        count = len(build_dataset(config, split, plugins))
        chunks = [list(range(count))[w::args.workers * 8] for w in range(args.workers * 8)]
        jobs = [(args.config, args.overrides, split, c) for c in chunks if c]
        with ProcessPoolExecutor(args.workers) as pool, tqdm(total=count, desc=split, unit="img") as bar:
            for done in pool.map(_work, jobs):
                bar.update(done)
    print(f"proposals cached in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_tool(main, "precompute_proposals.py"))
