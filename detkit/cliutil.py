"""Argument-parser helpers shared by every ``detkit`` subcommand module.

:mod:`detkit.cli` builds the top-level parser; modules that add commands
(:mod:`detkit.classify.cli`, :mod:`detkit.explain.cli`) take the subparsers object
and use :func:`subparser` and :func:`add_common` so every command looks alike:
a description, examples in the epilog, ``-p`` for plugins and ``--device``, and the
global flags (:func:`add_global_flags`) before or after the command name.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any


def add_global_flags(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """Add ``-q/--quiet`` and ``--traceback``, the flags every command takes before or after its name.

    The top-level parser (``top_level=True``) sets their defaults; a subcommand's copy
    sets a value only when the flag is given there, so ``detkit -q train ...`` and
    ``detkit train ... -q`` mean the same.
    """
    default: dict[str, Any] = {"default": False} if top_level else {"default": argparse.SUPPRESS}
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars", **default)
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="print the full traceback of any error, user errors too (also DETKIT_DEBUG=1)",
        **default,
    )


def add_common(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """Add ``-p MODULE`` (repeatable; ``-p no:NAME`` blocks a plugin) and, unless ``device=False``, ``--device``."""
    parser.add_argument(
        "-p",
        dest="plugins",
        action="append",
        default=[],
        metavar="MODULE",
        help="load a plugin module (repeatable); -p no:NAME blocks plugin NAME",
    )
    if device:
        parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: the config's)")


def subparser(sub: Any, name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand of ``sub`` (an ``add_subparsers()`` object) with ``help_text`` and an examples epilog."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_global_flags(parser)
    return parser


__all__ = ["add_common", "add_global_flags", "subparser"]
