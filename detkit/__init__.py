"""detkit: a plugin-based object detection and instance segmentation toolkit.

The public API, the only modules a plugin imports (``tests/test_imports.py``
enforces it for the first-party plugins), is :data:`PUBLIC_MODULES`:

* :mod:`detkit` -- the errors, :data:`hookimpl` and :class:`ComponentRegistry`;
* :mod:`detkit.structures` -- the typed containers that cross stages;
* :mod:`detkit.ops` -- box math, matching, sampling, NMS, region pooling;
* :mod:`detkit.stages` -- the stage contracts and the stages shared by every detector;
* :mod:`detkit.detectors` -- the detector compositions and their builders' helpers;
* :mod:`detkit.hookspecs` -- the hooks and the :class:`~detkit.hookspecs.Registrar` protocol;
* :mod:`detkit.importers` -- converting torchvision state dicts into detkit checkpoints;
* :mod:`detkit.io` -- atomic file output (temporary file, then rename);
* :mod:`detkit.weights` -- reading weight files and URLs (downloaded once) into modules;
* :mod:`detkit.backbones` -- the classification backbones, their building blocks
  (MobileNetV3's inverted residual blocks and tables), the FPN and the backbone registry.
"""

from detkit.errors import CheckpointError, ConfigError, DataError, DetkitError, PluginError
from detkit.hookspecs import hookimpl
from detkit.registry import ComponentRegistry

__version__ = "0.1.0"

#: The modules plugins may import; everything else in detkit may change without notice.
PUBLIC_MODULES: tuple[str, ...] = (
    "detkit",
    "detkit.structures",
    "detkit.ops",
    "detkit.stages",
    "detkit.detectors",
    "detkit.hookspecs",
    "detkit.importers",
    "detkit.io",
    "detkit.weights",
    "detkit.backbones",
)

__all__ = [
    "PUBLIC_MODULES",
    "CheckpointError",
    "ComponentRegistry",
    "ConfigError",
    "DataError",
    "DetkitError",
    "PluginError",
    "__version__",
    "hookimpl",
]
