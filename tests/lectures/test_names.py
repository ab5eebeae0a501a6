"""No lecture name shadows torch's: nothing in ``detkit.lectures`` is also a name of torch.nn, F or torch.optim."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest
import torch.nn
import torch.nn.functional
import torch.optim

import detkit.lectures

TORCH_MODULES = (torch.nn, torch.nn.functional, torch.optim)
LECTURE_MODULES = sorted(m.name for m in pkgutil.iter_modules(detkit.lectures.__path__))


def torch_names() -> dict[str, str]:
    """Every public name of torch.nn, torch.nn.functional and torch.optim -> the module that has it."""
    found: dict[str, str] = {}
    for module in TORCH_MODULES:
        for name in dir(module):
            if not name.startswith("_"):
                found.setdefault(name, module.__name__)
    return found


def shadowing(names: list[str]) -> list[str]:
    taken = torch_names()
    return sorted(f"{name} (also {taken[name]}.{name})" for name in names if name in taken)


def test_torch_names_are_read():
    # The oracle itself: the names the package once exported must be found.
    taken = torch_names()
    assert {"ReLU", "LSTM", "relu", "dropout", "SGD", "Adam"} <= set(taken)


def test_package_exports_no_torch_name():
    assert shadowing(detkit.lectures.__all__) == []


def test_package_namespace_is_its_all():
    # So the check above covers the namespace: every public object in the package is in __all__.
    public = {
        name
        for name, value in vars(detkit.lectures).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(detkit.lectures.__all__)
    assert len(detkit.lectures.__all__) == len(public)  # no duplicates


@pytest.mark.parametrize("name", LECTURE_MODULES)
def test_module_exports_no_torch_name(name):
    module = importlib.import_module(f"detkit.lectures.{name}")
    assert shadowing(list(module.__all__)) == []
