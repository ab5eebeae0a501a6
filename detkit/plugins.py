"""The plugin manager: finding, loading and registering plugins.

Plugins are loaded in this order, each at most once:

1. :data:`BUILTIN_PLUGINS`, listed explicitly;
2. installed distributions' ``detkit`` entry points, unless
   ``DETKIT_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value;
3. modules named with ``-p module`` or in the config's ``plugins:`` list.

``-p no:NAME`` (``blocked=["NAME"]``) skips a plugin of any origin. Every plugin's
:func:`~detkit.hookspecs.detkit_add_components` is then called with a
:class:`~detkit.registry.PluginRegistrar`: a view of the shared
:class:`~detkit.registry.ComponentRegistry` that records which plugin registered what.

``ComponentRegistry``, ``COMPONENT_KINDS``, ``did_you_mean`` and ``hookimpl`` are
re-exported here for callers that load plugins and look components up in one place.
"""

from __future__ import annotations

import importlib
import os
import traceback
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, entry_points, packages_distributions
from importlib.metadata import version as distribution_version
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from detkit import hookspecs
from detkit.errors import PluginError, did_you_mean
from detkit.hookspecs import hookimpl
from detkit.registry import COMPONENT_KINDS, Component, ComponentRegistry, PluginRegistrar

ENTRY_POINT_GROUP = "detkit"
DISABLE_AUTOLOAD_ENV = "DETKIT_DISABLE_PLUGIN_AUTOLOAD"

#: Plugins that ship with detkit, loaded first, in this order (like pytest's default_plugins).
BUILTIN_PLUGINS: tuple[str, ...] = (
    "detkit.components",
    "detkit_rpn",
    "detkit_single_shot",
    "detkit_mask_head",
    "detkit_selective_search",
    "detkit_sliding_window",
    "detkit_yolo",
    "detkit_dense_heads",
)


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin and where it came from.

    Attributes:
        name: the plugin's name (an entry point's name, or the module's).
        module: the module that holds its hooks.
        origin: ``builtin``, ``entry point NAME = VALUE (dist version)``, ``-p`` or ``config``.
        distribution: the installed distribution that provides it, with ``version``,
            when known (entry points); see :meth:`Plugins.distribution_of` for the others.
    """

    name: str
    module: str
    origin: str
    distribution: str | None = None
    version: str | None = None




class Plugins:
    """The loaded plugins, their hooks and the components they registered."""

    def __init__(self, pm: pluggy.PluginManager, infos: list[PluginInfo], registry: ComponentRegistry) -> None:
        self.pm = pm
        self.infos = infos
        self.registry = registry

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def distribution_of(self, plugin: str) -> tuple[str | None, str | None]:
        """``(distribution, version)`` that provides ``plugin``, or ``(None, None)`` for a loose module."""
        info = next((i for i in self.infos if i.name == plugin), None)
        if info is None:
            return None, None
        if info.distribution:
            return info.distribution, info.version
        if info.origin == "builtin":
            return "detkit", _version("detkit")
        top = info.module.split(".")[0]
        names = packages_distributions().get(top, [])
        return (names[0], _version(names[0])) if names else (None, None)

    def model_components(
        self, built: Sequence[tuple[str, Component]], *, detector: str
    ) -> dict[str, dict[str, str | None]]:
        """Which plugin (and distribution) provided each component a model was built from.

        Args:
            built: the ``(config key, component)`` pairs of the build
                (:attr:`ComponentRegistry.built <detkit.registry.ComponentRegistry.built>`).
            detector: ``model.type``.

        Returns:
            ``{"model.backbone": {"kind", "name", "plugin", "distribution", "version"}, ...,
            "model.type": {...}}``; a checkpoint stores it, so that loading it without a
            plugin can say what to install.
        """
        entries = [*built, ("model.type", self.registry.get("detector", detector))]
        found: dict[str, dict[str, str | None]] = {}
        for key, component in entries:
            distribution, version = self.distribution_of(component.plugin)
            found[key] = {
                "kind": component.kind, "name": component.name, "plugin": component.plugin,
                "distribution": distribution, "version": version,
            }
        return found

    def check_available(self, components: Mapping[str, Mapping[str, Any]], *, source: str) -> None:
        """Raise a :class:`PluginError` naming what to install when a recorded component is not registered.

        Args:
            components: :meth:`model_components` of the run that made ``source``.
            source: what needs them, e.g. ``checkpoint 'best.pt'``.
        """
        for key, entry in components.items():
            kind, name = str(entry.get("kind")), str(entry.get("name"))
            if kind in self.registry.kinds() and name in self.registry.names(kind):
                continue
            distribution, version = entry.get("distribution"), entry.get("version")
            if distribution:
                pin = f"=={version}" if version else ""
                remedy = f"install it (pip install '{distribution}{pin}')"
            else:
                remedy = f"make module {entry.get('plugin')!r} importable"
            raise PluginError(
                f"{source} was built with {kind} {name!r} ({key}) from plugin {entry.get('plugin')!r}"
                f"{f' of {distribution} {version}' if distribution else ''}, which is not loaded here; "
                f"{remedy} and load it (an installed entry point loads by itself; a module with -p MODULE)"
            )


def _version(distribution: str) -> str | None:
    try:
        return distribution_version(distribution)
    except PackageNotFoundError:
        return None


def _where(exc: BaseException) -> str:
    """`` at FILE:LINE``: where in a plugin's own code ``exc`` was raised, or ``""`` when that is unknown.

    The innermost frame of the traceback outside detkit, pluggy and the standard library
    (the import machinery); for a syntax error, the offending line.
    """
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    ours = [Path(path).resolve().parent for path in (__file__, importlib.__file__, pluggy.__file__) if path]
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<") and not any(Path(f.filename).resolve().is_relative_to(p) for p in ours)
    ]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _import_plugin(module_name: str, origin: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(
            f"plugin {module_name!r} ({origin}) failed to import{_where(exc)}: {type(exc).__name__}: {exc}. "
            f"Fix or uninstall it, or skip it with -p no:{module_name}"
        ) from exc


def _entry_point_plugins(blocked: set[str]) -> list[tuple[str, Any, str, str | None, str | None]]:
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in blocked:
            continue
        dist = getattr(ep, "dist", None)
        dist_label = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
        origin = f"entry point {ep.name} = {ep.value} ({dist_label})"
        distribution = (dist.name, dist.version) if dist is not None else (None, None)
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} from {origin} failed to import{_where(exc)}: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall {dist_label}, skip it with -p no:{ep.name}, or set "
                f"{DISABLE_AUTOLOAD_ENV}=1"
            ) from exc
        found.append((ep.name, obj, origin, *distribution))
    return found


def load_plugins(
    extra: Sequence[str] = (),
    *,
    config_plugins: Sequence[str] = (),
    blocked: Sequence[str] = (),
    autoload: bool | None = None,
) -> Plugins:
    """Load built-in, installed and named plugins and collect their components.

    Args:
        extra: modules named with ``-p``; ``no:NAME`` entries block ``NAME``.
        config_plugins: modules from the config's ``plugins:`` key.
        blocked: plugin names to skip.
        autoload: load entry points; defaults to ``not DETKIT_DISABLE_PLUGIN_AUTOLOAD``.
    """
    blocked_set = set(blocked)
    named: list[tuple[str, str]] = []
    for item in extra:
        if item.startswith("no:"):
            blocked_set.add(item[3:])
        else:
            named.append((item, "-p"))
    named += [(m, "config") for m in config_plugins]
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)

    pm = pluggy.PluginManager("detkit")
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []

    def add(name: str, obj: Any, origin: str, distribution: str | None = None, version: str | None = None) -> None:
        if name in blocked_set or pm.has_plugin(name) or pm.is_registered(obj):
            return
        try:
            pm.register(obj, name=name)
        except ValueError as exc:
            raise PluginError(f"plugin {name!r} ({origin}) cannot be registered: {exc}") from exc
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} ({origin}) has an invalid hook: {exc}") from exc
        module = getattr(obj, "__name__", type(obj).__name__)
        if not pm.get_hookcallers(obj):
            warnings.warn(
                f"plugin {name!r} ({origin}) implements no detkit hook: it registers nothing. Mark its "
                "functions with @detkit.hookimpl and name them after detkit.hookspecs (e.g. detkit_add_components)",
                stacklevel=2,
            )
        infos.append(PluginInfo(name, module, origin, distribution, version))

    for module_name in BUILTIN_PLUGINS:
        if module_name not in blocked_set:
            add(module_name, _import_plugin(module_name, "builtin"), "builtin")
    if autoload:
        for name, obj, origin, distribution, version in _entry_point_plugins(blocked_set):
            add(name, obj, origin, distribution, version)
    for module_name, origin in named:
        if module_name not in blocked_set:
            add(module_name, _import_plugin(module_name, origin), origin)

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {pm.get_name(exc.plugin)!r} implements a hook detkit does not define: {exc}. "
            "Check the function names against detkit.hookspecs"
        ) from exc
    registry = ComponentRegistry()
    for impl in pm.hook.detkit_add_components.get_hookimpls():
        try:
            registrar: PluginRegistrar = registry.scoped(impl.plugin_name)
            impl.function(registry=registrar)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r}: detkit_add_components failed{_where(exc)}: "
                f"{type(exc).__name__}: {exc} (--traceback shows the whole traceback)"
            ) from exc
    return Plugins(pm, infos, registry)


__all__ = [
    "BUILTIN_PLUGINS",
    "COMPONENT_KINDS",
    "Component",
    "ComponentRegistry",
    "PluginInfo",
    "Plugins",
    "did_you_mean",
    "hookimpl",
    "load_plugins",
]
