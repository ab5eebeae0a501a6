"""Mask R-CNN end to end: torchvision parity of an imported model, and a small model trained on shapes.

Parity: torchvision's maskrcnn_resnet50_fpn with random weights (fixed seed), saved,
converted with `detkit import-torchvision`, run with `detkit detect` on a real photo;
detections match and every mask (binarized at 0.5) overlaps torchvision's with IoU >= 0.99.
"""

import json

import numpy as np
import torch
import torchvision
from pycocotools import mask as mask_utils

from detkit.cli import main
from detkit.data.images import image_to_tensor, read_image
from detkit.importers import CONFIG_DIR


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of (D, H, W) bool masks per detection; 1 where both are empty."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def test_import_and_detect_match_torchvision_masks(shared_data, tmp_path):
    folder = shared_data("tiny_coco") / "val2017"
    photo = sorted(folder.glob("*.jpg"))[0]
    torch.manual_seed(0)
    tv_model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0
    ).eval()
    tv_file = tmp_path / "maskrcnn.pth"
    torch.save(tv_model.state_dict(), tv_file)
    ckpt = tmp_path / "detkit.pt"
    assert main(["import-torchvision", "maskrcnn_resnet50_fpn", str(tv_file), str(ckpt)]) == 0
    override = tmp_path / "thresh.yaml"
    override.write_text("model:\n  postprocess: {score_thresh: 0.0}\n")
    out = tmp_path / "out"
    assert main(["-q", "detect", "--weights", str(ckpt), "--config", str(override), "--out", str(out),
                 "--score-thresh", "0", "--device", "cpu", str(photo)]) == 0
    ours = json.loads((out / "detections.json").read_text())

    with torch.no_grad():
        theirs = tv_model([image_to_tensor(read_image(photo))])[0]
    assert len(ours) == len(theirs["boxes"]) == 100
    names = {i + 1: n for i, n in enumerate(torch.load(ckpt, weights_only=True)["class_names"])}
    assert [r["category"] for r in ours] == [names[int(k)] for k in theirs["labels"]]
    boxes = torch.tensor([r["bbox"] for r in ours])
    tv_xywh = torchvision.ops.box_convert(theirs["boxes"], "xyxy", "xywh")
    assert torch.allclose(boxes, tv_xywh, atol=0.01)
    assert torch.allclose(torch.tensor([r["score"] for r in ours]), theirs["scores"], atol=1e-4)

    rles = [{"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()} for r in ours]
    our_masks = torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))).bool()
    tv_masks = theirs["masks"][:, 0] >= 0.5
    assert our_masks.shape == tv_masks.shape
    assert tv_masks.flatten(1).any(1).sum() > 50  # the comparison is not between empty masks
    iou = _mask_iou(our_masks, tv_masks)
    assert bool((iou >= 0.99).all()), f"lowest mask IoU {iou.min():.4f}"


def test_small_mask_rcnn_trains_on_shapes_and_detect_writes_rle(tmp_path):
    out = tmp_path / "run"
    data = tmp_path / "data"
    overrides = [
        "model.mask_head={name: mask_rcnn, conv_channels: 32}",
        f"data.train.root={data}", f"data.val.root={data}", "data.train.num_train=16", "data.train.num_val=8",
        "data.val.num_train=16", "data.val.num_val=8", "data.train.masks=true", "data.val.masks=true",
        "train.max_iters=3", "train.batch_size=4", "train.warmup_iters=1", "train.log_period=1",
        f"output.dir={out}",
    ]
    assert main(["-q", "train", str(CONFIG_DIR / "shapes_faster_rcnn.yaml"), *overrides, "--device", "cpu"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert train and all(np.isfinite(r["loss_roi_mask"]) and r["loss_roi_mask"] > 0 for r in train)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "segm" in metrics and "AP" in metrics["segm"]

    assert main(["-q", "detect", "--weights", str(out / "last.pt"), "--out", str(tmp_path / "det"),
                 "--score-thresh", "0", str(data / "val")]) == 0
    dets = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert dets and all("segmentation" in r for r in dets)
    first = dets[0]["segmentation"]
    assert first["size"] == [128, 128] and isinstance(first["counts"], str)
    decoded = mask_utils.decode({"size": first["size"], "counts": first["counts"].encode()})
    assert decoded.shape == (128, 128)
