"""Helpers of the torchvision parity tests: a real photo, `detkit detect` on it, comparisons, losses.

The parity tests build a torchvision detector with seeded random weights, import its
file with ``detkit import-torchvision`` and compare detkit's detections (on a photo of
tiny_coco through the CLI, and on a smooth synthetic image in Python) and training
losses with torchvision's. Shared by test_torchvision_parity.py,
test_mobilenet_detection.py, test_ssd.py, test_ssdlite.py and, through _dense_heads.py,
test_retinanet.py and test_fcos.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from detkit.cli import main
from detkit.structures import Targets


def real_photo(shared_data: Any, tmp_path: Path) -> Path:
    """A copy of tiny_coco's first validation photo in ``tmp_path/in`` (a folder of its own)."""
    source = sorted((shared_data("tiny_coco") / "val2017").glob("*.jpg"))[0]
    photo = tmp_path / "in" / source.name
    photo.parent.mkdir()
    photo.write_bytes(source.read_bytes())
    return photo


def import_torchvision(name: str, tv_file: Path, ckpt: Path) -> Path:
    """``detkit import-torchvision name tv_file ckpt``, which must succeed; returns ``ckpt``."""
    assert main(["-q", "import-torchvision", name, str(tv_file), str(ckpt)]) == 0
    return ckpt


def detect_photo(ckpt: Path, photo: Path, out: Path, *, score_thresh: float, draw: bool = False) -> list[dict]:
    """``detkit detect`` of ``photo`` on the CPU into ``out`` with the model's ``score_thresh``; its detections.json."""
    override = out.parent / "thresh.yaml"
    override.write_text(f"model:\n  postprocess: {{score_thresh: {score_thresh}}}\n")
    args = ["-q", "detect", "--weights", str(ckpt), "--config", str(override), "--out", str(out),
            "--score-thresh", "0", "--device", "cpu", *([] if draw else ["--no-draw"]), str(photo)]
    assert main(args) == 0
    return json.loads((out / "detections.json").read_text())


def assert_json_detections_equal(ours: list[dict], theirs: dict, ckpt: Path) -> None:
    """detections.json rows equal torchvision's detections one for one, in order, up to the file's rounding.

    The category names are those of the checkpoint's classes (torchvision's label - 1);
    detections.json rounds boxes (xywh) to 0.01 px and scores to 1e-5.
    """
    assert len(ours) == len(theirs["boxes"])
    names = {i + 1: n for i, n in enumerate(torch.load(ckpt, weights_only=True)["class_names"])}
    assert [r["category"] for r in ours] == [names[int(k)] for k in theirs["labels"]]
    boxes = torch.tensor([r["bbox"] for r in ours]).reshape(-1, 4)
    assert torch.allclose(boxes, torchvision.ops.box_convert(theirs["boxes"], "xyxy", "xywh"), atol=0.01)
    assert torch.allclose(torch.tensor([r["score"] for r in ours]), theirs["scores"], atol=1e-4)


def cutting_threshold(tv_model: Any, image: torch.Tensor) -> tuple[float, dict]:
    """A score threshold mid-way down torchvision's scores of ``image`` (random weights: every score is low),
    rounded to 0.001, and its detections at that threshold, fewer than all but some.

    The model's threshold is 0 before and after.
    """
    tv_model.eval().score_thresh = 0.0
    with torch.no_grad():
        unthresholded = tv_model([image])[0]
        thresh = round(float(unthresholded["scores"][len(unthresholded["scores"]) // 2]), 3)
        tv_model.score_thresh = thresh
        try:
            theirs = tv_model([image])[0]
        finally:
            tv_model.score_thresh = 0.0
    assert 0 < len(theirs["boxes"]) < len(unthresholded["boxes"])
    return thresh, theirs


def blurred_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A smooth random ``(3, H, W)`` image (noise, then a 9x9 box blur)."""
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))
    return nn.functional.avg_pool2d(image, 9, stride=1, padding=4)[0]


def training_losses(
    tv_model: nn.Module,
    ours: nn.Module,
    boxes: list[torch.Tensor],
    labels: list[torch.Tensor],
    *,
    frozen_bn: bool = False,
) -> tuple[dict, dict]:
    """Both models' training losses on two blurred images (240 x 351, 300 x 200) with these objects.

    ``labels`` are detkit's (torchvision's are one more). ``frozen_bn`` keeps torchvision's
    batch norms in eval mode (for a detkit trunk with frozen norms). Both models are left
    in eval mode.
    """
    images = [blurred_image(240, 351, seed=2), blurred_image(300, 200, seed=3)]
    tv_model.train()
    if frozen_bn:
        for module in tv_model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
    ours.train()
    try:
        with torch.no_grad():
            theirs = tv_model(images, [{"boxes": b, "labels": lab + 1} for b, lab in zip(boxes, labels)])
            _, mine = ours(images, [Targets(boxes=b, labels=lab) for b, lab in zip(boxes, labels)])
    finally:
        tv_model.eval()
        ours.eval()
    return theirs, mine
