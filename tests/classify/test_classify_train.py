"""`detkit classify train/eval/compare-linear`: a short real run on digits, tiny folder runs, config errors."""

import argparse
import json

import cv2
import numpy as np
import pytest
import torch

from detkit.classify.cli import add_commands
from detkit.classify.data import digits_split, prepare_image
from detkit.classify.train import (
    evaluate_classifier,
    load_classifier,
    load_classify_config,
    train_classifier,
)
from detkit.errors import CheckpointError, ConfigError
from detkit.importers import CONFIG_DIR
from detkit.lectures import optim

RECIPE = CONFIG_DIR / "classify_lenet_digits.yaml"


def run_cli(argv):
    """Parse and run like `detkit`, with the commands of detkit.classify.cli."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-q", "--quiet", action="store_true")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def png_std(path):
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, f"{path} is not a readable image"
    return float(image.std())


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The recipe cut to 16x16 images, 2 epochs, no augmentation (the full recipe is not run in tests)."""
    out = tmp_path_factory.mktemp("lenet_digits")
    overrides = ["data.image_size=16", "data.augment=[]", "train.epochs=2", "train.lr=5e-3", "train.device=cpu"]
    assert run_cli(["-q", "classify", "train", str(RECIPE), *overrides, "--out", str(out)]) == 0
    return out


def test_short_digits_run_writes_outputs_and_learns(digits_run, capsys):
    for name in ("best.pt", "last.pt", "metrics.json", "metrics.jsonl", "curves.png", "config.yaml"):
        assert (digits_run / name).is_file(), name
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8
    assert sorted(metrics["per_class"]) == [str(k) for k in range(10)]
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 450
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / 450)
    records = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "train_acc", "test_acc", "lr", "seconds"} <= set(records[0])
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert png_std(digits_run / "curves.png") > 10


def test_checkpoint_rebuilds_the_model_and_reproduces_metrics(digits_run):
    loaded = load_classifier(digits_run / "best.pt")
    assert loaded.class_names == [str(k) for k in range(10)]
    assert loaded.config["model"]["backbone"]["input_size"] == 16  # filled from data.image_size
    test = digits_split(image_size=16)[1]
    metrics = evaluate_classifier(loaded.model, test)
    saved = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])
    # oracle: plain argmax over the logits
    with torch.no_grad():
        acc = (loaded.model(test.images).argmax(1) == test.labels).double().mean().item()
    assert acc == pytest.approx(saved["accuracy"])


def test_eval_cli_on_digits_and_on_a_folder(digits_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run_cli(["classify", "eval", "--weights", str(digits_run / "best.pt"), "--data", "digits",
                    "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((digits_run / "metrics.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])
    assert "accuracy" in printed and "\n9 " in printed  # per-class table rows

    # a folder with two of the ten classes, written as 8x8 PNGs
    _, test = digits_split()
    folder = tmp_path / "folder"
    chosen = [i for i in range(len(test)) if int(test.labels[i]) in (3, 7)][:12]
    for i in chosen:
        (folder / str(int(test.labels[i]))).mkdir(parents=True, exist_ok=True)
        gray = np.rint(test.images[i, 0].numpy() * 255).astype(np.uint8)
        assert cv2.imwrite(str(folder / str(int(test.labels[i])) / f"{i}.png"), gray)
    out2 = tmp_path / "eval2"
    assert run_cli(["classify", "eval", "--weights", str(digits_run / "best.pt"), "--data", str(folder),
                    "--out", str(out2)]) == 0
    metrics = json.loads((out2 / "metrics.json").read_text())
    assert metrics["num_images"] == len(chosen)
    loaded = load_classifier(digits_run / "best.pt")
    files = sorted(folder.glob("*/*.png"))
    images = torch.stack([prepare_image(cv2.imread(str(f))[:, :, ::-1].copy(), channels=1, size=16) for f in files])
    labels = torch.tensor([int(f.parent.name) for f in files])
    with torch.no_grad():
        expected = (loaded.model(images).argmax(1) == labels).double().mean().item()
    assert metrics["accuracy"] == pytest.approx(expected)
    assert metrics["per_class"]["3"] is not None and metrics["per_class"]["0"] is None


def _tiny_folder(root, n=6):
    gen = torch.Generator().manual_seed(0)
    for label, name in enumerate(["dark", "light"]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            base = 60 + 120 * label
            noise = torch.randint(-30, 30, (16, 16, 3), generator=gen)
            image = (base + noise).clamp(0, 255).to(torch.uint8).numpy()
            assert cv2.imwrite(str(root / name / f"{i}.png"), image)
    return root


@pytest.mark.parametrize(
    ("optimizer", "schedule"),
    [("sgd", "step"), ("momentum", "exponential"), ("nesterov", "cosine"), ("adagrad", "none"),
     ("rmsprop", "step"), ("adam", "cosine")],
)
def test_every_optimizer_and_schedule_on_an_rgb_folder(tmp_path, optimizer, schedule):
    root = _tiny_folder(tmp_path / "data")
    config = load_classify_config(None, [
        "data.name=folder", f"data.root={root}", "data.channels=3", "data.image_size=16", "data.test_size=0.34",
        "data.augment=[crop, hflip, color_jitter, pca_lighting]", f"train.optimizer={optimizer}",
        f"train.schedule={schedule}", "train.step_size=1", "train.gamma=0.5", "train.epochs=2", "train.lr=0.01",
        "train.batch_size=4", "train.weight_decay=1e-4", "train.device=cpu", f"output.dir={tmp_path / 'run'}",
    ])
    summary = train_classifier(config, progress=False)
    lrs = [r["lr"] for r in summary.records]
    expected_second = {"step": 0.005, "exponential": 0.005, "none": 0.01}
    assert lrs[0] == pytest.approx(0.01)
    if schedule in expected_second:
        assert lrs[1] == pytest.approx(expected_second[schedule])
    else:  # cosine steps per iteration: 2 epochs of 2 batches, halfway after the first epoch
        assert lrs[1] == pytest.approx(0.005)
    loaded = load_classifier(tmp_path / "run" / "best.pt")
    assert loaded.class_names == ["dark", "light"]
    assert len(loaded.config["model"]["pixel_mean"]) == 3


def test_config_uses_the_lectures_optimizers():
    config = load_classify_config(RECIPE)
    assert config["train"]["optimizer"] in optim.OPTIMIZERS
    assert config["model"]["backbone"]["name"] == "lenet5"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=0.1", "did you mean 'lr'"),
        ("data.augmnet=[crop]", "did you mean 'augment'"),
        ("data.augment=[flip]", "did you mean 'hflip'"),
        ("train.optimizer=adma", "did you mean 'adam'"),
        ("train.schedule=cosin", "did you mean 'cosine'"),
        ("data.augment=[color_jitter]", "data.channels=3"),
        ("data.name=folder", "data.root"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_classify_config(RECIPE, [override])


def test_config_base_and_unknown_keys_in_files(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {RECIPE}\ntrain: {{epochs: 3}}\n")
    config = load_classify_config(child)
    assert config["train"]["epochs"] == 3 and config["train"]["optimizer"] == "adam"
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*did you mean 'model'"):
        load_classify_config(bad)


def test_unknown_backbone_argument_is_a_config_error(tmp_path):
    config = load_classify_config(RECIPE, ["model.backbone.activaton=tanh", "train.epochs=1",
                                           f"output.dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"model\.backbone.*activaton.*did you mean .activation."):
        train_classifier(config, progress=False)


def test_eval_refuses_a_detector_checkpoint(tmp_path):
    from detkit.engine.checkpoint import save_checkpoint

    path = tmp_path / "det.pt"
    save_checkpoint(path, model=torch.nn.Linear(2, 2), config={"model": {"type": "two_stage"}}, class_names=["a"])
    with pytest.raises(CheckpointError, match="not a classifier"):
        run_cli(["classify", "eval", "--weights", str(path)])


def test_compare_linear_calls_the_comparison(monkeypatch, tmp_path):
    calls = []
    import detkit.classify.compare as compare

    monkeypatch.setattr(compare, "main_compare_linear", lambda out_json=None: calls.append(out_json) or 0)
    assert run_cli(["classify", "compare-linear", "--out", str(tmp_path / "c.json")]) == 0
    assert calls == [str(tmp_path / "c.json")]
