"""Checkpoint save/load round trip and the errors of every kind of bad file."""

from __future__ import annotations

import argparse
import datetime as dt
import os

import numpy as np
import pytest
import torch
from torch import nn

import detkit
from detkit.engine import load_checkpoint, load_state, save_checkpoint
from detkit.errors import CheckpointError

CONFIG = {"model": {"num_classes": 2, "class_names": None}, "train": {"lr": 0.02, "steps": [0.5]}}


def small_model(out: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, out))


def test_round_trip_restores_everything(tmp_path):
    model = small_model()
    model(torch.randn(5, 3))  # non-trivial batch-norm buffers
    meta = {"iteration": 120, "epoch": 3, "metrics": {"bbox": {"AP": np.float64(0.25)}}}
    path = save_checkpoint(
        tmp_path / "sub" / "best.pt",
        model=model,
        config=CONFIG,
        class_names=("cat", "dog"),
        meta=meta,
    )
    ckpt = load_checkpoint(path)

    assert ckpt["format"] == "detkit-checkpoint" and ckpt["format_version"] == 1
    assert ckpt["config"] == CONFIG
    assert ckpt["class_names"] == ["cat", "dog"]
    state = model.state_dict()
    assert ckpt["model"].keys() == state.keys()
    assert all(torch.equal(ckpt["model"][k], v) for k, v in state.items())
    m = ckpt["meta"]
    assert (m["iteration"], m["epoch"]) == (120, 3)
    assert m["metrics"] == {"bbox": {"AP": 0.25}} and type(m["metrics"]["bbox"]["AP"]) is float
    assert m["detkit_version"] == detkit.__version__
    assert m["torch_version"] == torch.__version__.split("+")[0]
    assert dt.datetime.fromisoformat(m["created"]).tzinfo is not None

    fresh = small_model()
    load_state(fresh, ckpt["model"], path=path)
    x = torch.randn(4, 3)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    assert os.listdir(path.parent) == ["best.pt"]  # atomic: no temp file left


def test_checkpoint_loads_with_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", model=small_model(), config=CONFIG, class_names=["a"])
    raw = torch.load(path, weights_only=True)
    assert raw["meta"]["iteration"] is None and raw["meta"]["metrics"] == {}


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("kind", ["random", "empty", "text", "truncated"])
def test_corrupt_files(tmp_path, kind):
    path = tmp_path / "bad.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("model: resnet50\n")
    else:
        good = save_checkpoint(
            tmp_path / "good.pt", model=small_model(), config=CONFIG, class_names=["a"]
        )
        path.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        load_checkpoint(path)


def test_raw_state_dict_suggests_conversion(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(small_model().state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"raw state dict.*detkit import-torchvision NAME IN OUT"
    ):
        load_checkpoint(path)


def test_foreign_checkpoints_are_refused(tmp_path):
    pickled = tmp_path / "reference.pth"  # like torchvision's reference scripts: args is an object
    torch.save({"model": small_model().state_dict(), "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(CheckpointError, match="not a detkit checkpoint"):
        load_checkpoint(pickled)
    plain = tmp_path / "other.pt"
    torch.save({"weights": small_model().state_dict(), "step": 3}, plain)
    with pytest.raises(CheckpointError, match=r"not a detkit checkpoint.*'weights', 'step'"):
        load_checkpoint(plain)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="holding a Tensor"):
        load_checkpoint(tensor)


def test_newer_format_and_damaged_entries(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", model=small_model(), config=CONFIG, class_names=["a"])
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "format_version": 2}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="upgrade detkit"):
        load_checkpoint(tmp_path / "new.pt")
    torch.save({k: v for k, v in ckpt.items() if k != "model"}, tmp_path / "nomodel.pt")
    with pytest.raises(CheckpointError, match="'model'"):
        load_checkpoint(tmp_path / "nomodel.pt")


def test_load_state_lists_missing_unexpected_and_mismatched_keys():
    source = small_model(out=2).state_dict()
    target = small_model(out=3)
    source["extra.weight"] = torch.zeros(1)
    del source["0.bias"]
    with pytest.raises(CheckpointError) as info:
        load_state(target, source, path="x.pt")
    msg = str(info.value)
    assert "'x.pt'" in msg
    assert "1 missing key(s): 0.bias" in msg
    assert "1 unexpected key(s): extra.weight" in msg
    assert "2.weight (checkpoint (2, 4), model (3, 4))" in msg
    assert "2.bias (checkpoint (2,), model (3,))" in msg


def test_load_state_truncates_long_listings():
    wide = nn.ModuleList([nn.Linear(1, 1) for _ in range(15)])  # 30 keys
    with pytest.raises(CheckpointError, match=r"30 missing key\(s\): .* and 20 more"):
        load_state(wide, {}, path="y.pt")


def test_save_refuses_values_that_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match=r"config\.bad"):
        save_checkpoint(
            tmp_path / "a.pt", model=small_model(), config={"bad": object()}, class_names=[]
        )
    assert not (tmp_path / "a.pt").exists()


@pytest.mark.parametrize("kind", ["random", "empty", "text", "truncated"])
def test_corrupt_file_error_is_one_short_line(tmp_path, kind):
    path = tmp_path / "bad.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("model: resnet50\n")
    else:
        good = save_checkpoint(tmp_path / "good.pt", model=small_model(), config=CONFIG, class_names=["a"])
        path.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    # torch's paragraphs (weights_only advice, miniz internals) stay out of the message
    assert "\n" not in message and len(message.replace(str(path), "")) < 170, message
    assert "weights_only" not in message.lower() and "miniz" not in message.lower()
    assert str(path) in message and "again" in message
    assert ("incomplete" in message) == (kind == "truncated")
