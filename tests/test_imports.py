"""The package's import structure: plugins use the public API only, and detkit has no import cycle.

Both tests read the source with :mod:`ast`: every ``import`` statement counts, at module
level, inside a function or under ``TYPE_CHECKING``, so a cycle hidden behind a lazy
import is still found.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import detkit

ROOT = Path(__file__).resolve().parents[1]


def modules_under(base: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``base/package``."""
    found = {}
    for path in sorted((base / package).rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


DETKIT = modules_under(ROOT, "detkit")
PLUGIN_MODULES = {
    name: path
    for package in sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists())
    for name, path in modules_under(ROOT / "plugins", package).items()
}


def is_submodule(package: str, name: str, known: set[str]) -> bool:
    """Whether ``from package import name`` imports a module (not a name the package's ``__init__`` binds).

    ``from detkit.ops import roi_align`` takes the function that ``detkit/ops/__init__.py``
    re-exports, though a submodule of that name exists; the package is imported to tell.
    """
    if f"{package}.{name}" not in known:
        return False
    try:
        return inspect.ismodule(getattr(importlib.import_module(package), name, None))
    except ImportError:
        return True


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules a file imports; ``from pkg import x`` counts as ``pkg.x`` when that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb level - 1 packages from this one
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if is_submodule(base, alias.name, known) else base)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as a list of nodes (the first repeated at the end), or ``None``."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def detkit_import_graph() -> dict[str, set[str]]:
    """Module -> the detkit modules it imports.

    A module importing its own parent package (``detkit.ops.boxes`` -> ``detkit.ops``)
    is left out: the parent runs first anyway, and its ``__init__`` re-exporting the
    submodule is how packages are built, not a cycle of design.
    """
    known = set(DETKIT)
    return {
        name: {m for m in imports_of(name, path, known) if m in known and m != name and not name.startswith(m + ".")}
        for name, path in DETKIT.items()
    }


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_imports_of_resolves_relative_and_from_imports(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from . import sib\nfrom ..other import thing\nimport x.y\nfrom pkg import sub\n")
    found = imports_of("top.pack.mod", path, known={"top.pack.sib", "pkg.sub"})
    assert found == {"top.pack.sib", "top.other", "x.y", "pkg.sub"}


def test_plugins_import_only_the_public_api():
    offenders = [
        f"{path.relative_to(ROOT)} imports {imported}"
        for name, path in PLUGIN_MODULES.items()
        for imported in sorted(imports_of(name, path, set(DETKIT)))
        if imported.split(".")[0] == "detkit" and imported not in detkit.PUBLIC_MODULES
    ]
    assert not offenders, (
        f"plugins may import only {', '.join(detkit.PUBLIC_MODULES)}:\n" + "\n".join(offenders)
    )


def test_detkit_has_no_import_cycle():
    cycle = find_cycle(detkit_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", detkit.PUBLIC_MODULES)
def test_public_modules_exist_and_declare_their_names(name):
    module = __import__(name, fromlist=["__all__"])
    assert module.__all__, f"{name} is public and must list its names in __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing
