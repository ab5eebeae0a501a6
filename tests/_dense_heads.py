"""Helpers of tests/test_retinanet.py and tests/test_fcos.py: torchvision twins and comparisons (on tests/_parity.py).

torchvision's COCO RetinaNet and FCOS score 91 label slots; slot 0 is the background of its
label list, never a training target, which detkit's import drops. A trained model never
scores it; a random one does, so :func:`torchvision_model` silences it (zero weights,
bias -1000: probability 0) to stand for a trained model. It also scales the class logits'
weights: random weights give near-uniform scores whose near-ties (1e-8 apart) would swap
places between any two implementations' float rounding.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from _parity import blurred_image, detect_photo, import_torchvision, training_losses
from torch import nn

from detkit.data.images import image_to_tensor, read_image
from detkit.engine.build import load_model

#: The smaller resize of the in-Python comparisons (the recipes' 800 px cost ~4 s per ResNet-50 image).
SMALL = ["model.preprocess.min_size=320", "model.preprocess.max_size=640"]


def torchvision_model(name: str, tmp_path: Path, *, logit_scale: float) -> tuple[nn.Module, Path]:
    """torchvision's ``name`` with seeded random weights (slot 0 silenced, class logits scaled), and its file."""
    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, score_thresh=0.0)
    with torch.no_grad():
        classifier = model.head.classification_head.cls_logits
        classifier.weight.mul_(logit_scale)
        for anchor in range(classifier.out_channels // 91):
            classifier.weight[anchor * 91].zero_()
            classifier.bias[anchor * 91] = -1000.0
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def imported(name: str, tv_file: Path, tmp_path: Path, overrides: list[str]) -> tuple[nn.Module, Path]:
    """``detkit import-torchvision name`` of the file, loaded with ``overrides``; the model and checkpoint."""
    ckpt = import_torchvision(name, tv_file, tmp_path / f"{name}.pt")
    return load_model(ckpt, overrides=overrides)[0].model.eval(), ckpt


def resize_small(tv_model: nn.Module) -> None:
    """Give torchvision's model the resize of :data:`SMALL`."""
    tv_model.transform.min_size, tv_model.transform.max_size = (320,), 640


def assert_same_detections(
    boxes: torch.Tensor, scores: torch.Tensor, labels: list[int], theirs: dict, *, box_atol: float, score_atol: float
) -> None:
    """detkit's detections (torchvision's labels) equal torchvision's as a multiset, each within tolerance.

    Detections whose scores tie to float rounding (1e-8 apart) may trade places between
    any two implementations, so every detection of ours is paired with an unused one of
    theirs of the same label, box and score; both lists are in decreasing score order.
    """
    assert len(boxes) == len(scores) == len(labels) == len(theirs["boxes"])
    assert bool((scores[:-1] >= scores[1:]).all())
    unused = list(range(len(labels)))
    for box, score, label in zip(boxes, scores, labels):
        partner = next(
            (j for j in unused
             if int(theirs["labels"][j]) == label
             and abs(float(theirs["scores"][j]) - float(score)) <= score_atol
             and float((theirs["boxes"][j] - box).abs().max()) <= box_atol),
            None,
        )
        assert partner is not None, f"no torchvision detection like {label} {score} {box.tolist()}"
        unused.remove(partner)


def cli_detect_matches_torchvision(
    name: str, tv_model: nn.Module, tv_file: Path, photo: Path, tmp_path: Path, *, score_thresh: float
) -> int:
    """``import-torchvision`` then ``detect`` on ``photo`` at ``score_thresh``, compared with torchvision at the
    same threshold; returns the number of detections."""
    ckpt = import_torchvision(name, tv_file, tmp_path / "detkit.pt")
    ours = detect_photo(ckpt, photo, tmp_path / "out", score_thresh=score_thresh)
    tv_model.eval().score_thresh = score_thresh
    with torch.no_grad():
        theirs = tv_model([image_to_tensor(read_image(photo))])[0]
    assert len(ours) == len(theirs["boxes"])
    label_of = {n: i + 1 for i, n in enumerate(torch.load(ckpt, weights_only=True)["class_names"])}
    # detections.json gives xywh boxes rounded to 0.01 px and scores rounded to 1e-5
    theirs_xywh = {**theirs, "boxes": torchvision.ops.box_convert(theirs["boxes"], "xyxy", "xywh")}
    assert_same_detections(
        torch.tensor([r["bbox"] for r in ours]).reshape(-1, 4), torch.tensor([r["score"] for r in ours]),
        [label_of[r["category"]] for r in ours], theirs_xywh, box_atol=0.01, score_atol=1e-4,
    )
    return len(ours)


def assert_python_detections_match(
    name: str, tv_model: nn.Module, tv_file: Path, tmp_path: Path, *, count: int
) -> None:
    """The imported model at the small resize and threshold 0 gives torchvision's ``count`` detections of a
    non-square image, without rounding."""
    ours, _ = imported(name, tv_file, tmp_path, [*SMALL, "model.postprocess.score_thresh=0.0"])
    resize_small(tv_model)
    tv_model.score_thresh = 0.0
    image = blurred_image(240, 351, seed=1)
    with torch.no_grad():
        mine = ours([image])[0][0]
        theirs = tv_model([image])[0]
    assert len(mine) == count
    assert_same_detections(mine.boxes, mine.scores, (mine.labels + 1).tolist(), theirs, box_atol=1e-3, score_atol=1e-5)


def imported_training_losses(name: str, tv_model: nn.Module, tv_file: Path, tmp_path: Path) -> tuple[dict, dict]:
    """torchvision's and the imported model's training losses at the small resize on the same two images and
    objects (torchvision's BatchNorm frozen, as detkit's ResNet's)."""
    ours, _ = imported(name, tv_file, tmp_path, SMALL)
    resize_small(tv_model)
    boxes = [
        torch.tensor([[10.0, 20.0, 200.0, 180.0], [150.0, 5.0, 340.0, 90.0], [20.0, 30.0, 60.0, 50.0]]),
        torch.tensor([[30.0, 40.0, 90.0, 250.0]]),
    ]
    labels = [torch.tensor([0, 16, 5]), torch.tensor([61])]  # detkit labels; torchvision's are + 1
    return training_losses(tv_model, ours, boxes, labels, frozen_bn=True)
