"""Every example in every ``detkit ... --help`` epilog parses, is complete, and reads only what exists.

A copied example must not fail on a path no example writes (``runs/classify/best.pt``
when the recipe writes ``runs/lenet_digits``) nor on a config that lacks a setting the
command needs (a recipe without data). What the examples read is either in the
repository, in the shared data, written by another example, or a named placeholder
for the user's own file.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from _commands import REPO, command_name, epilog_examples, is_under, parse, read, tokens, written
from conftest import shared_data_root

from detkit.config import load_config

#: The user's own files, which no example can provide: path -> what it stands for.
PLACEHOLDERS = {
    "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth": "torchvision's download (README gives the URL)",
    "my.yaml": "the user's own classification config",
    "flowers/test": "the user's own image folder",
    "seven.png": "the user's own image",
    "clip.mp4": "the user's own video",
}

EXAMPLES = epilog_examples()


def _id(example: tuple[str, str]) -> str:
    return f"{example[0]}: {example[1][:60]}"


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the examples' paths are relative to a checkout's root


def test_every_command_has_examples() -> None:
    commands = {name for name, _ in EXAMPLES}
    expected = {"plugins", "train", "eval", "detect", "proposals", "import-torchvision", "demo", "explain",
                "classify", "classify train", "classify eval", "classify compare-linear", "data", "data convert",
                "data check"}
    assert expected <= commands, expected - commands


@pytest.mark.parametrize("example", EXAMPLES, ids=_id)
def test_example_parses_as_its_command(example: tuple[str, str]) -> None:
    name, text = example
    env, words = tokens(text)
    assert set(env) <= {"DETKIT_DISABLE_PLUGIN_AUTOLOAD", "DETKIT_DEBUG"}, env
    assert words[0] == "detkit", text
    assert command_name(parse(words[1:])) == name or name in ("classify", "data"), text  # a group: its commands


@pytest.mark.parametrize(
    "example", [e for e in EXAMPLES if e[0] == "train"], ids=_id
)
def test_train_examples_give_the_data_they_train_on(example: tuple[str, str]) -> None:
    args = parse(tokens(example[1])[1][1:])
    if args.config is None:  # --resume RUN_DIR: the run's own config.yaml, written by another example
        outputs = {path for _, text in EXAMPLES for path in written(parse(tokens(text)[1][1:]))}
        assert args.resume in outputs, example[1]
        return
    config = load_config(args.config, args.overrides)
    for split in ("train", "val"):
        assert config["data"].get(split), f"{example[1]}: data.{split} is not set"


def test_examples_read_only_what_exists_or_another_example_writes() -> None:
    parsed = [(text, parse(tokens(text)[1][1:])) for _, text in EXAMPLES]
    outputs = {path for _, args in parsed for path in written(args)}
    data_root = shared_data_root()
    problems = []
    for text, args in parsed:
        for path in read(args):
            if path in PLACEHOLDERS or is_under(path, outputs):
                continue
            if path.startswith("../shared/data/"):
                local = data_root / path.removeprefix("../shared/data/")
                if not data_root.exists() or glob.glob(str(local)):
                    continue
            elif glob.glob(str(REPO / path)) or Path(path).exists():
                continue
            problems.append(f"{path!r} in `{text}`")
    assert not problems, "examples read what nothing provides:\n" + "\n".join(problems)


def test_placeholders_are_still_used() -> None:
    used = {path for _, text in EXAMPLES for path in read(parse(tokens(text)[1][1:]))}
    assert set(PLACEHOLDERS) <= used, set(PLACEHOLDERS) - used
