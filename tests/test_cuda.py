"""The same pipeline on a CUDA device (skipped without one)."""

import json

import pytest
import torch
import torchvision

from detkit.cli import main
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.importers import CONFIG_DIR, fasterrcnn_resnet50_fpn
from detkit.ops import roi_align
from detkit.plugins import load_plugins

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_roi_align_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 16, 16, generator=g)
    xy = torch.rand(300, 2, generator=g) * 40
    rois = torch.cat([torch.randint(0, 2, (300, 1), generator=g).float(), xy, xy + 8], dim=1)
    cpu = roi_align(features, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2)
    gpu = roi_align(features.cuda(), rois.cuda(), (7, 7), spatial_scale=0.25, sampling_ratio=2)
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-5)


def test_imported_faster_rcnn_matches_torchvision_on_cuda():
    torch.manual_seed(0)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0
    ).eval().cuda()
    config, names, state = fasterrcnn_resnet50_fpn().convert(tv.state_dict())
    config["model"]["postprocess"]["score_thresh"] = 0.0
    ours = build_detector(config, load_plugins().registry, num_classes=len(names)).eval().cuda()
    ours.load_state_dict(state)
    image = torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        a = tv([image])[0]
        b = ours([image])[0][0]
    assert len(a["boxes"]) == len(b)
    assert torch.allclose(a["boxes"], b.boxes, atol=0.01)
    assert torch.allclose(a["scores"], b.scores, atol=1e-4)


def test_train_step_on_cuda():
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml")
    model = build_detector(config, load_plugins().registry, num_classes=4).cuda().train()
    from detkit.structures import Targets

    images = [torch.rand(3, 128, 128, device="cuda") for _ in range(2)]
    targets = [Targets(boxes=torch.tensor([[10.0, 10, 60, 60]]), labels=torch.tensor([1])).to("cuda")] * 2
    _, losses = model(images, targets)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)


def test_train_and_detect_from_cli_on_cuda(tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    overrides = [f"data.train.root={data}", f"data.val.root={data}", "data.train.num_train=16",
                 "data.train.num_val=8", "data.val.num_train=16", "data.val.num_val=8", "train.max_iters=4",
                 "train.batch_size=4", f"output.dir={out}"]
    assert main(["-q", "train", str(CONFIG_DIR / "shapes_faster_rcnn.yaml"), *overrides, "--device", "cuda"]) == 0
    assert main(["-q", "detect", "--weights", str(out / "best.pt"), "--out", str(tmp_path / "det"),
                 "--device", "cuda", "--score-thresh", "0", str(data / "val")]) == 0
    assert isinstance(json.loads((tmp_path / "det" / "detections.json").read_text()), list)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_training_and_resume_on_cuda(tmp_path, precision):
    out, data = tmp_path / "run", tmp_path / "data"
    overrides = [f"data.train.root={data}", f"data.val.root={data}", "data.train.num_train=16",
                 "data.train.num_val=8", "data.val.num_train=16", "data.val.num_val=8", "train.max_iters=4",
                 "train.batch_size=4", f"train.precision={precision}", "train.ema=true", f"output.dir={out}"]
    assert main(["-q", "train", str(CONFIG_DIR / "shapes_faster_rcnn.yaml"), *overrides, "--device", "cuda"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in records if r["type"] == "train")  # finite, not NaN
    assert main(["-q", "train", "--resume", str(out), "train.max_iters=6"]) == 0
    state = torch.load(out / "last.pt", weights_only=True)["train_state"]
    assert state["iteration"] == 6 and ("scaler" in state) == (precision == "fp16")


def test_two_processes_with_nccl(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    out, data = tmp_path / "run", tmp_path / "data"
    overrides = [f"data.train.root={data}", f"data.val.root={data}", "data.train.num_train=16",
                 "data.train.num_val=8", "data.val.num_train=16", "data.val.num_val=8", "train.max_iters=4",
                 "train.batch_size=2", f"output.dir={out}", "train.sync_bn=true"]
    assert main(["-q", "train", str(CONFIG_DIR / "shapes_faster_rcnn.yaml"), *overrides, "--device", "cuda",
                 "--nproc", "2"]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["meta"]["world_size"] == 2
