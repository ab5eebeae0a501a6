"""Time Winograd 3x3 convolutions against direct ones, layer by layer, on the CPU.

The layers are the 3x3, stride-1 convolutions of a Faster R-CNN R50-FPN on an
800x1216 image (inference, batch 1) and on the 512x640 training batch of
``detkit benchmark --train`` (batch 2), channels-last. For each it times
``torch.nn.functional.conv2d`` and :func:`detkit.ops.winograd.winograd_conv2d`
forward (with the filters transformed once, as an inference model keeps them) and
forward plus backward, interleaved, best of ``--runs``; and it prints Winograd's
largest error against a float64 convolution, relative to the output's range, next to
the direct convolution's. Prints the speed-up of each layer; it asserts nothing.

Example::

    python tools/bench_winograd.py
    python tools/bench_winograd.py --tile 6 --threads 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
from torch.nn import functional as F

from detkit.errors import ConfigError, run_tool
from detkit.memory import reuse_freed_memory
from detkit.ops.winograd import POINTS, filter_transform, winograd_conv2d

#: (what, batch, channels, height, width)
LAYERS = [
    ("FPN/RPN P2, 800x1216", 1, 256, 304, 200),
    ("FPN/RPN P3", 1, 256, 152, 100),
    ("FPN/RPN P4, layer3", 1, 256, 76, 50),
    ("layer2", 1, 128, 152, 100),
    ("layer4", 1, 512, 38, 25),
    ("FPN/RPN P2, train 512x640", 2, 256, 128, 160),
    ("layer2, train", 2, 128, 64, 80),
    ("layer3, train", 2, 256, 32, 40),
]


def _best_ms(call: Callable[[], object], runs: int) -> float:
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def _forward_backward(conv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, w: torch.Tensor):
    def call() -> None:
        out = conv(x, w)
        out.backward(torch.ones_like(out))

    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tile", type=int, default=4, help=f"output tile size, one of {sorted(POINTS)} (default 4)")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per layer and method (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    if args.tile not in POINTS:
        raise ConfigError(f"--tile must be one of {sorted(POINTS)}, got {args.tile}")
    if args.runs < 1 or args.threads < 1:
        raise ConfigError("--runs and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    tile = args.tile
    print(f"F({tile}x{tile}, 3x3) against direct 3x3 convolutions, channels-last float32, {args.threads} threads")
    print(f"{'layer':<28}{'shape':>20}{'fwd ms':>16}{'x':>7}{'fwd+bwd ms':>18}{'x':>7}{'error':>18}")
    generator = torch.Generator().manual_seed(0)
    for what, batch, channels, height, width in LAYERS:
        x = torch.randn(batch, channels, height, width, generator=generator)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(channels, channels, 3, 3, generator=generator) / (3 * channels**0.5)
        w = w.contiguous(memory_format=torch.channels_last)
        filters = filter_transform(w, tile)
        with torch.no_grad():
            exact = F.conv2d(x.double(), w.double(), padding=1)
            scale = float(exact.abs().max())
            errors = [
                float((out.double() - exact).abs().max()) / scale
                for out in (F.conv2d(x, w, padding=1), winograd_conv2d(x, w, tile=tile, filters=filters))
            ]
            direct = _best_ms(partial(F.conv2d, x, w, padding=1), args.runs)
            ours = _best_ms(partial(winograd_conv2d, x, w, tile=tile, filters=filters), args.runs)
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        direct_train = _best_ms(_forward_backward(lambda a, b: F.conv2d(a, b, padding=1), xg, wg), args.runs)
        ours_train = _best_ms(_forward_backward(lambda a, b: winograd_conv2d(a, b, tile=tile), xg, wg), args.runs)
        shape = f"{batch}x{channels}x{height}x{width}"
        print(
            f"{what:<28}{shape:>20}{direct:>8.1f}/{ours:<7.1f}{direct / ours:>6.2f}x"
            f"{direct_train:>10.1f}/{ours_train:<7.1f}{direct_train / ours_train:>6.2f}x"
            f"{errors[0]:>9.1e}/{errors[1]:.1e}"
        )
    print("(direct/Winograd; error: largest difference from float64, relative to the output's range, direct/Winograd)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_tool(main, "bench_winograd.py"))
