"""detkit_selective_search: selective search proposals (Uijlings et al., IJCV 2013).

Registers the proposer ``selective_search``; :func:`selective_search` runs the
algorithm on one numpy image, :func:`cached_selective_search` does so through
the on-disk proposal cache (:func:`make_cache` opens the one of a config).
"""

from __future__ import annotations

from detkit.hookspecs import Registrar, hookimpl
from detkit_selective_search.proposer import SelectiveSearch, cached_selective_search, make_cache
from detkit_selective_search.search import PRESETS, SearchConfig, make_config, selective_search

__all__ = [
    "PRESETS",
    "SearchConfig",
    "SelectiveSearch",
    "cached_selective_search",
    "detkit_add_components",
    "make_cache",
    "make_config",
    "selective_search",
]


@hookimpl
def detkit_add_components(registry: Registrar) -> None:
    registry.register("proposer", "selective_search", SelectiveSearch)
