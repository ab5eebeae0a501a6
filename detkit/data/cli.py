"""The ``detkit data`` commands: ``convert`` (between dataset formats).

:func:`add_commands` adds the ``data`` group to ``detkit``'s subcommands; ``detkit/cli.py``
calls it from ``build_parser``. Each subcommand is one ``add_<name>(dsub)`` function
(its parser) and one ``cmd_data_<name>(args)`` (what it does), and ``add_commands``
calls the ``add_`` functions: a new subcommand is a new pair and one line there.

Building the parser must stay cheap (``detkit --version``), so this module imports
only argparse helpers; the commands import what they need when they run. Errors a
user can cause are :class:`~detkit.errors.DetkitError` and reach ``detkit.cli.main``,
which prints them without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from detkit.cliutil import subparser
from detkit.errors import EXIT_USER_ERROR

__all__ = ["add_commands", "add_convert", "cmd_data_convert"]

#: Formats ``detkit data convert`` reads and writes (the same as :mod:`detkit.data.convert`'s).
SOURCE_FORMATS = ("coco", "voc", "via", "yolo")
TARGET_FORMATS = ("coco", "yolo")


def add_commands(sub: Any) -> None:
    """Add ``data`` (with its subcommands) to ``sub``, the ``add_subparsers()`` object of ``detkit``."""
    data = subparser(sub, "data", "Work with datasets: convert between formats.", """
        detkit data convert --from coco --to yolo \\
            ../shared/data/tiny_coco/annotations/instances_val2017.json runs/tiny_coco_yolo
    """)
    data.set_defaults(func=lambda args: _missing_subcommand(data))
    dsub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    add_convert(dsub)


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USER_ERROR


# ----------------------------------------------------------------------------- convert


def add_convert(dsub: Any) -> None:
    """``detkit data convert --from F --to T SRC OUT``."""
    p = subparser(dsub, "convert", "Convert annotations between COCO, VOC, VIA and YOLO (to COCO or YOLO).", """
        detkit data convert --from coco --to yolo \\
            ../shared/data/tiny_coco/annotations/instances_val2017.json runs/tiny_coco_yolo
        detkit data convert --from yolo --to coco runs/tiny_coco_yolo/data.yaml runs/tiny_coco_back
        detkit data convert --from voc --to yolo ../shared/data/BCCD runs/bccd_yolo --split train
        detkit data convert --from voc --to yolo ../shared/data/BCCD runs/bccd_yolo --split val
        detkit data convert --from via --to yolo ../shared/data/balloon/train runs/balloon_yolo
        detkit data convert --from via --to yolo ../shared/data/balloon/val runs/balloon_yolo
    """)
    p.description = (
        "Convert annotations between COCO, VOC, VIA and YOLO (to COCO or YOLO). OUT is a folder: "
        "--to yolo writes OUT/data.yaml, OUT/labels/SPLIT/ and links the images into OUT/images/SPLIT/; "
        "--to coco writes OUT/annotations/instances_SPLIT.json and links the images into OUT/SPLIT/. "
        "One split per run (a YOLO source: every split of its data.yaml unless --split); converting "
        "another split into the same OUT adds it to data.yaml. Polygons stay polygons; crowd regions "
        "cannot be written to YOLO and are dropped with a warning."
    )
    p.add_argument("--from", dest="source_format", required=True, choices=SOURCE_FORMATS, help="source format")
    p.add_argument("--to", dest="target_format", required=True, choices=TARGET_FORMATS, help="target format")
    p.add_argument(
        "input", metavar="SRC",
        help="COCO instances .json, VOC root folder, VIA folder (with via_region_data.json), YOLO data.yaml "
        "or folder",
    )
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--images", default=None, help="image folder of a COCO json (default: beside it)")
    p.add_argument(
        "--split", default=None,
        help="VOC split to read (default trainval), YOLO split to read (default: all); for COCO and VIA the "
        "output split's name (default: the json's name after instances_, the VIA folder's name)",
    )
    p.add_argument("--copy-images", action="store_true", help="copy the images instead of linking them")
    p.add_argument("--overwrite", action="store_true", help="replace the split if OUT already holds it")
    p.set_defaults(func=cmd_data_convert)


def cmd_data_convert(args: argparse.Namespace) -> int:
    from detkit.data.convert import convert

    reports = convert(
        args.source_format,
        args.target_format,
        args.input,
        args.out,
        images=args.images,
        split=args.split,
        copy_images=args.copy_images,
        overwrite=args.overwrite,
        progress=not getattr(args, "quiet", False),
    )
    for report in reports:
        print(report.summary())
    return 0
