"""The plugin manager and the component registry.

Plugins are loaded in this order, each at most once:

1. :data:`BUILTIN_PLUGINS`, listed explicitly;
2. installed distributions' ``detkit`` entry points, unless
   ``DETKIT_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value;
3. modules named with ``-p module`` or in the config's ``plugins:`` list.

``-p no:NAME`` (``blocked=["NAME"]``) skips a plugin of any origin. Every plugin's
:func:`~detkit.hookspecs.detkit_add_components` is then called with a view of the
:class:`ComponentRegistry` that records which plugin registered what.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from detkit import hookspecs
from detkit.errors import ConfigError, PluginError

hookimpl = pluggy.HookimplMarker("detkit")

#: Plugins that ship with detkit, loaded first, in this order (like pytest's default_plugins).
BUILTIN_PLUGINS: tuple[str, ...] = (
    "detkit.components",
    "detkit_rpn",
    "detkit_single_shot",
    "detkit_mask_head",
    "detkit_selective_search",
    "detkit_sliding_window",
)

#: Component kinds a plugin may register.
COMPONENT_KINDS: tuple[str, ...] = (
    "backbone",
    "neck",
    "proposer",
    "region_extractor",
    "roi_head",
    "mask_head",
    "dense_head",
    "preprocess",
    "postprocess",
    "detector",
    "dataset",
    "importer",
)

ENTRY_POINT_GROUP = "detkit"
DISABLE_AUTOLOAD_ENV = "DETKIT_DISABLE_PLUGIN_AUTOLOAD"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A `` (did you mean 'x'?)`` suffix for an unknown name, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Component:
    """A registered factory: what builds it and which plugin registered it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The factory's keyword parameters (its config schema)."""
        params = inspect.signature(self.factory).parameters
        return {
            k: p
            for k, p in params.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and k != "self"
        }

    def accepts_any_keyword(self) -> bool:
        params = inspect.signature(self.factory).parameters.values()
        return any(p.kind is p.VAR_KEYWORD for p in params)


class ComponentRegistry:
    """Named component factories by kind."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {k: {} for k in COMPONENT_KINDS}

    # -- registration -------------------------------------------------------------
    def register(
        self, kind: str, name: str, factory: Callable[..., Any], *, plugin: str = "<direct>"
    ) -> None:
        """Register ``factory`` as component ``name`` of ``kind``."""
        if kind not in self._components:
            raise PluginError(
                f"plugin {plugin!r} registers {name!r} under unknown kind {kind!r}"
                f"{did_you_mean(kind, COMPONENT_KINDS)}; kinds are: {', '.join(COMPONENT_KINDS)}"
            )
        existing = self._components[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} is registered by both plugin {existing.plugin!r} and plugin "
                f"{plugin!r}; rename one of them or block one with -p no:NAME"
            )
        self._components[kind][name] = Component(kind, name, factory, plugin)

    def scoped(self, plugin: str) -> _ScopedRegistry:
        """A view whose :meth:`register` records ``plugin`` as the origin."""
        return _ScopedRegistry(self, plugin)

    # -- lookup ------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def components(self) -> list[Component]:
        return [c for kind in COMPONENT_KINDS for c in self._components[kind].values()]

    def get(self, kind: str, name: str) -> Component:
        known = self._components.get(kind)
        if known is None:
            raise PluginError(f"unknown component kind {kind!r}{did_you_mean(kind, COMPONENT_KINDS)}")
        if name not in known:
            listing = ", ".join(sorted(known)) or "(none registered)"
            raise PluginError(
                f"unknown {kind} {name!r}{did_you_mean(name, known)}; known {kind}s: {listing}. "
                "`detkit plugins` lists every component and the plugin that provides it"
            )
        return known[name]

    def build(self, kind: str, spec: Mapping[str, Any], *, key: str = "", **extra: Any) -> Any:
        """Build a component from a config section ``{name: NAME, **kwargs}``.

        Args:
            kind: component kind.
            spec: the config section; ``name`` selects the factory, the other keys
                are its keyword arguments.
            key: dotted config key of the section, for error messages.
            extra: arguments the caller supplies (e.g. ``in_channels``); config keys win
                over nothing: a key given both ways is an error.
        """
        where = f"config key {key!r}" if key else f"{kind} config"
        if "name" not in spec:
            raise ConfigError(f"{where} needs a 'name' (one of: {', '.join(self.names(kind))})")
        component = self.get(kind, str(spec["name"]))
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        params = component.parameters()
        if not component.accepts_any_keyword():
            for k in kwargs:
                if k not in params:
                    raise ConfigError(
                        f"{where}: unknown key {k!r} for {kind} {component.name!r}"
                        f"{did_you_mean(k, params)}; it accepts: {', '.join(sorted(params)) or 'nothing'}"
                    )
        for k, v in extra.items():
            if k in kwargs:
                raise ConfigError(f"{where}: {k!r} is set by detkit and cannot be configured")
            if k in params or component.accepts_any_keyword():
                kwargs[k] = v
        try:
            return component.factory(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot build {kind} {component.name!r}: {exc}") from exc


class _ScopedRegistry:
    """What a plugin's hook receives: registration tagged with the plugin name."""

    def __init__(self, registry: ComponentRegistry, plugin: str) -> None:
        self._registry = registry
        self._plugin = plugin

    def register(self, kind: str, name: str, factory: Callable[..., Any]) -> None:
        self._registry.register(kind, name, factory, plugin=self._plugin)

    def names(self, kind: str) -> list[str]:
        return self._registry.names(kind)


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin and where it came from."""

    name: str
    module: str
    origin: str  # "builtin", "entry point (dist 1.0)", "-p", "config"


class Plugins:
    """The loaded plugins, their hooks and the components they registered."""

    def __init__(self, pm: pluggy.PluginManager, infos: list[PluginInfo], registry: ComponentRegistry) -> None:
        self.pm = pm
        self.infos = infos
        self.registry = registry

    @property
    def hook(self) -> Any:
        return self.pm.hook


def _import_plugin(module_name: str, origin: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        raise PluginError(
            f"plugin {module_name!r} ({origin}) failed to import: {type(exc).__name__}: {exc}. "
            f"Fix or uninstall it, or skip it with -p no:{module_name}"
        ) from exc


def _entry_point_plugins(blocked: set[str]) -> list[tuple[str, Any, str]]:
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in blocked:
            continue
        dist = getattr(ep, "dist", None)
        dist_label = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
        origin = f"entry point {ep.name} = {ep.value} ({dist_label})"
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} from {origin} failed to import: {type(exc).__name__}: {exc}. "
                f"Fix or uninstall {dist_label}, skip it with -p no:{ep.name}, or set "
                f"{DISABLE_AUTOLOAD_ENV}=1"
            ) from exc
        found.append((ep.name, obj, origin))
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

    def add(name: str, obj: Any, origin: str) -> None:
        if name in blocked_set or pm.has_plugin(name) or pm.is_registered(obj):
            return
        try:
            pm.register(obj, name=name)
        except ValueError as exc:
            raise PluginError(f"plugin {name!r} ({origin}) cannot be registered: {exc}") from exc
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} ({origin}) has an invalid hook: {exc}") from exc
        module = getattr(obj, "__name__", type(obj).__name__)
        infos.append(PluginInfo(name, module, origin))

    for module_name in BUILTIN_PLUGINS:
        if module_name not in blocked_set:
            add(module_name, _import_plugin(module_name, "builtin"), "builtin")
    if autoload:
        for name, obj, origin in _entry_point_plugins(blocked_set):
            add(name, obj, origin)
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
            impl.function(registry=registry.scoped(impl.plugin_name))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r}: detkit_add_components failed: {type(exc).__name__}: {exc}"
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
