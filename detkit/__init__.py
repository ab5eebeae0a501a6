"""detkit: a plugin-based object detection and instance segmentation toolkit.

From Python, :class:`Detector` loads a checkpoint and detects (:mod:`detkit.api`)::

    from detkit import Detector

    det = Detector.from_checkpoint("runs/demo/best.pt", device="auto")
    result = det("image.png")          # or an array, a PIL image, a tensor, a list of them
    print(result.to_records())

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

from typing import TYPE_CHECKING

from detkit.errors import CheckpointError, ConfigError, DataError, DetkitError, PluginError
from detkit.hookspecs import hookimpl
from detkit.registry import ComponentRegistry

if TYPE_CHECKING:
    from detkit.api import DetectionResult, Detector

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

#: The names of :mod:`detkit.api` this package gives, loaded on first use: ``import detkit``
#: stays light (no torch) for plugins' and tools' imports.
_API = ("DetectionResult", "Detector")


def __getattr__(name: str) -> object:
    if name in _API:
        from detkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'detkit' has no attribute {name!r}")


__all__ = [
    "PUBLIC_MODULES",
    "CheckpointError",
    "ComponentRegistry",
    "ConfigError",
    "DataError",
    "DetectionResult",
    "Detector",
    "DetkitError",
    "PluginError",
    "__version__",
    "hookimpl",
]
