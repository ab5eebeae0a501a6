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

#: Component kinds a plugin may register; each is selected by a config section or command.
COMPONENT_KINDS: tuple[str, ...] = (
    "backbone",
    "neck",
    "proposer",
    "region_extractor",
    "roi_head",
    "mask_head",
    "dense_head",
    "postprocess",
    "detector",
    "dataset",
    "importer",
)

#: Arguments the detector builders pass to a component of each kind themselves (never set in a config).
SUPPLIED_BY_DETKIT: dict[str, frozenset[str]] = {
    "neck": frozenset({"in_channels", "in_strides"}),
    "proposer": frozenset({"in_channels", "in_strides"}),
    "roi_head": frozenset({"region_extractor", "in_channels", "num_classes", "mask_head", "network"}),
    "mask_head": frozenset({"in_channels", "num_classes"}),
    "dense_head": frozenset({"in_channels", "in_strides", "in_features", "num_classes"}),
}

#: The stage contract (a base class in ``detkit.stages``) a built component of each kind must follow.
CONTRACTS: dict[str, str] = {
    "backbone": "Backbone",
    "neck": "Neck",
    "proposer": "Proposer",
    "region_extractor": "RegionExtractor",
    "roi_head": "RoIHead",
    "mask_head": "MaskHead",
    "dense_head": "DenseHead",
    "postprocess": "PostProcess",
}


@dataclass(frozen=True)
class Component:
    """A registered factory: what builds it and which plugin registered it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The factory's keyword parameters (its config schema and what detkit passes)."""
        params = inspect.signature(self.factory).parameters
        return {
            k: p
            for k, p in params.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and k != "self"
        }

    def settings(self) -> dict[str, inspect.Parameter]:
        """The parameters a config may set: :meth:`parameters` less those detkit supplies."""
        supplied = SUPPLIED_BY_DETKIT.get(self.kind, frozenset())
        return {k: p for k, p in self.parameters().items() if k not in supplied}

    def origin(self) -> str:
        """Where the factory is defined: ``module.qualname`` (for messages and ``--describe``)."""
        module = getattr(self.factory, "__module__", None) or "?"
        return f"{module}.{getattr(self.factory, '__qualname__', repr(self.factory))}"

    def accepts_any_keyword(self) -> bool:
        params = inspect.signature(self.factory).parameters.values()
        return any(p.kind is p.VAR_KEYWORD for p in params)


class ComponentRegistry:
    """Named component factories by kind."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {k: {} for k in COMPONENT_KINDS}
        #: ``(config key, component)`` of every :meth:`build`, in order (what a model was made of).
        self.built: list[tuple[str, Component]] = []

    # -- registration -------------------------------------------------------------
    def register(
        self, kind: str, name: str, factory: Callable[..., Any], *, plugin: str = "<direct>"
    ) -> None:
        """Register ``factory`` as component ``name`` of ``kind``.

        Raises:
            PluginError: an unknown kind, a factory that cannot be called, or a name
                another plugin registered under the same kind.
        """
        if kind not in self._components:
            raise PluginError(
                f"plugin {plugin!r} registers {name!r} under unknown kind {kind!r}"
                f"{did_you_mean(kind, COMPONENT_KINDS)}; kinds are: {', '.join(COMPONENT_KINDS)}"
            )
        if not callable(factory):
            raise PluginError(
                f"plugin {plugin!r} registers {kind} {name!r} with a factory that cannot be called "
                f"({type(factory).__name__} {factory!r}); register the class or function that builds it"
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
    def kinds(self) -> list[str]:
        return list(self._components)

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def components(self) -> list[Component]:
        return [c for kind in COMPONENT_KINDS for c in self._components[kind].values()]

    def get(self, kind: str, name: str) -> Component:
        known = self._components.get(kind)
        if known is None:
            raise PluginError(
                f"unknown component kind {kind!r}{did_you_mean(kind, COMPONENT_KINDS)}; kinds are: "
                f"{', '.join(COMPONENT_KINDS)}"
            )
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
        params, settings = component.parameters(), component.settings()
        supplied = SUPPLIED_BY_DETKIT.get(kind, frozenset()) | set(extra)
        for k in kwargs:
            if k in supplied:
                raise ConfigError(f"{where}: {k!r} is set by detkit and cannot be configured")
            if k not in params and not component.accepts_any_keyword():
                hint = did_you_mean(k, params)
                if hint and hint.split("'")[1] in supplied:
                    hint = hint[: -len("?)")] + ", which detkit sets itself?)"
                raise ConfigError(
                    f"{where}: unknown key {k!r} for {kind} {component.name!r}{hint}; "
                    f"it accepts: {', '.join(sorted(settings)) or 'nothing'} "
                    f"(`detkit plugins --describe {kind} {component.name}` documents them)"
                )
        for k, v in extra.items():
            if k in params or component.accepts_any_keyword():
                kwargs[k] = v
        try:
            built = component.factory(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot build {kind} {component.name!r}: {exc}") from exc
        _check_contract(kind, component, built, where)
        self.built.append((key or kind, component))
        return built


def describe(component: Component) -> str:
    """A component's documentation for ``detkit plugins --describe KIND NAME``.

    The factory's summary, then every argument with its type, default and the line of
    the ``Args:`` section documenting it (searched in the factory's docstring, then its
    base classes'), the ones a config may set apart from the ones detkit passes itself.
    """
    docs = _argument_docs(component.factory)
    summary = (inspect.getdoc(component.factory) or "").split("\n\n")[0].replace("\n", " ")
    lines = [f"{component.kind} {component.name!r}: plugin {component.plugin!r}, {component.origin()}"]
    if summary:
        lines += ["", f"  {summary}"]

    def rows(params: Mapping[str, inspect.Parameter]) -> list[str]:
        out = []
        for name, param in params.items():
            annotation = "" if param.annotation is param.empty else f": {_annotation(param.annotation)}"
            default = "" if param.default is param.empty else f" = {param.default!r}"
            out.append(f"  {name}{annotation}{default}")
            if name in docs:
                out.append(f"      {docs[name]}")
        return out

    settings = component.settings()
    supplied = {k: p for k, p in component.parameters().items() if k not in settings}
    lines += ["", "settings (config keys):", *(rows(settings) or ["  (none)"])]
    if component.accepts_any_keyword():
        lines.append("  ... and any other keyword (the factory takes **kwargs)")
    if supplied:
        lines += ["", "set by detkit (not in a config):", *rows(supplied)]
    return "\n".join(lines)


def _annotation(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))


def _argument_docs(factory: Any) -> dict[str, str]:
    """``name -> description`` from the ``Args:`` sections of ``factory``'s docstring and its bases'."""
    sources = list(inspect.getmro(factory)) if inspect.isclass(factory) else [factory]
    docs: dict[str, str] = {}
    for source in sources:
        text = inspect.getdoc(source) or ""
        in_args, current = False, None
        for line in text.splitlines():
            stripped = line.strip()
            if stripped in ("Args:", "Arguments:", "Parameters:"):
                in_args, current = True, None
                continue
            if not in_args:
                continue
            if not stripped or (not line.startswith(" ") and stripped.endswith(":")):
                in_args = False  # a blank line or the next section ends the arguments
                continue
            indent = len(line) - len(line.lstrip())
            head, sep, rest = stripped.partition(": ")
            if sep and indent <= 4 and all(n.strip().isidentifier() for n in head.split(",")):
                names = [n.strip() for n in head.split(",")]
                current = names
                for n in names:
                    docs.setdefault(n, rest.strip())
            elif current:
                for n in current:
                    if docs.get(n) is not None:
                        docs[n] = f"{docs[n]} {stripped}"
    return docs


def _check_contract(kind: str, component: Component, built: Any, where: str) -> None:
    """Raise a :class:`PluginError` unless ``built`` is an instance of its kind's stage contract."""
    contract_name = CONTRACTS.get(kind)
    if contract_name is None:
        return
    from detkit import stages  # the contracts live above the registry; imported when first needed

    contract = getattr(stages, contract_name)
    if not isinstance(built, contract):
        raise PluginError(
            f"{where}: {kind} {component.name!r} (plugin {component.plugin!r}, {component.origin()}) built a "
            f"{type(built).__name__}, not a detkit.stages.{contract_name}; subclass it so the detector can use it"
        )
    if kind in ("backbone", "neck"):
        for attribute in ("out_channels", "out_strides"):
            if not isinstance(getattr(built, attribute, None), Mapping):
                raise PluginError(
                    f"{where}: {kind} {component.name!r} (plugin {component.plugin!r}) has no {attribute} mapping; "
                    f"a {contract_name} sets out_channels and out_strides (feature name -> int), finest first"
                )


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


__all__ = [
    "COMPONENT_KINDS",
    "CONTRACTS",
    "SUPPLIED_BY_DETKIT",
    "Component",
    "ComponentRegistry",
    "PluginRegistrar",
    "describe",
]
