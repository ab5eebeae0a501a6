"""The hooks a detkit plugin can implement.

detkit uses pluggy with the project name ``detkit``. A plugin is a module (or any
object) with functions decorated by :data:`detkit.hookimpl` whose names match the
specs below. First-party plugins in ``plugins/`` use exactly this mechanism.

Plugins reach detkit through:

* the explicit list of built-ins in :data:`detkit.plugins.BUILTIN_PLUGINS`;
* the ``detkit`` entry-point group of installed distributions
  (``DETKIT_DISABLE_PLUGIN_AUTOLOAD=1`` switches this off);
* ``-p module.name`` on the command line or ``plugins: [module.name]`` in a config.

``-p no:NAME`` blocks a plugin by name, whatever its origin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from detkit.plugins import ComponentRegistry

hookspec = pluggy.HookspecMarker("detkit")


@hookspec
def detkit_add_components(registry: ComponentRegistry) -> None:
    """Register named component factories.

    Called once per plugin when the plugin manager loads. A factory is any callable
    (usually a class) whose keyword-only arguments are its config schema: a config
    section ``{name: NAME, key: value, ...}`` builds ``factory(key=value, ...)``, and
    an unknown key is reported against that signature.

    :param registry: the shared :class:`~detkit.plugins.ComponentRegistry`; call
        ``registry.register(kind, name, factory)`` for each component. Kinds are
        listed in :data:`detkit.plugins.COMPONENT_KINDS`.

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
