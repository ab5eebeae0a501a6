"""The component registry: named factories by kind, and the one place that builds them from config.

Plugins fill it through :func:`~detkit.hookspecs.detkit_add_components`, which
receives a :class:`PluginRegistrar` (the :class:`~detkit.hookspecs.Registrar`
protocol) recording the plugin as the origin of what it registers. Detector
builders (components of kind ``detector``) receive the whole
:class:`ComponentRegistry` and call :meth:`ComponentRegistry.build` for their parts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from detkit.errors import ConfigError, PluginError, did_you_mean

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

    def scoped(self, plugin: str) -> PluginRegistrar:
        """A view whose :meth:`register` records ``plugin`` as the origin."""
        return PluginRegistrar(self, plugin)

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


class PluginRegistrar:
    """What a plugin's :func:`~detkit.hookspecs.detkit_add_components` receives.

    It implements :class:`detkit.hookspecs.Registrar`: :meth:`register` adds to the
    shared :class:`ComponentRegistry` with the plugin's name recorded as the origin.
    """

    def __init__(self, registry: ComponentRegistry, plugin: str) -> None:
        self._registry = registry
        self._plugin = plugin

    def register(self, kind: str, name: str, factory: Callable[..., Any]) -> None:
        self._registry.register(kind, name, factory, plugin=self._plugin)

    def names(self, kind: str) -> list[str]:
        return self._registry.names(kind)


__all__ = ["COMPONENT_KINDS", "Component", "ComponentRegistry", "PluginRegistrar"]
