"""The ``detkit classify`` commands: train, eval, compare-linear.

:func:`add_commands` adds them to ``detkit``'s subcommands; ``detkit/cli.py``
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
from detkit.errors import EXIT_USER_ERROR, DataError

__all__ = [
    "add_commands",
    "cmd_classify_compare_linear",
    "cmd_classify_eval",
    "cmd_classify_train",
]


def add_commands(sub: Any) -> None:
    """Add ``classify`` (with ``train``, ``eval``, ``compare-linear``) to ``sub``.

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
            model.backbone.name=alexnet model.backbone.dropout=0.5 --out runs/flowers
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


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USER_ERROR


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


# ----------------------------------------------------------------------------- classify


def cmd_classify_train(args: argparse.Namespace) -> int:
    from detkit.classify.train import format_classification_metrics, load_classify_config, train_classifier
    from detkit.device import command_device

    config = load_classify_config(args.config, args.overrides)
    command_device(args.device, config["train"]["device"])  # before any work
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
    from detkit.device import DEVICE_FLAG, command_device, resolve_device
    from detkit.io import write_json

    if args.device:
        resolve_device(args.device, source=DEVICE_FLAG)
    loaded = load_classifier(args.weights, cli_plugins=args.plugins)
    device = command_device(
        args.device, loaded.config["train"]["device"], source=f"train.device of checkpoint {args.weights!r}"
    )
    dataset = _eval_dataset(args.data, loaded.config, loaded.class_names)
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
