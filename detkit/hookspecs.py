"""The hooks a detkit plugin can implement, and the markers that declare them.

detkit uses pluggy with the project name ``detkit``. A plugin is a module (or any
object) with functions decorated by :data:`hookimpl` (also importable as
``detkit.hookimpl``) whose names match the specs below. First-party plugins in
``plugins/`` use exactly this mechanism.

Plugins reach detkit through:

* the explicit list of built-ins in ``detkit.plugins.BUILTIN_PLUGINS``;
* the ``detkit`` entry-point group of installed distributions
  (``DETKIT_DISABLE_PLUGIN_AUTOLOAD=1`` switches this off);
* ``-p module.name`` on the command line or ``plugins: [module.name]`` in a config.

``-p no:NAME`` blocks a plugin by name, whatever its origin.

This module imports nothing else from detkit, so a plugin can import it (and type
its hooks with :class:`Registrar`) without pulling in the toolkit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("detkit")
hookimpl = pluggy.HookimplMarker("detkit")


class Registrar(Protocol):
    """What :func:`detkit_add_components` receives: registration on the shared component registry.

    detkit passes a ``detkit.registry.PluginRegistrar``, which records the calling
    plugin as the origin of every component it registers.
    """

    def register(self, kind: str, name: str, factory: Callable[..., Any]) -> None:
        """Register ``factory`` as component ``name`` of ``kind``.

        :param kind: one of ``detkit.registry.COMPONENT_KINDS`` (``backbone``, ``neck``,
            ``proposer``, ``region_extractor``, ``roi_head``, ``mask_head``, ``dense_head``,
            ``preprocess``, ``postprocess``, ``detector``, ``dataset``, ``importer``).
        :param name: the name configs select it by (``{name: NAME, ...}``).
        :param factory: a callable (usually a class) whose keyword arguments are the
            component's config schema.
        :raises detkit.PluginError: an unknown kind, or ``(kind, name)`` already
            registered by another plugin (the message names both plugins).
        """
        ...

    def names(self, kind: str) -> list[str]:
        """The names registered so far under ``kind``, sorted."""
        ...


@hookspec
def detkit_add_components(registry: Registrar) -> None:
    """Register named component factories.

    Called once per plugin when the plugin manager loads. A factory is any callable
    (usually a class) whose keyword-only arguments are its config schema: a config
    section ``{name: NAME, key: value, ...}`` builds ``factory(key=value, ...)``, and
    an unknown key is reported against that signature.

    :param registry: a :class:`Registrar`; call ``registry.register(kind, name, factory)``
        for each component.

    Registering a ``(kind, name)`` pair that another plugin registered is an error
    naming both plugins.

    Use in plugins: implement it in your plugin module and register every component
    the plugin provides; do no other work at import time.
    """


@hookspec
def detkit_configure(config: dict) -> None:
    """Inspect (never replace) the resolved config before a model is built.

    Called after the config file, its base and command-line overrides are merged
    and validated, before any component is built. Raise a
    :class:`~detkit.errors.ConfigError` to reject a setting the plugin cannot honour.

    :param config: the resolved config as a plain dict; treat it as read-only.

    Use in plugins: validate cross-key constraints of your components (for example
    that a head's anchors match a proposer's).
    """


__all__ = ["Registrar", "detkit_add_components", "detkit_configure", "hookimpl", "hookspec"]
