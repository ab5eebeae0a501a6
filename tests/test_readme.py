"""README's commands, run as a newcomer would: in README order, from a checkout's root, with small budgets.

Every command of README's ```bash blocks is either run (with the extra arguments of
:data:`PLANS` that shrink it: fewer iterations, images and epochs) or listed as skipped
by design with the reason; a command in neither fails the test, so README cannot gain
a command nobody ran. The commands run in a temporary folder laid out like a checkout
(``configs`` linked to the recipes, ``../shared/data`` to the shared data), one after
the other, each reading what earlier ones wrote (``make demo`` -> ``runs/demo``, train ->
eval -> proposals, import -> eval and detect, classify train -> eval -> explain).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from _commands import REPO, key, readme_commands, tokens
from conftest import on_ci, shared_data_root

from detkit.cli import main

pytestmark = pytest.mark.readme

#: The demo's shapes data and training, shrunk (16 training and 8 validation images, 2 steps).
TINY_DEMO = [
    "data.train.num_train=16", "data.train.num_val=8", "data.val.num_train=16", "data.val.num_val=8",
    "train.max_iters=2", "train.batch_size=2",
]


@dataclass(frozen=True)
class Plan:
    """How the test treats one README command."""

    extra: list[str] = field(default_factory=list)  # appended to the command
    skip: str | None = None  # why it is not run (by design)
    needs_cuda: bool = False  # run only where CUDA is available
    make_target: str | None = None  # run this Makefile target's detkit recipe instead of make


#: README command (canonical form, see _commands.key) -> plan. Keep in README order.
PLANS: dict[str, Plan] = {
    "make demo": Plan(extra=TINY_DEMO, make_target="demo"),
    "make test": Plan(skip="runs ruff, mypy and this very test suite"),
    "detkit plugins": Plan(),
    "detkit train configs/bccd_faster_rcnn.yaml train.max_minutes=20 output.dir=runs/bccd": Plan(
        extra=["train.max_iters=2", "train.batch_size=2", "eval.max_images=2"]
    ),
    "detkit eval --weights runs/bccd/best.pt --data ../shared/data/BCCD --split test --out runs/bccd-eval": Plan(
        extra=["--max-images", "2"]
    ),
    "detkit analyze --results runs/bccd-eval/results.json --data ../shared/data/BCCD --split test "
    "--out runs/bccd-why": Plan(extra=["--gallery", "2"]),
    "detkit detect --weights runs/demo/best.pt --out runs/detect runs/demo/data/val/ "
    "runs/demo/data/train/00000*.png runs/demo/data/train/000012.png": Plan(),
    "detkit proposals --data ../shared/data/BCCD --split test --proposer selective_search:preset=fast "
    "--proposer sliding_window --proposer rpn:weights=runs/bccd/best.pt": Plan(extra=["--max-images", "2"]),
    # the .pth is torchvision's download; a randomly initialised model of the same architecture stands in
    "detkit import-torchvision fasterrcnn_resnet50_fpn fasterrcnn_resnet50_fpn_coco-258fb6c6.pth coco.pt": Plan(),
    "detkit eval --weights coco.pt --data ../shared/data/tiny_coco/annotations/instances_val2017.json "
    "--out runs/coco-eval": Plan(extra=["--max-images", "1"]),
    "detkit demo --out runs/demo --device cuda": Plan(extra=TINY_DEMO, needs_cuda=True),
    "detkit import-torchvision fasterrcnn_resnet50_fpn "
    "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth coco.pt": Plan(
        skip="downloads 160 MB from download.pytorch.org (the local-file form above is run)"
    ),
    "detkit detect --weights coco.pt --out runs/detect-coco ../shared/data/tiny_coco/val2017/000000006818.jpg": Plan(),
    "detkit data convert --from voc --to yolo ../shared/data/BCCD runs/bccd-yolo --split test": Plan(),
    "detkit eval --weights runs/bccd/best.pt --data runs/bccd-yolo/data.yaml --split test "
    "--out runs/bccd-yolo-eval": Plan(extra=["--max-images", "2"]),
    "detkit data check ../shared/data/tiny_coco/annotations/instances_val2017.json --out runs/data-check": Plan(),
    # a randomly initialised torchvision Mask R-CNN stands in for the COCO file, as above
    "detkit import-torchvision maskrcnn_resnet50_fpn maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth coco_mask.pt": Plan(),
    "detkit train configs/finetune_mask_rcnn.yaml train.init_weights=coco_mask.pt output.dir=runs/balloon-finetune "
    "data.train={name: via, root: ../shared/data/balloon/train, masks: true} "
    "data.val={name: via, root: ../shared/data/balloon/val, masks: true}": Plan(
        extra=["train.max_iters=1", "train.batch_size=1", "eval.max_images=1",
               "model.preprocess.min_size=[320]", "model.preprocess.max_size=320"]
    ),
    "detkit train configs/bccd_faster_rcnn.yaml train.checkpoint_period=100 output.dir=runs/bccd-long": Plan(
        extra=["train.max_iters=2", "train.batch_size=2", "eval.max_images=2", "train.checkpoint_period=1"]
    ),
    "detkit train --resume runs/bccd-long": Plan(extra=["train.max_iters=3"]),
    "detkit train configs/bccd_faster_rcnn.yaml --nproc 2 train.batch_size=2 output.dir=runs/bccd-ddp": Plan(
        extra=["train.max_iters=2", "train.batch_size=1", "eval.max_images=2", "model.preprocess.min_size=[320]",
               "model.preprocess.max_size=320"]
    ),
    "torchrun --nproc_per_node=2 -m detkit train configs/shapes_faster_rcnn.yaml --device cpu "
    "output.dir=runs/shapes-ddp": Plan(extra=TINY_DEMO),
    "torchrun --nproc_per_node=8 -m detkit train configs/bccd_faster_rcnn.yaml train.precision=bf16 "
    "output.dir=runs/bccd-8gpu": Plan(skip="needs 8 GPUs (the same path runs above with --nproc 2 on the CPU)"),
    "torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=node0.example.org:29500 "
    "--rdzv-id=bccd -m detkit train configs/bccd_faster_rcnn.yaml output.dir=/shared/runs/bccd": Plan(
        skip="needs two machines"
    ),
    "detkit classify train configs/classify_lenet_digits.yaml": Plan(extra=["train.epochs=1"]),
    "detkit classify eval --weights runs/lenet_digits/best.pt --data digits": Plan(),
    "detkit classify compare-linear": Plan(),
    "detkit explain --weights runs/lenet_digits/best.pt --out runs/explain": Plan(
        extra=["--points", "60", "--class-steps", "5", "--dream-steps", "2"]
    ),
    "detkit explain --weights runs/demo/best.pt --image runs/demo/data/val/000003.png --out runs/explain-det": Plan(
        extra=["--dream-steps", "2"]
    ),
}

#: torchvision's COCO files README names -> the torchvision model a seeded random stand-in is built from
TORCHVISION_FILES = {
    "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth": "fasterrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth": "maskrcnn_resnet50_fpn",
}


def make_recipe(target: str, makefile: Path = REPO / "Makefile") -> list[str]:
    """The ``detkit`` command a Makefile target runs, its variables expanded to their defaults."""
    text = makefile.read_text()
    variables = dict(re.findall(r"^(\w+)\s*[?:]?=\s*(.*?)\s*$", text, flags=re.M))
    recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert recipe, f"Makefile has no target {target!r}"
    for line in recipe.group(1).splitlines():
        line = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), line.strip())
        words = line.split()
        if words and Path(words[0]).name == "detkit":
            return ["detkit", *words[1:]]
    raise AssertionError(f"Makefile target {target!r} runs no detkit command")


def test_every_readme_command_is_run_or_skipped_by_design() -> None:
    commands = [key(c) for c in readme_commands()]
    unplanned = [c for c in commands if c not in PLANS]
    assert not unplanned, (
        "README commands that tests/test_readme.py neither runs nor lists as skipped (add them to PLANS):\n"
        + "\n".join(unplanned)
    )
    stale = [c for c in PLANS if c not in commands]
    assert not stale, "PLANS lists commands README no longer has:\n" + "\n".join(stale)
    assert list(PLANS) == list(dict.fromkeys(commands)), "keep PLANS in README order"
    assert make_recipe("demo")[:2] == ["detkit", "demo"]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like a checkout (``configs``, ``Makefile``, ``../shared/data``), empty otherwise."""
    data = shared_data_root()
    missing = [name for name in ("BCCD", "tiny_coco", "balloon") if not (data / name).exists()]
    if missing:
        why = f"shared data {', '.join(missing)} not found in {data} (set DETKIT_DATA)"
        if on_ci():
            pytest.fail(f"{why}; CI must have it")
        pytest.skip(why)
    root = tmp_path_factory.mktemp("newcomer")
    repo = root / "detkit"
    repo.mkdir()
    (repo / "configs").symlink_to((REPO / "configs").resolve(), target_is_directory=True)
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(data.resolve(), target_is_directory=True)
    return repo


def _torchvision_download_stand_in(path: Path) -> None:
    from torchvision.models import detection

    torch.manual_seed(0)
    model = getattr(detection, TORCHVISION_FILES[path.name])(weights=None, weights_backbone=None)
    torch.save(model.state_dict(), path)


def test_readme_commands_run_in_order(
    checkout: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("DETKIT_CACHE", str(checkout / "cache"))
    timings: list[str] = []
    for command in readme_commands():
        plan = PLANS[key(command)]
        if plan.skip or (plan.needs_cuda and not torch.cuda.is_available()):
            timings.append(f"skipped  {key(command)}: {plan.skip or 'needs a CUDA device'}")
            continue
        env, words = tokens(command)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        if plan.make_target:
            words = make_recipe(plan.make_target)
        if "import-torchvision" in words:
            for name in set(words) & set(TORCHVISION_FILES):
                _torchvision_download_stand_in(checkout / name)
        argv = [*words[1:], *plan.extra, "-q"]
        start = time.monotonic()
        if words[0] == "torchrun":  # PyTorch's launcher starts `python -m detkit` processes
            launcher = [sys.executable, "-m", "torch.distributed.run"]
            done = subprocess.run([*launcher, *argv], capture_output=True, text=True, timeout=600)
            code, out, err = done.returncode, done.stdout, done.stderr
        else:
            code = main(argv)
            out, err = capsys.readouterr()
        timings.append(f"{time.monotonic() - start:6.1f} s  {key(command)}")
        assert code == 0, (
            f"README command failed (exit {code}): {command}\nran: detkit {' '.join(argv)}\n"
            f"--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
        )
    with capsys.disabled():
        print("\nREADME commands:\n" + "\n".join(timings))
