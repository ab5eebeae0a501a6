"""The ``detkit explain`` command: figures of what a classifier or a detector looks at.

:func:`add_commands` adds it to ``detkit``'s subcommands; ``detkit/cli.py`` calls
it from ``build_parser``. Errors a user can cause are
:class:`~detkit.errors.DetkitError` and reach ``detkit.cli.main``, which prints
them without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detkit.cliutil import add_common, subparser
from detkit.errors import DetkitError

if TYPE_CHECKING:
    from detkit.explain.figures import ExplainOptions

__all__ = ["add_commands", "cmd_explain"]


def add_commands(sub: Any) -> None:
    """Add ``explain`` to ``sub``.

    Args:
        sub: the ``add_subparsers()`` object of the ``detkit`` parser.
    """
    from detkit.explain.methods import CLASSIFIER_METHODS

    p = subparser(sub, "explain", "Visualise what a classifier or detector looks at (saliency, occlusion, ...).", """
        detkit explain --weights runs/lenet_digits/best.pt --out runs/explain
        detkit explain --weights runs/lenet_digits/best.pt --out runs/explain --image seven.png \\
            --methods saliency,occlusion,class_model
        detkit explain --weights runs/demo/best.pt --out runs/explain_det --image runs/demo/data/val/000000.png \\
            --detection 0 --layer backbone.layer2.0.conv1
    """)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides (detectors only)")
    p.add_argument("--weights", required=True, help="a classifier (detkit classify train) or detector checkpoint")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    p.add_argument("--image", default=None,
                   help="image to explain (required for a detector; default for a classifier: its first test image)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {','.join(CLASSIFIER_METHODS)} (default: all that apply)")
    p.add_argument("--detection", type=int, default=None,
                   help="detector: index of the detection to explain (default: the highest score)")
    p.add_argument("--layer", default=None,
                   help="module name for activations and deepdream (default: a middle backbone convolution)")
    p.add_argument("--patch", type=int, default=None, help="occluder side in pixels (default: 1/8 of the image)")
    p.add_argument("--stride", type=int, default=None, help="occluder step in pixels (default: half the patch)")
    p.add_argument("--k", type=int, default=5, help="neighbours per query image (default 5)")
    p.add_argument("--points", type=int, default=500, help="test images in the PCA/t-SNE plots (default 500)")
    p.add_argument("--class-steps", type=int, default=200, help="gradient steps of the class models (default 200)")
    p.add_argument("--dream-steps", type=int, default=20, help="gradient steps of DeepDream (default 20)")
    add_common(p)
    p.set_defaults(func=cmd_explain)


def _device(args: argparse.Namespace, config: dict[str, Any]) -> Any:
    """``--device``, else the checkpoint's ``train.device``."""
    from detkit.device import command_device

    return command_device(
        args.device, config["train"]["device"], source=f"train.device of checkpoint {args.weights!r}"
    )


def _methods(arg: str | None, allowed: tuple[str, ...], kind: str) -> list[str]:
    from detkit.errors import did_you_mean
    from detkit.explain.methods import CLASSIFIER_METHODS

    if arg is None:
        return list(allowed)
    chosen = [m.strip() for m in arg.split(",") if m.strip()]
    for m in chosen:
        if m not in CLASSIFIER_METHODS:
            raise DetkitError(
                f"--methods: unknown method {m!r}{did_you_mean(m, CLASSIFIER_METHODS)}; "
                f"methods: {', '.join(CLASSIFIER_METHODS)}"
            )
    skipped = [m for m in chosen if m not in allowed]
    if skipped:
        print(f"skipping {', '.join(skipped)}: they need a classifier and its data set, not a {kind}", file=sys.stderr)
    methods = [m for m in chosen if m in allowed]
    if not methods:
        raise DetkitError(
            f"--methods: none of {', '.join(chosen)} applies to a {kind}; use some of {', '.join(allowed)}"
        )
    return methods


def cmd_explain(args: argparse.Namespace) -> int:
    from detkit.classify.train import is_classifier_checkpoint
    from detkit.device import DEVICE_FLAG, resolve_device
    from detkit.engine.checkpoint import load_checkpoint
    from detkit.explain.figures import ExplainOptions

    options = ExplainOptions(
        layer=args.layer, occlusion_patch=args.patch, occlusion_stride=args.stride, k=args.k,
        embedding_points=args.points, class_model_steps=args.class_steps, deepdream_steps=args.dream_steps,
    )
    if args.device:
        resolve_device(args.device, source=DEVICE_FLAG)  # before any work
    checkpoint = load_checkpoint(args.weights)
    if is_classifier_checkpoint(checkpoint):
        written = _explain_classifier(args, checkpoint, options)
    elif isinstance(checkpoint["config"].get("model"), dict) and checkpoint["config"]["model"].get("type"):
        written = _explain_detector(args, options)
    else:
        raise DetkitError(
            f"checkpoint {args.weights!r} is neither a classifier (detkit classify train) nor a detector "
            "(model.type in its config)"
        )
    for method, path in written.items():
        print(f"{method:<16} {path}")
    return 0


def _explain_classifier(
    args: argparse.Namespace, checkpoint: dict[str, Any], options: ExplainOptions
) -> dict[str, Path]:
    from detkit.classify.data import prepare_image
    from detkit.classify.train import build_datasets, load_classifier
    from detkit.data.images import read_image
    from detkit.explain.figures import explain_classifier
    from detkit.explain.methods import CLASSIFIER_METHODS

    if args.overrides:
        raise DetkitError("KEY=VALUE overrides apply to detector checkpoints only")
    if args.detection is not None:
        print("ignoring --detection: the checkpoint is a classifier", file=sys.stderr)
    methods = _methods(args.methods, CLASSIFIER_METHODS, "classifier")
    loaded = load_classifier(args.weights, cli_plugins=args.plugins, checkpoint=checkpoint)
    device = _device(args, loaded.config)
    model = loaded.model.to(device)
    data = loaded.config["data"]
    needs_data = args.image is None or any(m in methods for m in ("neighbors", "embedding"))
    train, test = build_datasets(loaded.config) if needs_data else (None, None)
    if args.image is not None:
        image = prepare_image(read_image(args.image), channels=int(data["channels"]), size=int(data["image_size"]))
    else:
        assert test is not None
        image = test.images[0]
    return explain_classifier(
        model, class_names=loaded.class_names, image=image.to(device), out_dir=args.out, methods=methods,
        train_images=train.images.to(device) if train is not None else None,
        train_labels=train.labels if train is not None else None,
        test_images=test.images.to(device) if test is not None else None,
        test_labels=test.labels if test is not None else None,
        options=options,
    )


def _explain_detector(args: argparse.Namespace, options: ExplainOptions) -> dict[str, Path]:
    from detkit.data.images import image_to_tensor, read_image
    from detkit.engine.build import load_model
    from detkit.explain.figures import explain_detector
    from detkit.explain.methods import DETECTOR_METHODS

    if args.image is None:
        raise DetkitError("a detector needs an image to explain: give --image FILE")
    methods = _methods(args.methods, DETECTOR_METHODS, "detector")
    loaded, _ = load_model(args.weights, overrides=args.overrides, cli_plugins=args.plugins)
    device = _device(args, loaded.config)
    image = image_to_tensor(read_image(args.image)).to(device)
    return explain_detector(
        loaded.model.to(device), class_names=loaded.class_names, image=image, out_dir=args.out, methods=methods,
        detection=args.detection, options=options,
    )
