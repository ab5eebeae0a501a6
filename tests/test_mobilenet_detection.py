"""Parity: torchvision's MobileNetV3-Large FPN Faster R-CNNs imported into detkit give the same detections.

``fasterrcnn_mobilenet_v3_large_fpn`` and ``fasterrcnn_mobilenet_v3_large_320_fpn`` are
built with seeded random weights, saved, converted with ``detkit import-torchvision``
and run with ``detkit detect`` on a real photo and in Python on a synthetic non-square
image. Their FPN reads two maps of one stride (``c5_entry`` and ``c5``), which the
equal-stride naming of the FPN and of ``check_feature_maps`` are also tested for here.

torchvision's random initialization of MobileNetV3 lets the activations vanish (its
fan-out init of the depthwise convolutions ignores their groups), so every map is
nearly zero and every score ties; the backbone's convolutions are redrawn with a
fan-in init, so that the maps carry the image and the detections have distinct
scores. Batch-norm scales and variances are drawn too, so that a wrong epsilon shows.
"""

from __future__ import annotations

import cv2
import pytest
import torch
import torchvision
from _parity import assert_json_detections_equal, detect_photo, import_torchvision, real_photo
from torch import nn

from detkit import ConfigError
from detkit.backbones import FPN
from detkit.data.images import image_to_tensor, read_image
from detkit.detectors import check_feature_maps

MODELS = ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn"]


@pytest.fixture(scope="module", params=MODELS)
def torchvision_model_file(request, tmp_path_factory):
    name = request.param
    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, box_score_thresh=0.0)
    with torch.no_grad():
        for m in model.backbone.body.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("tv") / f"{name}.pth"
    torch.save(model.eval().state_dict(), path)
    return name, model, path


def test_import_and_detect_match_torchvision(torchvision_model_file, shared_data, tmp_path):
    name, tv_model, tv_file = torchvision_model_file
    photo = real_photo(shared_data, tmp_path)
    ckpt = import_torchvision(name, tv_file, tmp_path / "detkit.pt")
    ours = detect_photo(ckpt, photo, tmp_path / "out", score_thresh=0.0)

    with torch.no_grad():
        theirs = tv_model([image_to_tensor(read_image(photo))])[0]
    assert len(ours) == 100
    assert_json_detections_equal(ours, theirs, ckpt)


def test_imported_model_matches_in_python(torchvision_model_file, tmp_path):
    """Same comparison without rounding, on a synthetic image with a non-square size."""
    from detkit.engine.build import load_model

    name, tv_model, tv_file = torchvision_model_file
    ckpt = import_torchvision(name, tv_file, tmp_path / "detkit.pt")
    loaded, _ = load_model(ckpt, overrides=["model.postprocess.score_thresh=0.0"])
    assert loaded.model.neck.out_strides == {"p5_entry": 32, "p5": 32, "p6": 64}
    rng = torch.Generator().manual_seed(1)
    image = torch.rand(3, 300, 451, generator=rng)
    image = torch.from_numpy(cv2.GaussianBlur(image.permute(1, 2, 0).numpy(), (9, 9), 3)).permute(2, 0, 1)
    with torch.no_grad():
        ours = loaded.model([image])[0][0]
        theirs = tv_model([image])[0]
    assert len(ours) == len(theirs["boxes"]) == 100
    assert torch.allclose(ours.boxes, theirs["boxes"], atol=0.01)  # folded batch norms: float rounding
    assert torch.allclose(ours.scores, theirs["scores"], atol=1e-4)
    assert torch.equal(ours.labels + 1, theirs["labels"])


# -- maps of one stride ------------------------------------------------------------------------


class _Maps:
    def __init__(self, channels: dict, strides: dict) -> None:
        self.out_channels, self.out_strides = channels, strides


def test_maps_may_share_a_stride_but_not_come_coarser_first():
    check_feature_maps(_Maps({"c5_entry": 8, "c5": 8}, {"c5_entry": 32, "c5": 32}), "model.backbone")
    check_feature_maps(_Maps({"c4": 8, "c5_entry": 8, "c5": 8}, {"c4": 16, "c5_entry": 16, "c5": 16}), "model.backbone")
    with pytest.raises(ConfigError, match=r"finest first .* c5 \(stride 32\), c4 \(stride 16\)"):
        check_feature_maps(_Maps({"c5": 8, "c4": 8}, {"c5": 32, "c4": 16}), "model.backbone")


def test_fpn_names_maps_inside_a_stage_apart():
    fpn = FPN(in_channels={"c5_entry": 16, "c5": 24}, in_strides={"c5_entry": 32, "c5": 32}, out_channels=8)
    assert fpn.out_strides == {"p5_entry": 32, "p5": 32, "p6": 64}
    # the usual names are unchanged
    assert list(FPN(in_channels={"c3": 4, "c4": 4}, in_strides={"c3": 8, "c4": 16}).out_strides) == ["p3", "p4", "p5"]
    assert list(FPN(in_channels={"fc7": 4}, in_strides={"fc7": 16}).out_strides) == ["p4", "p5"]
    with pytest.raises(ValueError, match=r"inputs of one stride need names cK_NAME"):
        FPN(in_channels={"a": 4, "b": 4}, in_strides={"a": 32, "b": 32})
    with torch.no_grad():
        maps = fpn(_feature_maps({"c5_entry": torch.rand(1, 16, 3, 4), "c5": torch.rand(1, 24, 3, 4)}))
    assert [tuple(maps[k].shape) for k in maps.names()] == [(1, 8, 3, 4), (1, 8, 3, 4), (1, 8, 2, 2)]


def _feature_maps(maps: dict):
    from detkit.structures import FeatureMaps

    return FeatureMaps(maps, dict.fromkeys(maps, 32))
