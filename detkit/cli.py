"""The ``detkit`` command.

Every subcommand has ``--help`` with examples. Errors a user can cause
(:class:`~detkit.errors.DetkitError`) are printed without a traceback and exit
with status 2; ``--traceback`` (or ``DETKIT_DEBUG=1``) prints the traceback of
every error instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detkit.cliutil import add_common, add_global_flags, subparser
from detkit.errors import EXIT_USER_ERROR, DetkitError
from detkit.memory import reuse_freed_memory

if TYPE_CHECKING:  # the commands import what they run when they run
    from torch import nn

    from detkit.engine.predict import ImageFiles
    from detkit.engine.video import VideoFrames


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``detkit`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="detkit",
        description="A plugin-based object detection toolkit.",
        epilog="run `detkit COMMAND --help` for a command's options and examples",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    add_global_flags(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = subparser(
        sub,
        "plugins",
        "List loaded plugins and every registered component.",
        """
        detkit plugins
        detkit plugins --describe backbone resnet18
        detkit plugins -p my_plugin_module
        DETKIT_DISABLE_PLUGIN_AUTOLOAD=1 detkit plugins
    """,
    )
    p.add_argument(
        "--describe", nargs=2, metavar=("KIND", "NAME"), default=None,
        help="a component's settings (types, defaults, documentation) and the arguments detkit passes it",
    )
    add_common(p, device=False)
    p.set_defaults(func=cmd_plugins)

    p = subparser(
        sub,
        "train",
        "Train a detector from a config.",
        """
        detkit train configs/shapes_faster_rcnn.yaml
        detkit train configs/shapes_yolo.yaml output.dir=runs/shapes_yolo    # anchor-free YOLO, 6.5 CPU minutes
        detkit train configs/bccd_faster_rcnn.yaml train.max_minutes=20 output.dir=runs/bccd
        detkit train configs/faster_rcnn_r50_fpn.yaml --device cuda train.lr=0.01 output.dir=runs/tiny_coco \\
            data.train.name=coco data.train.ann_file=../shared/data/tiny_coco/annotations/instances_train2017.json \\
            data.val.name=coco data.val.ann_file=../shared/data/tiny_coco/annotations/instances_val2017.json
        detkit train --resume runs/bccd                      # continue a stopped run exactly
        detkit train configs/bccd_faster_rcnn.yaml --nproc 2   # two processes (GPUs, or gloo on the CPU)
    """,
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config file (with --resume: the run's own)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--out", default=None, help="output folder (default: the config's output.dir)")
    p.add_argument(
        "--resume", default=None, metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last.pt (its config.yaml unless a config is given)",
    )
    p.add_argument(
        "--nproc", type=int, default=None, metavar="N",
        help="train with N processes on this machine through torchrun (one per GPU; gloo on the CPU)",
    )
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = subparser(
        sub,
        "eval",
        "Evaluate weights on a COCO json, a Pascal VOC folder or a YOLO data.yaml, or score a results file.",
        """
        detkit eval --weights runs/demo/best.pt --data runs/demo/data/annotations/instances_val.json
        detkit eval configs/faster_rcnn_r50_fpn.yaml --weights coco.pt \\
            --data ../shared/data/tiny_coco/annotations/instances_val2017.json --out runs/eval
        detkit eval --weights runs/bccd/best.pt --data ../shared/data/BCCD --split test
        detkit eval --weights runs/demo/best.pt
        detkit eval --weights runs/bccd/best.pt --device cuda --precision bf16
        detkit eval --results other_detector.json --data ../shared/data/tiny_coco/annotations/instances_val2017.json
    """,
    )
    p.add_argument("config", nargs="?", default=None, help="config to apply over the checkpoint's (optional)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--weights", default=None, help="a detkit checkpoint (.pt)")
    p.add_argument(
        "--results", default=None, metavar="FILE",
        help="instead of --weights: score this COCO results json (a list of image_id, category_id, bbox, score "
        "records, from any detector) against --data; every image of --data counts",
    )
    p.add_argument(
        "--data", default=None,
        help="COCO instances .json, a Pascal VOC root folder or a YOLO data.yaml (default: the checkpoint's data.val)",
    )
    p.add_argument("--images", default=None, help="image folder of a COCO json (default: beside it)")
    p.add_argument("--split", default=None, help=_SPLIT_HELP)
    p.add_argument("--out", default="runs/eval", help="where metrics.json and results.json go")
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    p.add_argument(
        "--skip-unreadable", action="store_true",
        help="evaluate the images that can be read and list the others in metrics.json (default: stop and name them)",
    )
    p.add_argument(
        "--backend", default=None, metavar="faster|pycocotools",
        help="the COCOeval implementation: faster-coco-eval, or pycocotools, the reference; both give the same "
        "numbers (default: the config's eval.backend, faster)",
    )
    _add_analysis_flags(p)
    p.add_argument(
        "--no-analysis", action="store_true",
        help="write the metrics only: no error analysis, curves, confusion matrix or gallery",
    )
    _add_precision(p)
    _add_speed_flags(p)
    add_common(p)
    p.set_defaults(func=cmd_eval)

    p = subparser(
        sub,
        "analyze",
        "Explain a results file's AP: TIDE error types, PR curves, confusion matrix, AP by size, worst images.",
        """
        detkit analyze --results runs/eval/results.json --data runs/demo/data/annotations/instances_val.json
        detkit analyze --results other_detector.json \\
            --data ../shared/data/tiny_coco/annotations/instances_val2017.json --gallery 20 --out runs/analyze
        detkit analyze --results runs/bccd_eval/results.json --data ../shared/data/BCCD --split test --score-thresh 0.3
    """,
    )
    p.add_argument(
        "--results", required=True, metavar="FILE",
        help="a COCO results json (detkit eval's results.json, or any detector's list of image_id, category_id, "
        "bbox, score records); every image of --data counts",
    )
    p.add_argument("--data", required=True, help="COCO instances .json, a Pascal VOC root folder or a YOLO data.yaml")
    p.add_argument("--images", default=None, help="image folder of a COCO json (default: beside it)")
    p.add_argument("--split", default=None, help=_SPLIT_HELP)
    p.add_argument("--out", default="runs/analyze", help="where metrics.json, the plots and gallery/ go")
    _add_analysis_flags(p)
    p.add_argument(
        "--backend", default=None, metavar="faster|pycocotools",
        help="the COCOeval implementation (default: faster; both give the same numbers)",
    )
    add_common(p, device=False)
    p.set_defaults(func=cmd_analyze)

    p = subparser(
        sub,
        "detect",
        "Detect objects in images, videos or a camera; write annotated images and detections.json, "
        "and per video an annotated MP4 and a JSON line per frame.",
        """
        detkit detect --weights runs/demo/best.pt --out runs/detect runs/demo/data/val/
        detkit detect --weights coco.pt --out runs/detect_clip clip.mp4 --stride 2 --max-frames 300
        detkit detect --weights coco.pt --out runs/detect_camera --camera 0    # until Ctrl-C
        detkit detect --weights coco.pt --out runs/detect_coco '../shared/data/tiny_coco/val2017/*.jpg' \\
            ../shared/data/balloon/val/24631331976_defa3bb61f_k.jpg --score-thresh 0.7
        detkit detect --weights coco.pt --out runs/detect_bf16 --precision bf16 ../shared/data/tiny_coco/val2017/
        detkit detect --weights coco.pt --out runs/detect_coco --resume --batch-size 2 ../shared/data/tiny_coco/val2017/
        detkit detect --weights runs/demo/model.onnx --out runs/detect_onnx runs/demo/data/val/   # detkit export's file
    """,
    )
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT",
        help="image files, folders or globs, and video files (.mp4 .avi .mov .mkv .webm .m4v ...: each gets "
        "OUT/<stem>.mp4 and OUT/<stem>.jsonl; images go to OUT/<stem>.png and OUT/detections.json)",
    )
    p.add_argument(
        "--camera", type=int, default=None, metavar="INDEX",
        help="read camera INDEX (/dev/videoINDEX) instead of files, until --max-frames or Ctrl-C; "
        "writes OUT/cameraINDEX.mp4 and OUT/cameraINDEX.jsonl",
    )
    p.add_argument("--stride", type=int, default=1, metavar="K", help="videos: detect every K-th frame (default 1)")
    p.add_argument(
        "--max-frames", type=int, default=None, metavar="N", help="videos: detect at most N frames of each",
    )
    p.add_argument(
        "--weights", required=True,
        help="a detkit checkpoint (.pt), or a model detkit export wrote (.onnx through onnxruntime, or TorchScript)",
    )
    p.add_argument("--config", default=None, help="config applied over the checkpoint's (optional)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-thresh", type=float, default=0.5, help="drop detections below (default 0.5)")
    p.add_argument("--no-draw", action="store_true", help="write the detections only (json, jsonl): no PNG, no MP4")
    p.add_argument(
        "--batch-size", type=int, default=None, metavar="N",
        help="images or video frames per model call (default: 1 on a CPU, 8 on CUDA)",
    )
    p.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="processes that decode images (default: min(4, CPU count); 0 decodes in this one)",
    )
    p.add_argument(
        "--resume", action="store_true",
        help="keep the images already in OUT/detections.jsonl (a stopped run) and detect the rest "
        "(default: the file starts afresh)",
    )
    _add_precision(p)
    _add_speed_flags(p)
    add_common(p)
    p.set_defaults(func=cmd_detect)

    p = subparser(
        sub,
        "export",
        "Export a checkpoint to ONNX or TorchScript, and check it gives detkit's detections.",
        """
        detkit export --format onnx runs/shapes_yolo/best.pt runs/shapes_yolo/model.onnx
        detkit export --format torchscript runs/shapes_yolo/best.pt runs/shapes_yolo/model.ts
        detkit export --format onnx runs/demo/best.pt runs/demo/model.onnx --size 128 128   # Faster R-CNN: fixed size
    """,
    )
    p.add_argument("checkpoint", help="a detkit checkpoint (.pt)")
    p.add_argument("out", help="the file to write (.onnx; .ts or .pt for TorchScript)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="onnx or torchscript")
    p.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (default 17)")
    p.add_argument(
        "--size", type=int, nargs=2, default=None, metavar=("H", "W"),
        help="the input image size to export for: the only size Faster/Mask R-CNN, RetinaNet and FCOS files take "
        "(they keep the aspect ratio); SSD and YOLO files take any size (default: the model's size)",
    )
    p.add_argument("--no-check", action="store_true", help="skip running the written file against detkit")
    add_common(p, device=False)
    p.set_defaults(func=cmd_export)

    p = subparser(
        sub,
        "proposals",
        "Score proposers: recall and average recall against the number of proposals.",
        """
        detkit proposals --data ../shared/data/BCCD --split test --proposer selective_search:preset=fast \\
            --proposer sliding_window --max-images 20
        detkit proposals --data runs/demo/data/annotations/instances_val.json \\
            --proposer rpn:weights=runs/demo/best.pt --proposer 'sliding_window:sizes=[16,32,64]'
        detkit proposals --data runs/demo/data/annotations/instances_val.json \
            --proposer rpn:weights=runs/demo/best.pt --proposer dense:weights=runs/shapes_yolo/best.pt
        detkit proposals --data ../shared/data/tiny_coco/annotations/instances_val2017.json \\
            --proposer rpn:weights=coco.pt,post_nms_top_n_test=2000 --proposer selective_search \\
            --max-proposals 2000 --size 600:1000 --out runs/proposals
    """,
    )
    p.add_argument("--data", required=True, help="COCO instances .json, a Pascal VOC root folder or a YOLO data.yaml")
    p.add_argument("--images", default=None, help="image folder of a COCO json (default: beside it)")
    p.add_argument("--split", default=None, help=_SPLIT_HELP)
    p.add_argument(
        "--proposer",
        dest="proposers",
        action="append",
        required=True,
        metavar="NAME[:KEY=VALUE,...]",
        help="a proposer and its settings, values in YAML ('sizes=[32,64]'); NAME:weights=CKPT takes the "
        "proposer of a trained detkit checkpoint (its other keys override the checkpoint's); dense:weights=CKPT "
        "the boxes of a single-stage checkpoint's dense head before NMS. Repeatable",
    )
    p.add_argument("--max-images", type=int, default=None, help="score the first N images only")
    p.add_argument("--max-proposals", type=int, default=2000, help="largest budget k per image (default 2000)")
    p.add_argument(
        "--size",
        type=_min_max_size,
        default=None,
        metavar="MIN[:MAX]",
        help="resize images (shorter side MIN, longer at most MAX; without MAX the longer side is not capped) "
        "for proposers on raw pixels "
        "(default: each image at its own size); checkpoint proposers use their model's sizes",
    )
    p.add_argument("--out", default="runs/proposals", help="where proposals.json and recall.png go")
    add_common(p)
    p.set_defaults(func=cmd_proposals)

    p = subparser(
        sub,
        "compare",
        "Compare runs side by side: COCO metrics, per-class AP, error types and training curves.",
        """
        detkit compare runs/demo runs/shapes_yolo
        detkit compare runs/bccd runs/eval --iou-type bbox --out runs/compare
    """,
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN",
        help="folders that `detkit train` or `detkit eval --out` wrote (each with a metrics.json); one is fine",
    )
    p.add_argument(
        "--iou-type", choices=["bbox", "segm"], default=None,
        help="compare boxes or masks only (default: every type a run has)",
    )
    p.add_argument(
        "--out", default=None, metavar="DIR",
        help="also write compare.json and training_curves.png into DIR (default: print the tables only)",
    )
    p.set_defaults(func=cmd_compare)

    p = subparser(
        sub,
        "benchmark",
        "Time a detector, alone or against torchvision's twin on the same weights.",
        """
        detkit benchmark fasterrcnn_resnet50_fpn --against torchvision --channels-last
        detkit benchmark fasterrcnn_resnet50_fpn --against torchvision --train --out bench_train.json
        detkit benchmark ssd300_vgg16 --against torchvision --threads 2
        detkit benchmark detkit:bccd_faster_rcnn.yaml --batch-size 4 --compile
        detkit benchmark runs/bccd/best.pt --device cuda --batch-size 8 --precision bf16
    """,
    )
    p.add_argument(
        "model",
        help="a torchvision model name (random weights; see `detkit import-torchvision --list`), "
        "a config or recipe (random weights), or a detkit checkpoint (.pt)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument(
        "--against", default=None, choices=["torchvision"],
        help="also time torchvision's model on the same weights, check the two agree, report the speed-up",
    )
    p.add_argument("--train", action="store_true", help="time training steps (forward, backward, SGD) instead")
    p.add_argument(
        "--batch-size", type=int, default=None,
        help="images per call (default 1; 2 with --train)",
    )
    _add_precision(p)
    _add_speed_flags(p)
    p.add_argument(
        "--images", nargs="+", default=(), metavar="PATH", help="image files or folders (default: tiny_coco photos)"
    )
    p.add_argument("--runs", type=int, default=7, help="timed calls per model (default 7; the median counts)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per model first (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--num-classes", type=int, default=None, help="classes of a config's model (default: its own, else 80)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and batches (default 0)")
    p.add_argument("--out", default=None, metavar="JSON", help="also write the figures to this file")
    add_common(p)
    p.set_defaults(func=cmd_benchmark)

    p = subparser(
        sub,
        "import-torchvision",
        "Convert a torchvision detection state dict to a detkit checkpoint.",
        """
        detkit import-torchvision fasterrcnn_resnet50_fpn fasterrcnn_resnet50_fpn_coco-258fb6c6.pth coco.pt
        detkit import-torchvision --list
    """,
    )
    p.add_argument("name", nargs="?", help="torchvision model name (see --list)")
    p.add_argument("input", nargs="?", help="torchvision state dict (.pth, local file or URL)")
    p.add_argument("output", nargs="?", help="detkit checkpoint to write (.pt)")
    p.add_argument("--config", default=None, help="detkit config of the model (default: the importer's)")
    p.add_argument("--list", action="store_true", help="list the models that can be imported")
    add_common(p, device=False)
    p.set_defaults(func=cmd_import_torchvision)

    p = subparser(
        sub,
        "info",
        "Describe a checkpoint: architecture, classes, training data and settings, metrics, versions.",
        """
        detkit info runs/demo/best.pt
        detkit info coco.pt --json
    """,
    )
    p.add_argument("checkpoint", help="a detkit checkpoint (best.pt, last.pt, an imported model, a classifier)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=cmd_info, plugins=[])

    p = subparser(
        sub,
        "demo",
        "Generate the shapes dataset, train a small Faster R-CNN, evaluate, draw.",
        """
        detkit demo
        detkit demo --out runs/demo --device cuda
    """,
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--config", default=None, help="recipe (default: configs/shapes_faster_rcnn.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    add_common(p)
    p.set_defaults(func=cmd_demo)

    from detkit.classify.cli import add_commands as add_classify_commands
    from detkit.data.cli import add_commands as add_data_commands
    from detkit.explain.cli import add_commands as add_explain_commands

    add_classify_commands(sub)
    add_explain_commands(sub)
    add_data_commands(sub)
    return parser


_SPLIT_HELP = "ImageSets/Main split of a VOC folder (default: test), or split of a YOLO data.yaml (default: val)"


def _add_speed_flags(parser: argparse.ArgumentParser) -> None:
    """``--channels-last``, ``--winograd`` and ``--compile``, opt-in speed-ups (config: ``model.<flag>``)."""
    parser.add_argument(
        "--channels-last", action="store_true",
        help="run the convolutions on NHWC tensors (faster on CPUs and tensor cores; boxes move by float rounding)",
    )
    parser.add_argument(
        "--winograd", action="store_true",
        help="run wide 3x3 convolutions as Winograd F(4x4,3x3) on the CPU (about 2x faster each; boxes move by "
        "float rounding), and in training the other convolutions' gradients as GEMMs",
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile the backbone and neck (the first image of each size compiles, tens of seconds)",
    )


def _add_analysis_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gallery", type=int, default=12, metavar="N",
        help="draw the N images with the most errors into OUT/gallery (0: none; default 12)",
    )
    parser.add_argument(
        "--score-thresh", type=float, default=0.5,
        help="the lowest score the confusion matrix counts and the gallery draws (default 0.5; AP and the "
        "error types use every detection)",
    )


def _add_precision(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|fp16|bf16`` of the commands that run a model at inference."""
    parser.add_argument(
        "--precision", default="fp32", metavar="fp32|fp16|bf16",
        help="run the model in fp32 (default), or under fp16/bf16 autocast; box decoding, NMS and the "
        "detections stay fp32",
    )


# ----------------------------------------------------------------------------- commands


def cmd_plugins(args: argparse.Namespace) -> int:
    from detkit.plugins import load_plugins
    from detkit.registry import COMPONENT_KINDS, describe

    plugins = load_plugins(args.plugins)
    if args.describe:
        kind, name = args.describe
        print(describe(plugins.registry.get(kind, name)))
        return 0
    print("plugins:")
    width = max(len(info.name) for info in plugins.infos)
    for info in plugins.infos:
        print(f"  {info.name:<{width}}  {info.origin}")
    print("components:")
    for kind in COMPONENT_KINDS:
        comps = [plugins.registry.get(kind, n) for n in plugins.registry.names(kind)]
        if comps:
            listing = ", ".join(f"{c.name} ({c.plugin})" for c in comps)
            print(textwrap.fill(listing, 100, initial_indent=f"  {kind + ':':<18}", subsequent_indent=" " * 20))
    return 0


def _device(config: dict[str, Any], args: argparse.Namespace) -> None:
    """Check the device (``--device``, else ``train.device``) before any work; ``--device`` goes into the config."""
    from detkit.device import command_device

    command_device(args.device, config["train"]["device"])
    if args.device:
        config["train"]["device"] = args.device


def _checkpoint_device(args: argparse.Namespace, config: dict[str, Any]) -> Any:
    """The device of a command on ``args.weights``: ``--device``, else the checkpoint's ``train.device``."""
    from detkit.device import command_device

    return command_device(
        args.device, config["train"]["device"], source=f"train.device of checkpoint {str(args.weights)!r}"
    )


def _check_device_flag(args: argparse.Namespace) -> None:
    """Fail on a bad ``--device`` before reading any file."""
    from detkit.device import DEVICE_FLAG, resolve_device

    if getattr(args, "device", None):
        resolve_device(args.device, source=DEVICE_FLAG)


def _check_precision_flag(args: argparse.Namespace) -> None:
    """Fail on an unknown ``--precision`` before reading any file."""
    from detkit.device import PRECISION_FLAG, check_precision_name

    check_precision_name(args.precision, source=PRECISION_FLAG)


def _precision(args: argparse.Namespace, device: Any) -> str:
    """``--precision`` checked for the resolved ``device``.

    bf16 on a GPU without it is refused; fp16/bf16 on a CPU without AMX runs, with a warning.
    """
    from detkit.device import PRECISION_FLAG, check_precision

    return check_precision(args.precision, device, source=PRECISION_FLAG)


def cmd_train(args: argparse.Namespace) -> int:
    from detkit.config import load_config
    from detkit.engine.distributed import env_info
    from detkit.engine.run import run_training
    from detkit.evaluation.coco import format_metrics

    if args.nproc is not None and args.nproc > 1 and not env_info().distributed:
        return _launch_torchrun(args)
    if args.resume is not None and args.config is not None and "=" in args.config and not Path(args.config).exists():
        args.overrides, args.config = [args.config, *args.overrides], None  # `--resume RUN key=value`
    if args.config is None and args.resume is None:
        raise DetkitError("detkit train needs a config file, or --resume RUN_DIR (see detkit train --help)")
    config_path = args.config if args.config is not None else Path(args.resume) / "config.yaml"
    if args.config is None and not Path(config_path).is_file():
        raise DetkitError(f"--resume {args.resume!r}: no config.yaml there; is it a detkit run folder?")
    config = load_config(config_path, args.overrides)
    _device(config, args)
    if args.out:
        config["output"]["dir"] = args.out
    elif args.resume is not None and Path(args.resume).is_dir():
        config["output"]["dir"] = str(args.resume)
    main_rank = not env_info().rank
    if not main_rank:  # one copy of each warning: rank 0's
        logging.getLogger().setLevel(logging.ERROR)
    metrics = run_training(config, args.plugins, progress=not args.quiet, resume=args.resume)
    if main_rank:
        print(format_metrics(metrics))
        out = config["output"]["dir"]
        print(f"outputs in {out}/: best.pt, last.pt, metrics.json, metrics.jsonl, loss_curve.png, config.yaml")
    return 0


def _launch_torchrun(args: argparse.Namespace) -> int:
    """``detkit train ... --nproc N``: the same command under ``torchrun --standalone --nproc_per_node=N``."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv = _without_option(args.argv, "--nproc")
    # torchrun gives each process one thread unless told; share the cores instead
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    launcher = get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={args.nproc}", "-m", "detkit", *argv]
    )
    try:
        run(launcher)
    except ChildFailedError as exc:
        ranks = ", ".join(f"rank {rank} (exit code {failure.exitcode})" for rank, failure in exc.failures.items())
        raise DetkitError(f"the training job failed: {ranks}; the message of the failing rank is above") from exc
    return 0


def _without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from detkit.engine.build import build_dataset, dataset_from_path, load_model
    from detkit.engine.evaluate import evaluate_dataset, label_map_by_name
    from detkit.evaluation.coco import check_backend

    _check_analysis_flags(args)
    if args.results is not None:
        return _eval_results(args)
    if args.weights is None:
        raise DetkitError("detkit eval needs --weights CHECKPOINT (run a model) or --results FILE (score a file)")
    _check_device_flag(args)
    _check_precision_flag(args)
    reuse_freed_memory()
    loaded, plugins = load_model(
        args.weights, config_path=args.config, overrides=args.overrides, cli_plugins=args.plugins,
        channels_last=args.channels_last, winograd=args.winograd, compile=args.compile,
    )
    device = _checkpoint_device(args, loaded.config)
    precision = _precision(args, device)
    if args.data is None:  # the validation set the checkpoint was trained with (a held-out split too)
        if not loaded.config["data"].get("val"):
            raise DetkitError(f"checkpoint {args.weights!r} names no data.val to evaluate on; give --data")
        dataset = build_dataset(loaded.config, "val", plugins)
    else:
        dataset = dataset_from_path(args.data, images=args.images, split=args.split)
    label_map = label_map_by_name(loaded.class_names, dataset.class_names, data=args.data or "data.val")
    backend = args.backend or check_backend(str(loaded.config["eval"].get("backend", "faster")))
    out = Path(args.out)
    metrics = evaluate_dataset(
        loaded.model.to(device),
        dataset,
        batch_size=int(loaded.config["eval"]["batch_size"]),
        max_images=args.max_images,
        skip_unreadable=args.skip_unreadable,
        results_path=out / "results.json",
        label_map=label_map,
        precision=precision,
        backend=backend,
        progress=not args.quiet,
    )
    if not args.no_analysis:
        skipped = {s["image_id"] for s in metrics["images"]["skipped"]}
        evaluated = [i for i in dataset.image_ids[: args.max_images] if i not in skipped]
        metrics = _with_analysis(args, metrics, out / "results.json", dataset, evaluated, backend)
    return _report_metrics(metrics, out, also=out / "results.json")


def _with_analysis(
    args: argparse.Namespace, metrics: dict[str, Any], results: Path | str, dataset: Any, image_ids: Any, backend: str
) -> dict[str, Any]:
    """``metrics`` with the error analysis of ``results`` added, its pictures drawn into ``--out``."""
    from detkit.engine.analyze import analyze_results
    from detkit.evaluation.coco import read_results

    analysis = analyze_results(
        read_results(results), dataset, out_dir=args.out, image_ids=image_ids, backend=backend,
        gallery=args.gallery, score_thresh=args.score_thresh, source=f"results file '{results}'",
    )
    merged = dict(metrics)
    for key, value in analysis.items():
        if key in ("bbox", "segm") and key in merged:
            merged[key] = {**merged[key], "errors": value["errors"], "by_size": value["by_size"]}
        elif key in ("confusion", "gallery"):
            merged[key] = value
    return merged


def _report_metrics(metrics: dict[str, Any], out: Path, *, also: Path | None = None) -> int:
    """Write ``out/metrics.json``, print the metrics and their analysis, name what was written."""
    from detkit.evaluation.coco import format_metrics
    from detkit.io import write_json

    write_json(out / "metrics.json", metrics)
    print(format_metrics(metrics))
    _print_analysis(metrics, out)
    print(f"wrote {out / 'metrics.json'}" + (f" and {also}" if also is not None else ""))
    return 0


def _print_analysis(metrics: dict[str, Any], out: Path) -> None:
    from detkit.engine.analyze import format_analysis

    if "confusion" not in metrics:
        return
    print(format_analysis(metrics))
    pictures = ["errors.png", "pr_curves.png", "confusion_matrix.png"]
    pictures += ["gallery/"] if metrics.get("gallery") else []
    print(f"drew {', '.join(str(out / p) for p in pictures)}")


def cmd_analyze(args: argparse.Namespace) -> int:
    from detkit.engine.analyze import analyze_results
    from detkit.engine.build import dataset_from_path
    from detkit.evaluation.coco import DEFAULT_BACKEND, read_results

    _check_analysis_flags(args)
    dataset = dataset_from_path(args.data, images=args.images, split=args.split)
    out = Path(args.out)
    metrics = analyze_results(
        read_results(args.results), dataset, out_dir=out, backend=args.backend or DEFAULT_BACKEND,
        gallery=args.gallery, score_thresh=args.score_thresh, source=f"results file '{args.results}'",
    )
    metrics["results"] = str(args.results)
    return _report_metrics(metrics, out)


def _check_analysis_flags(args: argparse.Namespace) -> None:
    from detkit.errors import ConfigError

    if args.gallery < 0:
        raise ConfigError(f"--gallery must be 0 or more images, got {args.gallery}")
    if not 0.0 <= args.score_thresh <= 1.0:
        raise ConfigError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if getattr(args, "backend", None) is not None:
        from detkit.evaluation.coco import check_backend

        check_backend(args.backend, source="--backend")


def _eval_results(args: argparse.Namespace) -> int:
    """``detkit eval --results FILE --data ANN``: score a results file, no model."""
    from detkit.engine.build import dataset_from_path
    from detkit.engine.evaluate import evaluate_results
    from detkit.errors import ConfigError
    from detkit.evaluation.coco import DEFAULT_BACKEND

    if args.weights is not None:
        raise ConfigError("give --weights (run a model) or --results (score a results file), not both")
    if args.data is None:
        raise ConfigError("--results needs --data: the annotation file (or VOC/YOLO dataset) the results are of")
    if args.config is not None or args.overrides or args.max_images is not None:
        raise ConfigError("--results takes no config, overrides or --max-images; choose the backend with --backend")
    dataset = dataset_from_path(args.data, images=args.images, split=args.split)
    backend = args.backend or DEFAULT_BACKEND
    metrics = evaluate_results(args.results, dataset, backend=backend)
    out = Path(args.out)
    if not args.no_analysis:
        metrics = _with_analysis(args, metrics, args.results, dataset, dataset.image_ids, backend)
    return _report_metrics(metrics, out)


def cmd_detect(args: argparse.Namespace) -> int:
    from detkit.device import bf16_hint
    from detkit.engine.build import load_model
    from detkit.engine.predict import ImageFiles
    from detkit.engine.video import open_sources
    from detkit.export import is_exported_file

    _check_device_flag(args)
    _check_precision_flag(args)
    _check_detect_counts(args)
    videos, image_inputs = _detect_inputs(args)
    source = ImageFiles.find(image_inputs) if image_inputs else None
    streams = open_sources(videos, camera=args.camera)  # every video opens before the model loads
    try:
        reuse_freed_memory()
        hint = None  # the bf16 tip, for a checkpoint run in fp32 on an AMX CPU
        if is_exported_file(args.weights):  # detkit export's file: onnxruntime or TorchScript, on the CPU
            model, class_names, precision = _exported_model(args)
        else:
            loaded, _ = load_model(
                args.weights, config_path=args.config, cli_plugins=args.plugins,
                channels_last=args.channels_last, winograd=args.winograd, compile=args.compile,
            )
            device = _checkpoint_device(args, loaded.config)
            precision = _precision(args, device)
            model, class_names = loaded.model.to(device), loaded.class_names
            hint = bf16_hint(precision, device)
        status = 0 if source is None else _detect_images(args, model, source, class_names, precision)
        status = _detect_streams(args, model, streams, class_names, precision) or status
        if hint and not args.quiet:
            print(hint)
        return status
    finally:
        for stream in streams:
            stream.close()


def _exported_model(args: argparse.Namespace) -> tuple[nn.Module, list[str], str]:
    """``detect --weights`` of an exported file: the runner, its class names and precision fp32 (CPU only)."""
    from detkit.errors import ConfigError
    from detkit.export import load_exported

    flags = (
        ("--config", args.config), ("--channels-last", args.channels_last), ("--winograd", args.winograd),
        ("--compile", args.compile),
    )
    for flag, given in flags:
        if given:
            raise ConfigError(f"{flag} applies to detkit checkpoints; {args.weights!r} is an exported model")
    if args.device not in (None, "auto", "cpu") or args.precision not in (None, "fp32"):
        raise ConfigError(f"{args.weights!r} is an exported model: it runs on the CPU in fp32 here")
    model = load_exported(args.weights)
    return model, model.class_names, "fp32"


def cmd_export(args: argparse.Namespace) -> int:
    from detkit.export import export_model

    result = export_model(
        args.checkpoint, args.out, format=args.format, opset=args.opset, image_size=args.size,
        check=not args.no_check, cli_plugins=args.plugins,
    )
    meta = result.metadata
    h, w = meta["image_size"]
    size = "any H x W" if meta["dynamic_size"] else f"{h} x {w} only (fixed: the model keeps the aspect ratio)"
    print(f"wrote {result.path} ({result.format}, {meta['model_type']}, {len(meta['class_names'])} classes)")
    print(f"  input:   {meta['input']['name']} (3, H, W) float32 RGB in [0, 1]; size: {size}")
    print(f"  outputs: {', '.join(meta['outputs'])}" + (f"; then {meta['decode']}" if meta["decode"] else ""))
    print(f"  exporter: {meta['exporter']}")
    for report in result.parity:
        print(f"  parity with detkit, {report.line()}")
    return 0 if all(r.ok() for r in result.parity) else 1


def _detect_inputs(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """``detect``'s videos and image inputs; checks ``--camera``, ``--stride`` and ``--max-frames`` against them."""
    from detkit.engine.video import check_stream_options, split_inputs
    from detkit.errors import ConfigError

    check_stream_options(stride=args.stride, max_frames=args.max_frames)
    if args.camera is not None:
        if args.inputs:
            raise ConfigError("--camera reads a camera instead of files; give no INPUT with it")
        if args.camera < 0:
            raise ConfigError(f"--camera must be a camera index (0, 1, ...), got {args.camera}")
        return [], []
    if not args.inputs:
        raise ConfigError("give images, folders, globs or videos to detect, or --camera INDEX")
    videos, images = split_inputs(args.inputs)
    if not videos and (args.stride != 1 or args.max_frames is not None):
        raise ConfigError("--stride and --max-frames apply to videos and --camera; the inputs hold no video")
    if videos and args.resume:
        print("detkit: warning: --resume applies to images; videos are detected from their start", file=sys.stderr)
    return videos, images


def _detect_images(
    args: argparse.Namespace, model: nn.Module, source: ImageFiles, class_names: list[str], precision: str
) -> int:
    """Run ``detect`` on the image files of ``source``; print the summary; the exit status."""
    from detkit.engine.predict import detect_files

    report = detect_files(
        model,
        source,
        args.out,
        class_names=class_names,
        score_thresh=args.score_thresh,
        draw=not args.no_draw,
        precision=precision,
        progress=not args.quiet,
        batch_size=args.batch_size,
        workers=args.workers,
        resume=args.resume,
    )
    for _, why in report.failed:  # each message names its file
        print(f"detkit: warning: skipped: {why}", file=sys.stderr)
    for _, why in report.not_drawn:
        print(f"detkit: warning: not drawn: {why}", file=sys.stderr)
    notes = [f"{len(report.failed)} skipped"] if report.failed else []
    if args.resume:
        notes.append(f"{report.resumed} already done")
    counts = f"{report.num_images} images" + (f" ({', '.join(notes)})" if notes else "")
    print(f"{counts}, {report.num_detections} detections -> {report.json_path}")
    note = report.empty_note()
    if note:
        print(f"{note}; a lower --score-thresh shows weaker detections")
    return 1 if report.failed and len(report.failed) == len(source) else 0


def _detect_streams(
    args: argparse.Namespace, model: nn.Module, streams: list[VideoFrames], class_names: list[str], precision: str
) -> int:
    """Run ``detect`` on each video (or the camera) in turn; print a summary each; the exit status.

    Ctrl-C ends a camera run normally (status 0); it stops a video file's run with
    status 130, after closing its outputs, and the videos after it are not started.
    """
    from detkit.engine.video import detect_video, output_names

    for stream, name in zip(streams, output_names(streams)):
        report = detect_video(
            model, stream, args.out, name=name, class_names=class_names, score_thresh=args.score_thresh,
            draw=not args.no_draw, precision=precision, progress=not args.quiet, batch_size=args.batch_size,
            stride=args.stride, max_frames=args.max_frames,
        )
        print(report.summary())
        if report.stopped and not stream.is_camera:
            return 130
    return 0


def _check_detect_counts(args: argparse.Namespace) -> None:
    """Fail on ``--batch-size`` below 1 or ``--workers`` below 0 before reading any file."""
    from detkit.errors import ConfigError

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be at least 0, got {args.workers}")


def _min_max_size(text: str) -> tuple[int, int | None]:
    """``--size MIN[:MAX]`` -> ``(MIN, MAX or None)``."""
    low, _, high = text.partition(":")
    try:
        sizes = (int(low), int(high) if high else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN or MIN:MAX in pixels, e.g. 600 or 600:1000") from None
    if sizes[0] < 1 or (sizes[1] is not None and sizes[1] < sizes[0]):
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= MIN <= MAX")
    return sizes


def cmd_proposals(args: argparse.Namespace) -> int:
    from detkit.engine.build import dataset_from_path, plugins_for
    from detkit.engine.proposals import ProposerRun, score_proposers
    from detkit.engine.run import proposals_coverage, proposals_report
    from detkit.errors import ConfigError, DataError
    from detkit.evaluation.proposals import format_table, plot_recall_curves, proposal_budgets
    from detkit.io import write_json

    _check_device_flag(args)
    if args.max_proposals < 1:
        raise ConfigError(f"--max-proposals must be at least 1, got {args.max_proposals}")
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images must be at least 1, got {args.max_images}")
    registry = plugins_for(None, args.plugins).registry
    runs = []
    for spec in args.proposers:  # every spec is checked before the first image is read
        try:
            runs.append(ProposerRun(spec, registry, size=args.size, device=args.device, plugins=args.plugins))
        except DetkitError as exc:
            message = str(exc)
            raise type(exc)(message if "--proposer" in message else f"--proposer {spec!r}: {message}") from exc
    dataset = dataset_from_path(args.data, images=args.images, split=args.split)
    indices = list(range(len(dataset) if args.max_images is None else min(args.max_images, len(dataset))))
    budgets = proposal_budgets(args.max_proposals)
    results, bad = score_proposers(runs, dataset, indices, budgets=budgets, progress=not args.quiet)
    if not results:
        raise DataError(f"--data {args.data!r}: none of the {len(indices)} images could be read and proposed")
    out = Path(args.out)
    report = proposals_report(
        results,
        bad,
        source={"data": args.data, "images": args.images, "split": args.split},
        settings={
            "max_proposals": args.max_proposals,
            "max_images": args.max_images,
            "size": list(args.size) if args.size else None,
            "budgets": budgets,
        },
        total=len(dataset),
    )
    write_json(out / "proposals.json", report)
    plot_recall_curves([{"name": r["spec"], "curve": r["curve"]} for r in results], out / "recall.png")
    print(format_table([{**r, "name": r["spec"]} for r in results]))
    print(proposals_coverage(report["dataset"], max_images=args.max_images))
    print(f"wrote {out / 'proposals.json'} and {out / 'recall.png'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from detkit.errors import DataError
    from detkit.evaluation.compare import compare_dict, compare_table, format_runs, iou_types_of, read_runs
    from detkit.io import write_json
    from detkit.viz.plots import plot_training_curves

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise DataError(f"--out '{out}' is a file; give a folder for compare.json and training_curves.png")
    runs = read_runs(args.runs)
    iou_types = [args.iou_type] if args.iou_type else iou_types_of(runs)
    for iou_type in iou_types:
        print(compare_table(runs, iou_type))
    print(format_runs(runs), end="")
    if out is not None:
        write_json(out / "compare.json", compare_dict(runs, iou_types))
        plot_training_curves(runs, out / "training_curves.png")
        undrawn = [r.name for r in runs if r.records is None]
        note = f" (no training curve for {', '.join(undrawn)}: no metrics.jsonl)" if undrawn else ""
        print(f"wrote {out / 'compare.json'} and {out / 'training_curves.png'}{note}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from detkit.device import DEVICE_FLAG, resolve_device
    from detkit.engine.benchmark import Setup, agreement_failure, data_root, format_results, run_benchmark
    from detkit.errors import ConfigError
    from detkit.io import write_json

    _check_precision_flag(args)
    for flag, value, minimum in (("--batch-size", args.batch_size, 1), ("--runs", args.runs, 1),
                                 ("--warmup", args.warmup, 0), ("--threads", args.threads, 1),
                                 ("--num-classes", args.num_classes, 1)):
        if value is not None and value < minimum:
            raise ConfigError(f"{flag} must be at least {minimum}, got {value}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device or "cpu", source=DEVICE_FLAG)
    reuse_freed_memory()
    setup = Setup(
        model=args.model, overrides=args.overrides, device=device, batch_size=args.batch_size,
        precision=_precision(args, device), compile=args.compile, channels_last=args.channels_last,
        winograd=args.winograd,
        train=args.train, against=args.against, images=args.images, runs=args.runs, warmup=args.warmup,
        seed=args.seed, num_classes=args.num_classes, cli_plugins=args.plugins,
    )
    report = run_benchmark(setup, data_root=data_root(), show_progress=not args.quiet)
    print(format_results(report))
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    failure = agreement_failure(report)
    if failure:
        print(f"detkit: error: {failure}", file=sys.stderr)
        return 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from detkit.engine.info import checkpoint_info, format_info

    info = checkpoint_info(args.checkpoint)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_import_torchvision(args: argparse.Namespace) -> int:
    from detkit.engine.run import import_torchvision
    from detkit.plugins import load_plugins

    if args.list or not args.name:
        print("importable models: " + ", ".join(load_plugins(args.plugins).registry.names("importer")))
        return 0
    if not (args.input and args.output):
        raise DetkitError("usage: detkit import-torchvision NAME IN.pth OUT.pt (see --help)")
    class_names = import_torchvision(
        args.name, args.input, args.output, config_path=args.config, cli_plugins=args.plugins
    )
    print(f"wrote {args.output} ({args.name}, {len(class_names)} classes)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from detkit.config import load_config
    from detkit.data.images import find_images
    from detkit.device import resolve_device
    from detkit.engine.build import load_model
    from detkit.engine.predict import detect_files
    from detkit.engine.run import run_training
    from detkit.evaluation.coco import format_metrics
    from detkit.importers import CONFIG_DIR

    start = time.monotonic()
    out = Path(args.out)
    recipe = Path(args.config) if args.config else CONFIG_DIR / "shapes_faster_rcnn.yaml"
    overrides = [f"data.train.root={out / 'data'}", f"data.val.root={out / 'data'}", *args.overrides]
    config = load_config(recipe, overrides)
    _device(config, args)
    config["output"]["dir"] = str(out)
    metrics = run_training(config, args.plugins, progress=not args.quiet)
    print(format_metrics(metrics))
    loaded, _ = load_model(out / "best.pt")
    device = resolve_device(str(config["train"]["device"]))
    val_images = find_images([str(out / "data" / "val")])[:16]
    report = detect_files(
        loaded.model.to(device),
        val_images,
        out / "detections",
        class_names=loaded.class_names,
        score_thresh=0.5,
        progress=not args.quiet,
    )
    minutes = (time.monotonic() - start) / 60
    note = report.empty_note("score threshold")
    print(
        f"\ndemo finished in {minutes:.1f} min: box AP {metrics['bbox']['AP']:.3f} "
        f"(AP50 {metrics['bbox']['AP50']:.3f}) on the shapes validation split (fractions, as in metrics.json)\n"
        f"  metrics:           {out / 'metrics.json'}\n"
        f"  loss curve:        {out / 'loss_curve.png'}\n"
        f"  annotated images:  {out / 'detections'}/ ({len(report.written)} files)\n"
        + (f"                     ({note})\n" if note else "")
        + f"  weights:           {out / 'best.pt'}"
    )
    return 0


# ----------------------------------------------------------------------------- entry point


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Data warnings (a clipped box, a dropped annotation) as one line, without source code."""
    print(f"detkit: warning: {message}", file=sys.stderr)


def _debug_env() -> bool:
    """``DETKIT_DEBUG`` is set to something other than empty, ``0``, ``false`` or ``no``."""
    return os.environ.get("DETKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _rank_prefix() -> str:
    """``"rank R: "`` in a process of a distributed job (torchrun sets ``RANK``), else ``""``."""
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    return f"rank {rank}: " if world not in ("", "1") else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    # KEY=VALUE overrides may follow options (`train C --device cuda a.b=1`)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.version:
        from detkit import __version__

        print(f"detkit {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return EXIT_USER_ERROR
    logging.basicConfig(level=logging.WARNING, format="detkit: warning: %(message)s")
    warnings.showwarning = _show_warning
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except DetkitError as exc:
        if args.traceback or _debug_env():
            traceback.print_exc()
        else:
            print(f"detkit: error: {_rank_prefix()}{exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("detkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
