"""Time a detector, alone or against torchvision's twin on the same weights (``detkit benchmark``).

A benchmark takes a model from one of three places (:func:`benchmark_subjects`):

- a torchvision model name with an importer (``fasterrcnn_resnet50_fpn``,
  ``maskrcnn_resnet50_fpn``, ``ssd300_vgg16``, any plugin's): torchvision's model with
  seeded random weights and detkit's import of it, so ``--against torchvision`` times
  the two on identical weights;
- a config or recipe (``detkit:bccd_faster_rcnn.yaml``): detkit's model with seeded
  random weights;
- a detkit checkpoint (``.pt``): the trained model.

Inference times ``--batch-size`` images per call with post-processing at full load
(score threshold 0, so every image keeps its maximum number of detections, as a trained
model on a busy image would). Training (``--train``) times one optimizer step (forward,
backward, SGD update) on a fixed batch of ``512x640`` images with fixed boxes; the two
models see the same random draws, so their losses at step 0 must agree.

The models run alternately, ``--warmup`` then ``--runs`` times each, so that drifts in
machine load hit both alike; figures are medians. Warm-up goes on (a few rounds at
most) while a step still faults fresh memory in, so that steady-state steps are timed.
Before timing, a comparison checks that the timed models agree: the same detections
(count, labels, boxes within :data:`BOX_TOLERANCE` px, scores within
:data:`SCORE_TOLERANCE`) at inference, the same losses in training. Agreement is
checked in fp32: under fp16/bf16 the random weights' near-tied scores reorder
differently in any two implementations.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.backbones.fold import fold_frozen_batchnorm
from detkit.config import apply_overrides, config_file, load_config
from detkit.data.images import find_images, image_to_tensor, read_image
from detkit.detectors import Detector, build_detector
from detkit.device import autocast
from detkit.engine.build import plugins_for
from detkit.errors import ConfigError, did_you_mean
from detkit.importers import TorchvisionImporter, spread_random_weights
from detkit.memory import allocator
from detkit.plugins import Plugins
from detkit.progress import progress
from detkit.structures import Detections, Targets

resource: ModuleType | None
try:
    import resource
except ImportError:  # Windows: no page-fault counts, warm-up is --warmup rounds
    resource = None

#: Boxes of two models agree when no coordinate differs by more than this (pixels).
BOX_TOLERANCE = 0.01
#: Scores of two models agree when none differs by more than this.
SCORE_TOLERANCE = 1e-4
#: Losses at step 0 agree when their sums differ by less than this (relative).
LOSS_TOLERANCE = 1e-4
#: Image size ``(height, width)`` of the training batch.
TRAIN_SIZE = (512, 640)
#: Classes of a config's model when the config names none.
DEFAULT_NUM_CLASSES = 80
#: Warm-up goes on past ``--warmup`` (by up to :data:`MAX_SETTLING_ROUNDS` rounds) while a
#: model's step still faults this many pages of fresh memory in: the process heap grows
#: over a model's first few steps (three or four for a channels-last R50-FPN training
#: step, each fault costing ~15 us on a VM), a one-off cost no longer paid in a long run.
SETTLED_FAULTS = 1000
MAX_SETTLING_ROUNDS = 4


@dataclass
class Subject:
    """One model to time: ``step()`` runs one timed call (a batch, or a training step)."""

    name: str
    step: Callable[[], Any] = field(repr=False)
    times: list[float] = field(default_factory=list)
    first_call_s: float | None = None

    def figures(self, batch_size: int) -> dict[str, Any]:
        ms = statistics.median(self.times) * 1000
        return {
            "ms_per_batch": ms,
            "ms_per_image": ms / batch_size,
            "images_per_s": 1000 * batch_size / ms,
            "runs_ms": [t * 1000 for t in self.times],
            "first_call_s": self.first_call_s,
        }


@dataclass
class Setup:
    """What to time and how: the options of ``detkit benchmark``."""

    model: str
    overrides: Sequence[str] = ()
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int | None = None
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    winograd: bool = False
    train: bool = False
    against: str | None = None
    images: Sequence[str] = ()
    runs: int = 7
    warmup: int = 2
    seed: int = 0
    num_classes: int | None = None
    cli_plugins: Sequence[str] = ()

    @property
    def batch(self) -> int:
        return self.batch_size or (2 if self.train else 1)


@dataclass
class Loaded:
    """The models of a benchmark, before the timing wraps them."""

    detkit: nn.Module
    description: str
    num_classes: int
    reference: nn.Module | None = None
    importer: TorchvisionImporter | None = None


def torchvision_model(name: str, *, seed: int, spread: bool = False) -> nn.Module:
    """torchvision's detection model ``name`` with random weights drawn after ``torch.manual_seed(seed)``.

    With ``spread`` its convolutions and batch norms are redrawn
    (:func:`~detkit.importers.spread_random_weights`): for the models whose own initialisation
    lets every score tie, so that the detections check compares something.
    """
    builder = getattr(torchvision.models.detection, name, None)
    if not callable(builder):
        raise ConfigError(f"torchvision has no detection model {name!r}")
    torch.manual_seed(seed)
    model: nn.Module = builder(weights=None, weights_backbone=None)
    if spread:  # the trunk: redrawing the heads too would bring near-ties among the proposals back
        spread_random_weights(getattr(model, "backbone", model), seed=seed)
    return model


def full_load(model: nn.Module) -> None:
    """Set a torchvision detection model's score threshold to 0 (every candidate competes)."""
    heads = getattr(model, "roi_heads", None)
    (heads if heads is not None else model).score_thresh = 0.0


def load_subjects(setup: Setup) -> Loaded:
    """Build the detkit model of ``setup.model`` (and torchvision's twin with ``--against torchvision``)."""
    plugins = plugins_for({}, setup.cli_plugins)
    importers = plugins.registry.names("importer")
    overrides = ["model.postprocess.score_thresh=0.0", *setup.overrides]
    if setup.against not in (None, "torchvision"):
        raise ConfigError(f"--against {setup.against!r}: the reference can only be torchvision")
    if setup.model in importers:
        importer: TorchvisionImporter = plugins.registry.get("importer", setup.model).factory()
        reference = torchvision_model(setup.model, seed=setup.seed, spread=importer.vanishing_init)
        full_load(reference)
        config, class_names, state = importer.convert(reference.state_dict())
        config = apply_overrides(config, overrides)
        model = build_detector(config, plugins.registry, num_classes=len(class_names))
        model.load_state_dict(state)
        return Loaded(
            model, f"{setup.model} (random weights, seed {setup.seed})", len(class_names),
            reference if setup.against else None, importer,
        )
    if setup.against:
        raise ConfigError(
            f"--against torchvision needs a torchvision model name, one of {', '.join(importers)}; "
            f"{setup.model!r} has no torchvision twin"
        )
    if setup.model.endswith(".pt"):
        from detkit.engine.build import load_model

        loaded, _ = load_model(setup.model, overrides=overrides, cli_plugins=setup.cli_plugins, fold_norms=False)
        count = len(loaded.class_names)
        return Loaded(loaded.model, f"{setup.model} ({count} classes)", count)
    if not config_file(setup.model).is_file():
        raise ConfigError(
            f"{setup.model!r} is neither a config file, a checkpoint (.pt) nor a torchvision model detkit imports"
            f"{did_you_mean(setup.model, importers)}; torchvision models: {', '.join(importers)}; "
            "a shipped recipe is named detkit:NAME.yaml"
        )
    config = load_config(setup.model, overrides)
    torch.manual_seed(setup.seed)
    num_classes = setup.num_classes or len(config["model"].get("class_names") or []) or DEFAULT_NUM_CLASSES
    model = build_detector(config, _configured(config, setup.cli_plugins).registry, num_classes=num_classes)
    return Loaded(model, f"{setup.model} (random weights, seed {setup.seed}, {num_classes} classes)", num_classes)


def _configured(config: Mapping[str, Any], cli_plugins: Sequence[str]) -> Plugins:
    plugins = plugins_for(config, cli_plugins)
    plugins.hook.detkit_configure(config=config)
    return plugins


# ----------------------------------------------------------------------------- inputs


def inference_images(paths: Sequence[str], count: int, *, data_root: Path) -> tuple[list[Tensor], list[str]]:
    """``count`` images: from ``paths`` (files or folders; cycled), else tiny_coco's val photos, else random."""
    if paths:
        files = find_images(paths)
    else:
        folder = data_root / "tiny_coco" / "val2017"
        files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not files:
        g = torch.Generator().manual_seed(0)
        return [torch.rand(3, 480, 640, generator=g) for _ in range(count)], ["random 480x640 image"] * count
    chosen = [files[i % len(files)] for i in range(count)]
    return [image_to_tensor(read_image(f)) for f in chosen], [str(f) for f in chosen]


def training_batch(count: int, *, seed: int, num_classes: int) -> tuple[list[Tensor], list[Targets]]:
    """``count`` random ``512x640`` images, each with three fixed boxes of labels 0, 2 and 17.

    The labels wrap modulo ``num_classes`` for models with fewer classes.
    """
    g = torch.Generator().manual_seed(seed)
    height, width = TRAIN_SIZE
    images = [torch.rand(3, height, width, generator=g) for _ in range(count)]
    boxes = torch.tensor([[10.0, 20.0, 200.0, 300.0], [300.0, 100.0, 600.0, 500.0], [50.0, 60.0, 250.0, 200.0]])
    labels = torch.tensor([0, 2, 17]) % num_classes
    targets = [Targets(boxes=boxes.clone(), labels=labels.clone()) for _ in range(count)]
    return images, targets


def match_training(reference: nn.Module, ours: nn.Module, importer: TorchvisionImporter) -> None:
    """Make torchvision's model train what detkit's trains, at ``512x640`` without random resizing.

    torchvision builds random-weight models with trainable BatchNorm and every layer
    trainable; detkit's recipes freeze the norms and the first stages. The reference
    gets frozen norms where detkit has no trainable ones, and the ``requires_grad`` of
    each detkit parameter it maps onto.
    """
    transform = getattr(reference, "transform", None)
    if transform is not None:
        if not getattr(transform, "fixed_size", None):
            transform.min_size, transform.max_size = (TRAIN_SIZE[0],), TRAIN_SIZE[1]
        transform.torch_choice = lambda sizes: sizes[0]  # no random draw: both models sample alike
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ours.modules()):
        _freeze_batchnorm(reference)
    ours_params = dict(ours.named_parameters())
    for name, param in reference.named_parameters():
        twin = ours_params.get(importer.rename(name))
        if twin is not None:
            param.requires_grad_(twin.requires_grad)


@torch.no_grad()
def _freeze_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


# ----------------------------------------------------------------------------- comparisons


def compare_detections(reference: Sequence[Mapping[str, Tensor]], ours: Sequence[Detections]) -> dict[str, Any]:
    """Whether detkit's detections equal torchvision's image by image (labels: torchvision's minus 1).

    Each of torchvision's detections must find one of detkit's, not yet taken, with its label,
    a box within :data:`BOX_TOLERANCE` and a score within :data:`SCORE_TOLERANCE`: two
    detections whose scores differ by less than rounding may come in either order.
    """
    same, box_diff, score_diff, counts, unmatched = True, 0.0, 0.0, [], 0
    for a, b in zip(reference, ours, strict=True):
        counts.append([len(a["boxes"]), len(b)])
        if len(a["boxes"]) != len(b):
            same = False
            continue
        labels_a, boxes_a, scores_a = a["labels"].cpu() - 1, a["boxes"].cpu().float(), a["scores"].cpu().float()
        labels_b, boxes_b, scores_b = b.labels.cpu(), b.boxes.cpu().float(), b.scores.cpu().float()
        taken = torch.zeros(len(b), dtype=torch.bool)
        for i in range(len(b)):
            box_gap = (boxes_b - boxes_a[i]).abs().amax(dim=1)
            score_gap = (scores_b - scores_a[i]).abs()
            fits = (labels_b == labels_a[i]) & ~taken & (box_gap <= BOX_TOLERANCE) & (score_gap <= SCORE_TOLERANCE)
            if not fits.any():
                unmatched += 1
                continue
            j = int(torch.nonzero(fits)[0])  # the first in detkit's order: itself when the orders agree
            taken[j] = True
            box_diff = max(box_diff, float(box_gap[j]))
            score_diff = max(score_diff, float(score_gap[j]))
    same = same and unmatched == 0
    return {
        "identical": same, "counts": counts, "unmatched": unmatched,
        "max_box_diff": box_diff, "max_score_diff": score_diff,
    }


def compare_losses(reference: Mapping[str, Tensor], ours: Mapping[str, Tensor]) -> dict[str, Any]:
    """Whether the step-0 losses agree: their sums within :data:`LOSS_TOLERANCE`, and each sorted value."""
    a = sorted(float(v) for v in reference.values())
    b = sorted(float(v) for v in ours.values())
    total_a, total_b = sum(a), sum(b)
    rel = abs(total_a - total_b) / max(abs(total_a), 1e-12)
    same = len(a) == len(b) and rel <= LOSS_TOLERANCE and all(
        abs(x - y) <= LOSS_TOLERANCE * max(abs(x), 1.0) for x, y in zip(a, b, strict=True)
    )
    return {
        "losses_equal": same,
        "loss_relative_diff": rel,
        "torchvision_losses": {k: float(v) for k, v in reference.items()},
        "detkit_losses": {k: float(v) for k, v in ours.items()},
    }


# ----------------------------------------------------------------------------- the run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model: nn.Module, call: Callable[[], Mapping[str, Tensor]], seed: int) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        torch.manual_seed(seed)  # the same sampler draws for both models
        losses = call()
        optimizer.zero_grad(set_to_none=True)
        torch.stack([v for v in losses.values()]).sum().backward()
        optimizer.step()

    return step


def run_benchmark(
    setup: Setup, *, data_root: Path, log: Callable[[str], None] = print, show_progress: bool = True
) -> dict[str, Any]:
    """Build, check and time the models of ``setup``; the figures as a JSON-ready dict."""
    loaded = load_subjects(setup)
    device = setup.device
    loaded.detkit.to(device)
    if loaded.reference is not None:
        loaded.reference.to(device)
    report: dict[str, Any] = {
        "model": setup.model,
        "description": loaded.description,
        "mode": "train" if setup.train else "inference",
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "precision": setup.precision,
        "batch_size": setup.batch,
        "channels_last": setup.channels_last,
        "winograd": setup.winograd,
        "compile": setup.compile,
        "allocator": allocator(),
        "runs": setup.runs,
        "warmup": setup.warmup,
        "versions": _versions(),
    }
    if setup.train:
        subjects = _training_subjects(setup, loaded, report)
    else:
        subjects = _inference_subjects(setup, loaded, report, data_root=data_root)
    log(_header(report))
    report["warmup_rounds"] = _time(subjects, setup, show_progress=show_progress)
    if report["warmup_rounds"] > setup.warmup:
        log(
            f"warm-up: {report['warmup_rounds']} rounds ({setup.warmup} asked for; the rest until no step "
            f"faulted {SETTLED_FAULTS} or more pages of fresh memory in)"
        )
    report["results"] = {s.name: s.figures(setup.batch) for s in subjects}
    if len(subjects) == 2:
        report["speedup"] = subjects[0].figures(setup.batch)["ms_per_batch"] / subjects[1].figures(setup.batch)[
            "ms_per_batch"
        ]
    else:
        report["speedup"] = None
    return report


def _inference_subjects(setup: Setup, loaded: Loaded, report: dict[str, Any], *, data_root: Path) -> list[Subject]:
    device = setup.device
    images, names = inference_images(setup.images, setup.batch, data_root=data_root)
    images = [im.to(device) for im in images]
    report["images"] = names
    ours = loaded.detkit.eval()
    fold_frozen_batchnorm(ours)  # as `detkit detect` and `detkit eval` do
    if isinstance(ours, Detector):
        _convolution_options(ours, setup)
    first_call = None
    if setup.compile:
        if not isinstance(ours, Detector):
            raise ConfigError(f"--compile: {setup.model!r} is not a detkit Detector")
        ours.compile_trunk()
        start = time.perf_counter()
        with torch.no_grad():
            ours(images)
        first_call = time.perf_counter() - start
    subjects = []
    if loaded.reference is not None:
        reference = loaded.reference.eval()
        with torch.no_grad():
            report.update(compare_detections(reference(images), list(ours(images)[0])))
        subjects.append(Subject(f"torchvision {setup.model}", _inference_call(reference, images, setup)))
    subjects.append(Subject(f"detkit {setup.model}", _inference_call(ours, images, setup)))
    subjects[-1].first_call_s = first_call
    return subjects


def _convolution_options(ours: Detector, setup: Setup) -> None:
    """``--channels-last`` and ``--winograd``, in inference and training alike."""
    if setup.channels_last:
        ours.use_channels_last()
    if setup.winograd:
        ours.use_winograd()


def _inference_call(model: nn.Module, images: list[Tensor], setup: Setup) -> Callable[[], None]:
    def call() -> None:
        with torch.no_grad(), autocast(setup.device, setup.precision):
            model(images)

    return call


def _training_subjects(setup: Setup, loaded: Loaded, report: dict[str, Any]) -> list[Subject]:
    if setup.compile:
        raise ConfigError("--compile times inference only; drop it with --train")
    ours = loaded.detkit.train()
    if not isinstance(ours, Detector):
        raise ConfigError(f"--train: {setup.model!r} is not a detkit Detector")
    if getattr(ours.preprocess, "fixed_size", None) is None:  # no resizing: the batch is 512x640
        preprocess: Any = ours.preprocess
        preprocess.min_sizes, preprocess.max_size = [TRAIN_SIZE[0]], TRAIN_SIZE[1]
    _convolution_options(ours, setup)
    images, targets = training_batch(setup.batch, seed=setup.seed, num_classes=loaded.num_classes)
    device = setup.device
    images = [im.to(device) for im in images]
    targets = [Targets(boxes=t.boxes.to(device), labels=t.labels.to(device)) for t in targets]
    report["images"] = [f"random {TRAIN_SIZE[0]}x{TRAIN_SIZE[1]} image"] * setup.batch

    def ours_losses() -> Mapping[str, Tensor]:
        with autocast(device, setup.precision):
            return dict(ours(images, targets)[1])

    subjects = []
    if loaded.reference is not None:
        reference = loaded.reference.train()
        assert loaded.importer is not None
        match_training(reference, ours, loaded.importer)
        tv_targets = [{"boxes": t.boxes, "labels": t.labels + 1} for t in targets]

        def reference_losses() -> Mapping[str, Tensor]:
            with autocast(device, setup.precision):
                return dict(reference(images, tv_targets))

        torch.manual_seed(setup.seed)
        tv_step0 = {k: v.detach() for k, v in reference_losses().items()}
        torch.manual_seed(setup.seed)
        ours_step0 = {k: v.detach() for k, v in ours_losses().items()}
        report.update(compare_losses(tv_step0, ours_step0))
        reference_step = _train_step(reference, reference_losses, setup.seed)
        subjects.append(Subject(f"torchvision {setup.model}", reference_step))
    subjects.append(Subject(f"detkit {setup.model}", _train_step(ours, ours_losses, setup.seed)))
    return subjects


def _time(subjects: Sequence[Subject], setup: Setup, *, show_progress: bool) -> int:
    """Warm up, then time ``setup.runs`` rounds; the number of warm-up rounds run."""
    limit = setup.warmup + MAX_SETTLING_ROUNDS if setup.warmup else 0
    warmup, unsettled = 0, True
    with progress(total=setup.warmup, desc="warm-up", unit="round", enabled=show_progress, leave=False) as bar:
        while warmup < setup.warmup or (unsettled and warmup < limit):
            faults = [_faults_in(partial(_timed, subject, setup.device)) for subject in subjects]
            unsettled = max(faults) >= SETTLED_FAULTS
            warmup += 1
            bar.update(1)
    for _ in progress(range(setup.runs), desc="benchmark", unit="round", enabled=show_progress, leave=False):
        for subject in subjects:  # alternately, so drifts in load hit every model alike
            subject.times.append(_timed(subject, setup.device))
    return warmup


def _timed(subject: Subject, device: torch.device) -> float:
    """Seconds of one ``subject.step()``."""
    _sync(device)
    start = time.perf_counter()
    subject.step()
    _sync(device)
    return time.perf_counter() - start


def _faults_in(call: Callable[[], object]) -> int:
    """Page faults of this process during ``call()`` (0 where the platform does not count them)."""
    if resource is None:
        call()
        return 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    call()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from detkit import __version__

    return {"detkit": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def _header(report: Mapping[str, Any]) -> str:
    images = report.get("images") or []
    where = f"{report['device']}" + (f", {report['threads']} threads" if report["device"] == "cpu" else "")
    options = [report["precision"], f"batch {report['batch_size']}"]
    if report["channels_last"]:
        options.append("channels-last")
    if report.get("winograd"):
        options.append("winograd")
    if report["compile"]:
        options.append("compiled")
    lines = [f"{report['description']}: {report['mode']}, {where}, {', '.join(options)}"]
    if images:
        lines.append(f"images: {images[0]}" + (f" and {len(images) - 1} more" if len(images) > 1 else ""))
    if "identical" in report:
        counts = ", ".join(f"{a} vs {b}" for a, b in report["counts"])
        verdict = "identical" if report["identical"] else "DIFFERENT"
        lines.append(
            f"detections (fp32, torchvision vs detkit): {verdict}; counts {counts}; "
            f"boxes within {report['max_box_diff']:.2g} px, scores within {report['max_score_diff']:.2g}"
        )
    if "losses_equal" in report:
        verdict = "equal" if report["losses_equal"] else "DIFFERENT"
        lines.append(f"losses at step 0: {verdict} (sums differ by {report['loss_relative_diff']:.1e}, relative)")
    return "\n".join(lines)


def format_results(report: Mapping[str, Any]) -> str:
    """The timing table of a :func:`run_benchmark` report."""
    unit = "step" if report["mode"] == "train" else "batch"
    rows = [f"{'model':<44}{'ms/' + unit:>12}{'ms/img':>10}{'img/s':>9}"]
    for name, r in report["results"].items():
        rows.append(f"{name:<44}{r['ms_per_batch']:>12.1f}{r['ms_per_image']:>10.1f}{r['images_per_s']:>9.2f}")
        if r.get("first_call_s") is not None:
            rows.append(f"  (first call, compiling: {r['first_call_s']:.1f} s)")
    if report.get("speedup") is not None:
        rows.append(f"speed-up (torchvision / detkit): {report['speedup']:.2f}x")
    return "\n".join(rows)


def agreement_failure(report: Mapping[str, Any]) -> str | None:
    """Why the compared models disagree, or ``None`` when they agree (or nothing was compared)."""
    if report.get("identical") is False:
        return (
            f"detkit's detections differ from torchvision's (counts {report['counts']}; "
            f"{report['unmatched']} of torchvision's detections have no twin with their label, a box within "
            f"{BOX_TOLERANCE} px and a score within {SCORE_TOLERANCE})"
        )
    if report.get("losses_equal") is False:
        return (
            f"detkit's step-0 losses differ from torchvision's "
            f"({report['detkit_losses']} vs {report['torchvision_losses']})"
        )
    return None


def data_root() -> Path:
    """Where the shared datasets are: ``$DETKIT_DATA``, else ``../shared/data`` beside the checkout."""
    configured = os.environ.get("DETKIT_DATA")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


__all__ = [
    "BOX_TOLERANCE",
    "LOSS_TOLERANCE",
    "SCORE_TOLERANCE",
    "Setup",
    "agreement_failure",
    "compare_detections",
    "compare_losses",
    "format_results",
    "run_benchmark",
]
