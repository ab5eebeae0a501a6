"""detkit: a plugin-based object detection and instance segmentation toolkit.

The public API for plugins is this package, :mod:`detkit.structures`,
:mod:`detkit.ops`, :mod:`detkit.stages` and :mod:`detkit.hookspecs`.
"""

from detkit.errors import CheckpointError, ConfigError, DataError, DetkitError, PluginError
from detkit.plugins import hookimpl

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DetkitError",
    "PluginError",
    "__version__",
    "hookimpl",
]
