"""Does training leak memory? Resident memory after 2,000 shapes iterations against after 200.

Trains the demo recipe (``shapes_faster_rcnn.yaml``) for ``--iters`` iterations with
a train record every 100 (each record carries ``rss_mb``, the process's resident
memory), then compares the memory at ``--iters`` with the memory at 200. A loop that
keeps references to losses, graphs or batches grows steadily; a sound one stays
flat once the allocator has warmed up.

    python tools/memory_growth.py                   # 2000 iterations, about 7 min on 2 CPU cores
    python tools/memory_growth.py --device cuda

Writes ``runs/memory/memory.json`` and ``memory.png`` (RSS against iteration) and
exits 1 when the growth is over ``--tolerance`` (5 %).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detkit.config import load_config
from detkit.engine.run import run_training
from detkit.io import write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=2000, help="iterations to train (default 2000)")
    parser.add_argument("--reference", type=int, default=200, help="the iteration compared against (default 200)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed growth (default 0.05)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--out", default="runs/memory", help="output folder (default runs/memory)")
    args = parser.parse_args()
    out = Path(args.out)
    config = load_config(
        "detkit:shapes_faster_rcnn.yaml",
        [
            f"train.max_iters={args.iters}", "train.max_minutes=null", "train.eval_period=0",
            "train.log_period=100", f"train.device={args.device}", "eval.max_images=20",
            f"output.dir={out}",
        ],
    )
    run_training(config, progress=sys.stderr.isatty())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rss = {r["iter"]: r["rss_mb"] for r in records if r["type"] == "train" and "rss_mb" in r}
    if args.reference not in rss or args.iters not in rss:
        print(f"no rss_mb at iterations {args.reference} and {args.iters} in {out / 'metrics.jsonl'}", file=sys.stderr)
        return 2
    growth = rss[args.iters] / rss[args.reference] - 1.0
    report = {
        "recipe": "shapes_faster_rcnn.yaml", "device": args.device, "iterations": args.iters,
        "rss_mb": rss, "reference": args.reference, "growth": growth, "tolerance": args.tolerance,
    }
    write_json(out / "memory.json", report)
    _plot(rss, out / "memory.png")
    print(
        f"resident memory: {rss[args.reference]:.0f} MB at iteration {args.reference}, {rss[args.iters]:.0f} MB at "
        f"{args.iters} ({growth:+.1%}; allowed {args.tolerance:.0%}); {out / 'memory.png'}"
    )
    return 0 if growth <= args.tolerance else 1


def _plot(rss: dict[int, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(list(rss), list(rss.values()), marker="o")
    ax.set_xlabel("iteration")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title("shapes_faster_rcnn training, process RSS")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
