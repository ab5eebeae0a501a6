"""detkit_dense_heads: RetinaNet (Lin et al., 2017) and FCOS (Tian et al., 2019), dense heads on an FPN.

Registers:

* the detector ``dense`` (``model.type: dense``, :func:`build_dense_detector`):
  preprocess -> backbone -> neck -> dense head -> post-process, images resized keeping
  their aspect ratio (``min_size`` / ``max_size``) as the two-stage models do;
* the dense head ``retinanet`` (:class:`RetinaNetHead`): 9 anchors per location, IoU
  matching, sigmoid focal loss and L1 box loss;
* the dense head ``fcos`` (:class:`FCOSHead`): one location per cell, distances to the
  box sides, centerness, centre sampling and size ranges per level; focal, GIoU and
  centerness losses;
* the importers ``retinanet_resnet50_fpn`` and ``fcos_resnet50_fpn``
  (``detkit import-torchvision retinanet_resnet50_fpn IN OUT``), whose configs
  (``retinanet_r50_fpn.yaml``, ``fcos_r50_fpn.yaml``) give torchvision's detections.

Both heads read P3-P7: ``model.neck: {name: fpn, extra_level: p6p7}`` on a backbone
giving ``c3``-``c5``.
"""

from __future__ import annotations

from detkit.hookspecs import Registrar, hookimpl
from detkit_dense_heads.anchors import AnchorGrid, octave_sizes
from detkit_dense_heads.detector import build_dense_detector
from detkit_dense_heads.fcos import FCOSHead, decode_distances, encode_distances, fcos_assign
from detkit_dense_heads.importer import SigmoidHeadImporter, fcos_resnet50_fpn, retinanet_resnet50_fpn
from detkit_dense_heads.retinanet import RetinaNetHead

__all__ = [
    "AnchorGrid",
    "FCOSHead",
    "RetinaNetHead",
    "SigmoidHeadImporter",
    "build_dense_detector",
    "decode_distances",
    "detkit_add_components",
    "encode_distances",
    "fcos_assign",
    "fcos_resnet50_fpn",
    "octave_sizes",
    "retinanet_resnet50_fpn",
]


@hookimpl
def detkit_add_components(registry: Registrar) -> None:
    registry.register("detector", "dense", build_dense_detector)
    registry.register("dense_head", "retinanet", RetinaNetHead)
    registry.register("dense_head", "fcos", FCOSHead)
    registry.register("importer", "retinanet_resnet50_fpn", retinanet_resnet50_fpn)
    registry.register("importer", "fcos_resnet50_fpn", fcos_resnet50_fpn)
