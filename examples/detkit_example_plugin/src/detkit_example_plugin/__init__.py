"""detkit-example-plugin: a complete third-party detkit plugin.

Registers the proposer ``grid_proposals`` (:class:`GridProposer`): fixed,
class-agnostic boxes on a regular grid at several scales. Use it from a config::

    model:
      proposer: {name: grid_proposals, scales: [16, 32, 64, 128], max_proposals: 500}

or on the command line: ``model.proposer={name: grid_proposals}``.

The plugin reaches detkit through the ``detkit`` entry point of this distribution
(see ``pyproject.toml``); importing this module registers nothing by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

import detkit
from detkit.hookspecs import Registrar
from detkit_example_plugin.grid import GridProposer

__version__ = "0.1.0"

__all__ = ["GridProposer", "__version__", "detkit_add_components", "detkit_configure"]


@detkit.hookimpl
def detkit_add_components(registry: Registrar) -> None:
    """Register the proposer ``grid_proposals``."""
    registry.register("proposer", "grid_proposals", GridProposer)


@detkit.hookimpl
def detkit_configure(config: Mapping[str, Any]) -> None:
    """Reject grid scales larger than the largest resized image side.

    Such boxes would all be clipped to the whole image: the setting is a mistake
    (boxes are in resized pixels, not in the pixels of the original images).
    """
    model = config.get("model") or {}
    proposer = model.get("proposer") or {}
    if proposer.get("name") != "grid_proposals":
        return
    max_size = (model.get("preprocess") or {}).get("max_size")
    scales = proposer.get("scales")
    if not isinstance(max_size, Real) or not isinstance(scales, (list, tuple)):
        return
    too_large = [s for s in scales if isinstance(s, Real) and s > max_size]
    if too_large:
        raise detkit.ConfigError(
            f"model.proposer.scales {too_large} exceed model.preprocess.max_size={max_size}: "
            "grid_proposals boxes are in resized pixels and would all cover the whole image; "
            "use scales up to the resized image size"
        )
