"""Transfer learning of CS231n lecture 7: freeze a pretrained trunk, train the head, then thaw.

The recipe: with a small dataset, reinitialise and train only the last layer
(the features of an ImageNet net are generic); with more data, also fine-tune
the last few stages, typically with a ~10x lower lr than training from scratch.
Freezing is ``requires_grad = False``: frozen parameters get no gradient, so
an optimizer given only :func:`trainable_parameters` leaves them untouched and
backward does not compute their gradients at all (faster, less memory).

Frozen batch-norm layers still update their running statistics in train mode;
call ``.eval()`` on them if they should stay fixed too.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["fine_tune_last", "freeze_all_but_head", "trainable_parameters"]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad``: pass these to the optimizer."""
    return [p for p in model.parameters() if p.requires_grad]


def _trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def freeze_all_but_head(model: nn.Module, head_names: Sequence[str]) -> list[str]:
    """Freeze every parameter of ``model`` except those of the submodules named in ``head_names``.

    ``head_names`` are qualified submodule names as in ``model.named_modules()``
    (``"fc"``, ``"classifier.6"``). Returns the names of the parameters left
    trainable. An unknown name is a ``KeyError`` listing the top-level modules.
    """
    modules = dict(model.named_modules())
    for name in head_names:
        if name not in modules:
            children = ", ".join(n for n, _ in model.named_children())
            raise KeyError(f"no submodule {name!r} in {type(model).__name__}; its top-level modules are: {children}")
    model.requires_grad_(False)
    for name in head_names:
        modules[name].requires_grad_(True)
    return _trainable_names(model)


def fine_tune_last(model: nn.Module, n_stages: int, stages: Sequence[nn.Module]) -> list[str]:
    """Freeze ``model`` except the last ``n_stages`` of ``stages`` (ordered input -> output).

    ``stages`` are submodules of ``model`` (e.g. a ResNet's ``layer1..layer4, fc``).
    ``n_stages = 1`` trains the head only; raising it thaws the trunk from the top
    down, since the top layers' features are the most task specific.
    Parameters outside every stage stay frozen. Returns the trainable parameter names.
    """
    if not 0 <= n_stages <= len(stages):
        raise ValueError(f"n_stages must be in [0, {len(stages)}], got {n_stages}")
    owned = {id(p) for p in model.parameters()}
    for i, stage in enumerate(stages):
        if any(id(p) not in owned for p in stage.parameters()):
            raise ValueError(f"stage {i} ({type(stage).__name__}) is not a submodule of the model")
    model.requires_grad_(False)
    for stage in stages[len(stages) - n_stages :]:
        stage.requires_grad_(True)
    return _trainable_names(model)
