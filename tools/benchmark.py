"""detkit against torchvision's Faster R-CNN R50-FPN on the same weights: ``detkit benchmark`` with defaults.

Runs ``detkit benchmark fasterrcnn_resnet50_fpn --against torchvision --threads 2``
followed by any options given here, e.g.

    python tools/benchmark.py                        # CPU inference, 2 threads
    python tools/benchmark.py --channels-last --compile
    python tools/benchmark.py --train                # one training step, batch 2, 512x640
    python tools/benchmark.py --device cuda --batch-size 8 --precision bf16

See ``detkit benchmark --help`` for every option and the other models.
"""

from __future__ import annotations

import sys

from detkit.cli import main

if __name__ == "__main__":
    defaults = ["fasterrcnn_resnet50_fpn", "--against", "torchvision", "--threads", "2"]
    raise SystemExit(main(["benchmark", *defaults, *sys.argv[1:]]))
