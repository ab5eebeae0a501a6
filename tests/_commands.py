"""Shell commands as the README and the ``--help`` epilogs show them: split, parse, inspect.

Shared by ``test_readme.py`` (runs README's commands) and ``test_cli_examples.py``
(checks every ``--help`` example without running it).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from pathlib import Path

from detkit.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def join_lines(text: str) -> list[str]:
    """The commands of a shell snippet: continuation lines joined, blank lines dropped."""
    commands: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = pending + line
        pending = ""
        if line and not line.startswith("#"):
            commands.append(line)
    if pending.strip():
        commands.append(pending.strip())
    return commands


def tokens(command: str) -> tuple[dict[str, str], list[str]]:
    """``VAR=1 detkit plugins  # comment`` -> ``({"VAR": "1"}, ["detkit", "plugins"])``."""
    words = shlex.split(command, comments=True)
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def key(command: str) -> str:
    """A command in a canonical form (quotes, comments and spacing removed), for lookup tables."""
    env, words = tokens(command)
    return " ".join([*(f"{k}={v}" for k, v in env.items()), *words])


def readme_commands(readme: Path = REPO / "README.md") -> list[str]:
    """Every command of the README's ```bash blocks, in order."""
    blocks = re.findall(r"^```bash\n(.*?)^```", readme.read_text(), flags=re.S | re.M)
    return [command for block in blocks for command in join_lines(block)]


def epilog_examples() -> list[tuple[str, str]]:
    """``(subcommand, example)`` for every example in every ``detkit ... --help`` epilog."""
    found: list[tuple[str, str]] = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        epilog = parser.epilog or ""
        if "examples:" in epilog:
            found.extend((name, ex) for ex in join_lines(epilog.split("examples:", 1)[1]))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}".strip())

    walk(build_parser(), "")
    return found


def parse(words: list[str]) -> argparse.Namespace:
    """``detkit`` arguments as the command parses them (KEY=VALUE after options included).

    Raises:
        AssertionError: arguments the command would refuse.
    """
    args, extra = build_parser().parse_known_args(words)
    if extra:
        assert hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra), extra
        args.overrides = [*args.overrides, *extra]
    return args


def command_name(args: argparse.Namespace) -> str:
    """``train``, ``classify eval``, ``data convert``, ..."""
    sub = getattr(args, "classify_command", None) or getattr(args, "data_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def _rel(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    return os.path.relpath(p, REPO) if p.is_absolute() else os.path.normpath(p)


def written(args: argparse.Namespace) -> list[str]:
    """Files and folders a command writes, relative to the repository root."""
    from detkit.classify.train import load_classify_config
    from detkit.config import load_config

    name = command_name(args)
    if name in ("train", "classify train"):
        if args.out:
            return [_rel(args.out)]
        if getattr(args, "resume", None) and args.config is None:  # continues the run folder it names
            return [_rel(args.resume)]
        load = load_config if name == "train" else load_classify_config
        if not Path(args.config).is_file():  # a placeholder (your own config): nothing known
            return []
        return [_rel(load(args.config, args.overrides)["output"]["dir"])]
    if name == "import-torchvision":
        return [_rel(args.output)] if args.output else []
    out = getattr(args, "out", None)
    return [_rel(out)] if out else []


def read(args: argparse.Namespace) -> list[str]:
    """Files, folders and globs a command reads, relative to the repository root (``digits`` excluded)."""
    from detkit.engine.proposals import parse_proposer_spec

    paths: list[str] = []
    for attr in ("weights", "images", "image", "input"):
        value = getattr(args, attr, None)
        if value:
            paths.append(value)
    if getattr(args, "config", None):
        paths.append(args.config)
    if isinstance(getattr(args, "resume", None), str):  # train's run folder (detect's --resume is a switch)
        paths.append(args.resume)
    if getattr(args, "data", None) not in (None, "digits"):
        paths.append(args.data)
    paths += getattr(args, "inputs", None) or []
    for spec in getattr(args, "proposers", None) or []:
        weights = parse_proposer_spec(spec)[1].get("weights")
        if weights:
            paths.append(str(weights))
    return [p if "://" in p else _rel(p) for p in paths]


def is_under(path: str, folders: set[str]) -> bool:
    """``path`` is one of ``folders`` or inside one."""
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)
