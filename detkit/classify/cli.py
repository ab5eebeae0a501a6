"""The ``detkit classify`` (train, eval, compare-linear) and ``detkit explain`` commands.

:func:`add_commands` adds both to ``detkit``'s subcommands; ``detkit/cli.py``
calls it from ``build_parser``. Errors a user can cause are
:class:`~detkit.errors.DetkitError` and reach ``detkit.cli.main``, which prints
them without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from detkit.cliutil import add_common, subparser
from detkit.errors import EXIT_USER_ERROR, DataError, DetkitError

__all__ = [
    "add_commands",
    "cmd_classify_compare_linear",
    "cmd_classify_eval",
    "cmd_classify_train",
    "cmd_explain",
]


def add_commands(sub: Any) -> None:
    """Add ``classify`` (with ``train``, ``eval``, ``compare-linear``) and ``explain`` to ``sub``.

    Args:
        sub: the ``add_subparsers()`` object of the ``detkit`` parser.
    """
    classify = subparser(sub, "classify", "Train and evaluate image classifiers; compare linear classifiers.", """
        detkit classify train configs/classify_lenet_digits.yaml
        detkit classify eval --weights runs/lenet_digits/best.pt
        detkit classify compare-linear --out runs/compare.json
    """)
    classify.set_defaults(func=lambda args: _missing_subcommand(classify))
    csub = classify.add_subparsers(dest="classify_command", metavar="COMMAND")

    p = subparser(csub, "train", "Train a classifier from a config; write metrics, curves and best.pt.", """
        detkit classify train configs/classify_lenet_digits.yaml
        detkit classify train configs/classify_lenet_digits.yaml train.optimizer=nesterov train.lr=0.05
        detkit classify train configs/classify_lenet_digits.yaml data.augment=[crop] --out runs/aug
        detkit classify train my.yaml data.name=folder data.root=flowers data.channels=3 \\
            model.backbone.name=alexnet model.backbone.dropout=0.5
    """)
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--out", default=None, help="output folder (default: the config's output.dir)")
    add_common(p)
    p.set_defaults(func=cmd_classify_train)

    p = subparser(csub, "eval", "Evaluate a classifier: accuracy, per-class table, metrics.json.", """
        detkit classify eval --weights runs/lenet_digits/best.pt
        detkit classify eval --weights runs/lenet_digits/best.pt --data digits --out runs/eval_digits
        detkit classify eval --weights runs/flowers/best.pt --data flowers/test
    """)
    p.add_argument("--weights", required=True, help="a checkpoint of `detkit classify train`")
    p.add_argument("--data", default=None,
                   help="'digits' (its test split) or an image folder ROOT/CLASS/*.png "
                        "(default: the test split the checkpoint was trained with)")
    p.add_argument("--out", default="runs/classify_eval", help="where metrics.json goes (default runs/classify_eval)")
    add_common(p)
    p.set_defaults(func=cmd_classify_eval)

    p = subparser(csub, "compare-linear", "Compare detkit's kNN and linear classifiers with scikit-learn's.", """
        detkit classify compare-linear
        detkit classify compare-linear --out runs/compare_linear.json
    """)
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.set_defaults(func=cmd_classify_compare_linear)

    from detkit.viz.explain import CLASSIFIER_METHODS

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


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USER_ERROR


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


# ----------------------------------------------------------------------------- classify


def cmd_classify_train(args: argparse.Namespace) -> int:
    from detkit.classify.train import format_classification_metrics, load_classify_config, train_classifier

    config = load_classify_config(args.config, args.overrides)
    if args.device:
        config["train"]["device"] = args.device
    if args.out:
        config["output"]["dir"] = args.out
    summary = train_classifier(config, cli_plugins=args.plugins, progress=_progress(args))
    print(format_classification_metrics(summary.metrics))
    print(
        f"best epoch {summary.best_epoch} of {len(summary.records)} ({summary.seconds:.1f} s); outputs in "
        f"{summary.out_dir}/: best.pt, last.pt, metrics.json, metrics.jsonl, curves.png, config.yaml"
    )
    return 0


def _eval_dataset(data: str | None, config: dict[str, Any], class_names: list[str]) -> Any:
    """The dataset ``--data`` names, labelled with the checkpoint's class indices."""
    import torch

    from detkit.classify.data import ImageFolderDataset, TensorImageDataset, digits_split
    from detkit.classify.train import build_datasets

    size = int(config["data"]["image_size"])
    if data is None:
        return build_datasets(config)[1]
    if data == "digits":
        test = digits_split(image_size=size)[1]
    else:
        test = ImageFolderDataset(data, size=size, channels=int(config["data"]["channels"]))
    if test.images.shape[1] != int(config["data"]["channels"]):
        raise DataError(f"--data {data}: the classifier takes {config['data']['channels']}-channel images, "
                        f"the data has {test.images.shape[1]}")
    unknown = [n for n in test.class_names if n not in class_names]
    if unknown:
        raise DataError(
            f"--data {data}: class(es) {', '.join(map(repr, unknown))} are not among the classifier's classes "
            f"({', '.join(class_names)})"
        )
    labels = torch.tensor([class_names.index(test.class_names[int(k)]) for k in test.labels], dtype=torch.int64)
    return TensorImageDataset(test.images, labels, class_names)


def cmd_classify_eval(args: argparse.Namespace) -> int:
    from detkit.classify.train import evaluate_classifier, format_classification_metrics, load_classifier
    from detkit.device import resolve_device
    from detkit.io import write_json

    loaded = load_classifier(args.weights, cli_plugins=args.plugins)
    dataset = _eval_dataset(args.data, loaded.config, loaded.class_names)
    device = resolve_device(args.device or loaded.config["train"]["device"])
    metrics = evaluate_classifier(
        loaded.model.to(device), dataset, batch_size=int(loaded.config["eval"]["batch_size"]), device=device
    )
    out = Path(args.out) / "metrics.json"
    write_json(out, metrics)
    print(format_classification_metrics(metrics))
    print(f"wrote {out}")
    return 0


def cmd_classify_compare_linear(args: argparse.Namespace) -> int:
    from detkit.classify.compare import main_compare_linear

    return main_compare_linear(out_json=args.out)


# ----------------------------------------------------------------------------- explain


def _methods(arg: str | None, allowed: tuple[str, ...], kind: str) -> list[str]:
    from detkit.plugins import did_you_mean
    from detkit.viz.explain import CLASSIFIER_METHODS

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
    from detkit.engine.checkpoint import load_checkpoint
    from detkit.viz.explain import ExplainOptions

    options = ExplainOptions(
        layer=args.layer, occlusion_patch=args.patch, occlusion_stride=args.stride, k=args.k,
        embedding_points=args.points, class_model_steps=args.class_steps, deepdream_steps=args.dream_steps,
    )
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


def _explain_classifier(args: argparse.Namespace, checkpoint: dict[str, Any], options: Any) -> dict[str, Path]:
    from detkit.classify.data import prepare_image
    from detkit.classify.train import build_datasets, load_classifier
    from detkit.data.images import read_image
    from detkit.device import resolve_device
    from detkit.viz.explain import CLASSIFIER_METHODS, explain_classifier

    if args.overrides:
        raise DetkitError("KEY=VALUE overrides apply to detector checkpoints only")
    if args.detection is not None:
        print("ignoring --detection: the checkpoint is a classifier", file=sys.stderr)
    methods = _methods(args.methods, CLASSIFIER_METHODS, "classifier")
    loaded = load_classifier(args.weights, cli_plugins=args.plugins, checkpoint=checkpoint)
    device = resolve_device(args.device or loaded.config["train"]["device"])
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


def _explain_detector(args: argparse.Namespace, options: Any) -> dict[str, Path]:
    from detkit.data.images import image_to_tensor, read_image
    from detkit.device import resolve_device
    from detkit.engine.build import load_model
    from detkit.viz.explain import DETECTOR_METHODS, explain_detector

    if args.image is None:
        raise DetkitError("a detector needs an image to explain: give --image FILE")
    methods = _methods(args.methods, DETECTOR_METHODS, "detector")
    loaded, _ = load_model(args.weights, overrides=args.overrides, cli_plugins=args.plugins)
    device = resolve_device(args.device or loaded.config["train"]["device"])
    image = image_to_tensor(read_image(args.image)).to(device)
    return explain_detector(
        loaded.model.to(device), class_names=loaded.class_names, image=image, out_dir=args.out, methods=methods,
        detection=args.detection, options=options,
    )
