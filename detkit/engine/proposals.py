"""Proposers to score on images: ``detkit proposals`` specs, built or read from checkpoints.

A spec is ``NAME[:KEY=VALUE,...]``: a registered proposer that reads pixels, built
with those settings (values parsed as YAML; a proposer's on-disk cache is turned
off unless the spec sets ``cache``, so that its time is its own), or
``NAME:weights=CKPT`` for the proposer of a trained checkpoint (its other keys
override the checkpoint's settings), or ``dense:weights=CKPT`` for the boxes of a
single-stage detector's dense head before its NMS (SSD, YOLO, RetinaNet, ...: other keys
override ``model.dense_head``), so one- and two-stage recall compare on the same images.
:func:`score_proposers` runs them side by side on a dataset; the metrics live in :mod:`detkit.evaluation.proposals`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detkit.errors import DataError, DetkitError
from detkit.evaluation.proposals import ProposalRecall
from detkit.progress import progress as show_progress
from detkit.progress import write


def _split_top_level(text: str, *, spec: str) -> list[str]:
    """Split ``a=1,b=[1,2],c={x: 1}`` at the commas outside brackets and braces."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth < 0:
                break
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        from detkit.errors import ConfigError

        raise ConfigError(f"--proposer {spec!r}: unbalanced brackets in {text!r}")
    return [*parts, text[start:]]


def parse_proposer_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:KEY=VALUE,...]`` -> ``(NAME, {KEY: VALUE})``, values parsed as YAML scalars or lists.

    Raises:
        ConfigError: no name, an item that is not ``KEY=VALUE``, a key given twice or a
            value YAML cannot parse; the message names the spec.
    """
    import yaml

    from detkit.errors import ConfigError

    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"--proposer {spec!r}: give a proposer name, e.g. selective_search:preset=fast")
    settings: dict[str, Any] = {}
    for item in _split_top_level(rest, spec=spec) if rest.strip() else []:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--proposer {spec!r}: {item.strip()!r} is not KEY=VALUE")
        if key in settings:
            raise ConfigError(f"--proposer {spec!r}: {key!r} is given twice")
        try:
            settings[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise ConfigError(f"--proposer {spec!r}: cannot parse the value of {key!r} ({raw!r}): {reason}") from None
    return name, settings


#: The ``--proposer`` name of a single-stage checkpoint's dense head (``dense:weights=CKPT``).
DENSE = "dense"


def dense_candidates(boxes: Any, scores: Any) -> tuple[Any, Any]:
    """A dense head's raw ``(box, class)`` pairs as class-agnostic proposals.

    A head scores one box for several classes (SSD keeps every class's best boxes), so
    the same box can come several times: each distinct box is kept once, with its best
    score. Returns ``(boxes (R, 4), scores (R,))`` in no particular order.
    """
    import torch

    if len(boxes) == 0:
        return boxes, scores
    unique, inverse = torch.unique(boxes, dim=0, return_inverse=True)
    best = torch.full((len(unique),), -torch.inf, dtype=scores.dtype, device=scores.device)
    best.scatter_reduce_(0, inverse, scores, reduce="amax")
    return unique, best


class ProposerRun:
    """A proposer ready to score images: ``propose(image)`` -> boxes in original pixels, best first.

    Either a component built from the registry that reads raw pixels (images go through
    :class:`~detkit.stages.preprocess.ResizeNormalize`), or the proposer of a trained
    checkpoint (its own preprocess and features).
    """

    def __init__(
        self,
        spec: str,
        registry: Any,
        *,
        size: tuple[int, int | None] | None = None,
        device: str | None = None,
        plugins: Sequence[str] = (),
    ) -> None:
        import torch

        from detkit.device import command_device
        from detkit.errors import ConfigError

        name, settings = parse_proposer_spec(spec)
        self.spec, self.name = spec, name
        self.settings: dict[str, Any] = dict(settings)
        self.model: Any = None  # a detector whose proposer is scored, or None
        self.model_config: dict[str, Any] = {}
        self.proposer: Any = None  # a raw-pixel proposer, or None
        self.size = size
        if name == DENSE:
            self._load_dense(settings, device=device, plugins=plugins)
            return
        factory = registry.get("proposer", name).factory  # unknown names fail here, listing the known ones
        if "weights" in settings:
            weights = settings.pop("weights")
            if not weights:
                raise ConfigError(f"--proposer {spec!r}: weights= needs a checkpoint path, e.g. {name}:weights=best.pt")
            if not Path(str(weights)).is_file():
                raise ConfigError(f"--proposer {spec!r}: weights file {str(weights)!r} does not exist")
            self.model = self._load_checkpoint(str(weights), settings, plugins)
            self.device = command_device(
                device, self.model_config["train"]["device"], source=f"train.device of checkpoint {str(weights)!r}"
            )
            self.model.to(self.device)
            self.timed = "backbone + proposer"
            self.preprocess_info: Any = "the checkpoint's preprocess"
            return
        needs_features = ConfigError(
            f"--proposer {spec!r}: proposer {name!r} reads image features; score a trained one "
            f"with {name}:weights=CHECKPOINT.pt"
        )
        if getattr(factory, "needs_features", False) is True:  # a Proposer class: known before building it
            raise needs_features
        if "cache" in registry.get("proposer", name).parameters() and "cache" not in settings:
            settings["cache"] = False  # time the proposer itself, not a read of earlier results
        proposer = registry.build("proposer", {"name": name, **settings}, key=f"--proposer {spec}")
        if getattr(proposer, "needs_features", True):
            raise needs_features
        self.device = command_device(device, "cpu")
        self.proposer = proposer.to(self.device).eval() if isinstance(proposer, torch.nn.Module) else proposer
        self.timed = "proposer"
        self.preprocess_info = (
            {"min_size": size[0], "max_size": size[1]} if size else "each image at its own size"
        )

    def _load_dense(self, settings: dict[str, Any], *, device: str | None, plugins: Sequence[str]) -> None:
        """``dense:weights=CKPT``: the dense head of a single-stage checkpoint, scored before its NMS."""
        from detkit.device import command_device
        from detkit.errors import ConfigError

        weights = settings.pop("weights", None)
        if not weights:
            raise ConfigError(
                f"--proposer {self.spec!r}: dense scores a single-stage checkpoint's head; write dense:weights=best.pt"
            )
        if not Path(str(weights)).is_file():
            raise ConfigError(f"--proposer {self.spec!r}: weights file {str(weights)!r} does not exist")
        self.model = self._load_checkpoint(str(weights), settings, plugins, section="dense_head")
        if not hasattr(self.model, "dense_head"):
            raise ConfigError(
                f"--proposer {self.spec!r}: the model in {str(weights)!r} has no dense head; "
                f"score a two-stage model's proposer with {self.model_config['model']['proposer']['name']}:weights=..."
            )
        self.device = command_device(
            device, self.model_config["train"]["device"], source=f"train.device of checkpoint {str(weights)!r}"
        )
        self.model.to(self.device)
        self.timed = "backbone + dense head"
        self.preprocess_info = "the checkpoint's preprocess"

    def _load_checkpoint(
        self, weights: str, overrides: dict[str, Any], plugins: Sequence[str], *, section: str = "proposer"
    ) -> Any:
        """The detector of ``weights`` (its ``model.<section>`` settings overridden); sets :attr:`model_config`."""
        import json

        from detkit.engine.build import load_model
        from detkit.errors import ConfigError

        dotted = [f"model.{section}.{k}={json.dumps(v)}" for k, v in overrides.items()]
        try:
            loaded, _ = load_model(weights, overrides=dotted, cli_plugins=plugins)
        except DetkitError as exc:
            raise ConfigError(f"--proposer {self.spec!r}: {exc}") from exc
        self.model_config = loaded.config
        if section == "dense_head":
            return loaded.model
        proposer_cfg = loaded.config["model"].get("proposer") or {}
        if not hasattr(loaded.model, "extract_features") or not hasattr(loaded.model, "proposer"):
            raise ConfigError(f"--proposer {self.spec!r}: the model in {weights!r} has no proposer")
        if proposer_cfg.get("name") != self.name:
            raise ConfigError(
                f"--proposer {self.spec!r}: {weights!r} holds a {proposer_cfg.get('name')!r} proposer, "
                f"not {self.name!r}; write {proposer_cfg.get('name')}:weights={weights}"
            )
        self.model_config = loaded.config
        return loaded.model

    def _resize(self, height: int, width: int) -> Any:
        from detkit.stages.preprocess import ResizeNormalize

        if self.size is None:  # shorter side to itself, longer side capped at itself: scale 1
            return ResizeNormalize(min_size=min(height, width), max_size=max(height, width), size_divisible=1)
        min_size, max_size = self.size
        return ResizeNormalize(min_size=min_size, max_size=max_size or 10**9, size_divisible=1)

    def propose(self, image: Any, max_proposals: int) -> tuple[Any, int, float]:
        """Boxes ``(R, 4)`` in the pixels of ``image (3, H, W)``, at most ``max_proposals``, best first;
        the number the proposer gave and the seconds its forward took."""
        import torch

        from detkit.ops import clip_boxes, scale_boxes

        image = image.to(self.device)
        with torch.no_grad():
            if self.model is not None:
                batch, _ = self.model.preprocess([image])
            else:
                batch, _ = self._resize(int(image.shape[-2]), int(image.shape[-1])).to(self.device)([image])
            self._sync()
            start = time.perf_counter()
            if self.name == DENSE:
                raw, _ = self.model.dense_head(batch, self.model.extract_features(batch.tensor))
                found_boxes, found_scores = dense_candidates(clip_boxes(raw[0].boxes, batch.image_sizes[0]),
                                                             raw[0].scores)
            else:
                if self.model is not None:
                    proposals, _ = self.model.proposer(batch, self.model.extract_features(batch.tensor))
                else:
                    proposals, _ = self.proposer(batch, None)
                found_boxes, found_scores = proposals[0].boxes, proposals[0].objectness
            self._sync()
            seconds = time.perf_counter() - start
        found_boxes, found_scores = found_boxes.to("cpu"), found_scores.to("cpu")
        # the contract says best first; a stable sort keeps the proposer's order among ties
        order = torch.sort(found_scores, descending=True, stable=True).indices[:max_proposals]
        boxes = scale_boxes(found_boxes[order].float(), batch.image_sizes[0], batch.original_sizes[0])
        return boxes, len(found_boxes), seconds

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "spec": self.spec, "name": self.name, "settings": self.settings, "device": str(self.device),
            "preprocess": self.preprocess_info, "timed": self.timed,
        }
        if self.name == DENSE:
            info["dense_head_config"] = self.model_config["model"]["dense_head"]
            info["model_preprocess"] = self.model_config["model"].get("preprocess")
        elif self.model is not None:
            info["proposer_config"] = self.model_config["model"]["proposer"]
            info["model_preprocess"] = self.model_config["model"].get("preprocess")
        return info


@dataclass
class ProposerTally:
    """What one proposer gave on the images scored so far: recall, boxes and seconds per image."""

    recall: ProposalRecall
    seconds: list[float] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    given: list[int] = field(default_factory=list)

    def add(self, targets: Any, boxes: Any, num_given: int, seconds: float) -> None:
        """Score one image's ``boxes`` (best first, at most the largest budget) against ``targets``."""
        self.recall.add(targets.boxes, boxes, targets.iscrowd)
        self.seconds.append(seconds)
        self.kept.append(len(boxes))
        self.given.append(num_given)

    def summary(self) -> dict[str, Any]:
        """Means per image (time without the first image, which warms caches and kernels) and the recall."""
        timed = self.seconds[1:] if len(self.seconds) > 1 else self.seconds
        return {
            "proposals_per_image": sum(self.kept) / len(self.kept),
            "proposals_per_image_before_cap": sum(self.given) / len(self.given),
            "seconds_per_image": sum(timed) / len(timed),
            "timed_images": len(timed),
            **self.recall.summary(),
        }


def score_proposers(
    runs: Sequence[ProposerRun],
    dataset: Any,
    indices: Sequence[int],
    *,
    budgets: Sequence[int],
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Every proposer on the same images: one summary per run, and the images skipped.

    Image by image, every proposer on it: an image that cannot be read, or that
    any proposer fails on, is skipped for all of them (with a warning and its
    reason), so the proposers stay scored on the same images.

    Args:
        runs: the proposers.
        dataset: a detection dataset (``dataset[i].image``, ``.targets``).
        indices: the images to score.
        budgets: the numbers of proposals ``k`` to score, increasing; the last
            is the most boxes kept per image.

    Returns:
        ``(summaries, skipped)``: per run its :meth:`ProposerRun.describe` and
        :meth:`ProposerTally.summary`; ``skipped`` maps an image index to why.
    """
    tallies = [ProposerTally(ProposalRecall(list(budgets))) for _ in runs]
    skipped: dict[int, str] = {}
    for index in show_progress(indices, desc="proposals", unit="img", enabled=progress, leave=False):
        try:
            sample = dataset[index]
            outputs = [_propose_or_explain(run, sample.image, budgets[-1]) for run in runs]
        except DataError as exc:
            skipped[index] = str(exc)
            write(f"detkit: warning: skipping image {index}: {exc}", file=sys.stderr)
            continue
        for tally, (boxes, num_given, seconds) in zip(tallies, outputs):
            tally.add(sample.targets, boxes, num_given, seconds)
    if not tallies or not tallies[0].kept:
        return [], skipped
    return [{**run.describe(), **tally.summary()} for run, tally in zip(runs, tallies)], skipped


def _propose_or_explain(run: ProposerRun, image: Any, max_proposals: int) -> tuple[Any, int, float]:
    """:meth:`ProposerRun.propose`; any failure becomes a :class:`DataError` naming the proposer."""
    try:
        return run.propose(image, max_proposals)
    except Exception as exc:  # one image a proposer cannot handle must not end the run
        raise DataError(f"proposer {run.spec!r} failed: {type(exc).__name__}: {exc}") from exc
