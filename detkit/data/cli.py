"""The ``detkit data`` commands: ``convert`` (between dataset formats) and ``check`` (a dataset's problems).

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

from detkit.cliutil import add_common, subparser
from detkit.errors import EXIT_USER_ERROR

__all__ = ["add_check", "add_commands", "add_convert", "cmd_data_check", "cmd_data_convert"]

#: Formats ``detkit data convert`` reads and writes (the same as :mod:`detkit.data.convert`'s).
SOURCE_FORMATS = ("coco", "voc", "via", "yolo")
TARGET_FORMATS = ("coco", "yolo")


def add_commands(sub: Any) -> None:
    """Add ``data`` (with its subcommands) to ``sub``, the ``add_subparsers()`` object of ``detkit``."""
    data = subparser(sub, "data", "Work with datasets: convert between formats, check for problems.", """
        detkit data convert --from coco --to yolo \\
            ../shared/data/tiny_coco/annotations/instances_val2017.json runs/tiny_coco_yolo
        detkit data check configs/bccd_faster_rcnn.yaml
    """)
    data.set_defaults(func=lambda args: _missing_subcommand(data))
    dsub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    add_convert(dsub)
    add_check(dsub)


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


# ----------------------------------------------------------------------------- check


def add_check(dsub: Any) -> None:
    """``detkit data check CONFIG|ANNOTATIONS``."""
    p = subparser(dsub, "check", "Check a dataset: images, sizes, boxes, ids, classes; histograms.", """
        detkit data check configs/bccd_faster_rcnn.yaml
        detkit data check ../shared/data/tiny_coco/annotations/instances_val2017.json --out runs/data_check
        detkit data check ../shared/data/BCCD --split test
        detkit data check ../shared/data/balloon/train --decode
    """)
    p.description = (
        "Check a dataset before training on it: missing or unreadable images, annotated sizes that differ "
        "from the image files, degenerate boxes and boxes outside the image, unknown categories, duplicate "
        "ids, orphan annotations, bad polygons (errors); boxes partly outside the image (warnings); crowd "
        "regions and images without objects (info). Prints each kind of problem with its count and the "
        "first examples (file, image id, annotation id), the objects per class and the box sizes, and writes "
        "OUT/report.json, OUT/classes.png and OUT/box_sizes.png. A config's data.train and data.val are "
        "checked; an annotation source may be a COCO json (--images), a Pascal VOC root (--split; default: "
        "every split), a VIA json or folder, or a YOLO data.yaml. Exit status 1 when there are errors, "
        "0 otherwise (warnings too); 2 when the source cannot be read."
    )
    p.add_argument(
        "input", metavar="CONFIG|ANNOTATIONS",
        help="a detkit config (.yaml, detkit:NAME.yaml), a COCO .json, a VOC root, a VIA json or folder, "
        "or a YOLO data.yaml",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of a config")
    p.add_argument("--images", default=None, help="image folder of a COCO json (default: beside it)")
    p.add_argument("--split", default=None, help="the VOC or YOLO split to check (default: every split)")
    p.add_argument("--out", default="runs/data_check", help="where report.json and the PNGs go")
    p.add_argument("--examples", type=int, default=5, help="examples printed per kind of problem (default 5)")
    p.add_argument("--decode", action="store_true", help="decode every image, not only its header "
                   "(also finds truncated files; about ten times slower)")
    add_common(p, device=False)
    p.set_defaults(func=cmd_data_check)


def cmd_data_check(args: argparse.Namespace) -> int:
    from detkit.data.check import check_source, format_report, summarize, write_report

    reports = check_source(
        args.input, images=args.images, split=args.split, overrides=args.overrides, cli_plugins=args.plugins,
        decode=args.decode, progress=not args.quiet,
    )
    for report in reports:
        print(format_report(report, max_examples=max(0, args.examples)))
        print()
    written = write_report(reports, args.out)
    errors = sum(r.num_errors for r in reports)
    print(f"{summarize(reports)}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 1 if errors else 0
