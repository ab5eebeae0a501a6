"""Argument-parser helpers shared by every ``detkit`` subcommand module.

:mod:`detkit.cli` builds the top-level parser; modules that add commands
(:mod:`detkit.classify.cli`, :mod:`detkit.explain.cli`) take the subparsers object
and use :func:`subparser` and :func:`add_common` so every command looks alike:
a description, examples in the epilog, ``-p`` for plugins and ``--device``.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any


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
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


__all__ = ["add_common", "subparser"]
