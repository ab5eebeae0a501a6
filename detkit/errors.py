"""Errors a user can cause.

Every error that a user can provoke with a bad file, config, annotation or plugin
is a :class:`DetkitError`. The CLI prints its message without a traceback and
exits with a non-zero status, so the message must name the file, key or record
at fault and say what to do about it.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable

#: Exit status of a run stopped by a user error.
EXIT_USER_ERROR = 2


class DetkitError(Exception):
    """Base class of every user-facing detkit error."""


class ConfigError(DetkitError):
    """A config file, key or value is wrong."""


class PluginError(DetkitError):
    """A plugin failed to load, or a component name is unknown or duplicated."""


class DataError(DetkitError):
    """A dataset, annotation file or image cannot be used."""


class CheckpointError(DetkitError):
    """A checkpoint or weight file cannot be read or does not fit the model."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A `` (did you mean 'x'?)`` suffix for an unknown name, or ``""``; for error messages."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def run_tool(main: Callable[[], int], prog: str) -> int:
    """Run a script's ``main()``; a :class:`DetkitError` prints ``PROG: error: MESSAGE``.

    For the scripts under ``tools/``: a user error ends them like the ``detkit``
    command, with one line on stderr and exit status :data:`EXIT_USER_ERROR`,
    never a traceback.
    """
    try:
        return main()
    except DetkitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
