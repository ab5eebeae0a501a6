"""Lecture 12 visualisations: oracles for saliency and occlusion, and `detkit explain` end to end."""

import argparse

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detkit.classify.train import build_classifier, load_classify_config, save_classifier
from detkit.config import load_config
from detkit.detectors import build_detector
from detkit.engine.checkpoint import save_checkpoint
from detkit.errors import DetkitError
from detkit.explain.cli import add_commands
from detkit.explain.features import default_layer, first_conv, nearest_neighbors, penultimate_features
from detkit.explain.figures import CLASSIFIER_METHODS, DETECTOR_METHODS
from detkit.explain.saliency import (
    ClassScore,
    DetectionScore,
    class_model_visualization,
    deep_dream,
    detector_forward,
    layer_output,
    occlusion_map,
    saliency_map,
)
from detkit.importers import CONFIG_DIR
from detkit.plugins import load_plugins

SHAPES = ["circle", "square", "triangle", "ellipse"]
#: A drawn figure, not a blank canvas: grayscale pixel standard deviation above this.
MIN_STD = 10.0


def run_cli(argv):
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


def linear_model(channels, size, classes, weight=None):
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes))
    if weight is not None:
        with torch.no_grad():
            model[1].weight.copy_(weight)
            model[1].bias.zero_()
    return model.eval()


# ----------------------------------------------------------------------------- oracles


def test_saliency_of_a_linear_model_is_the_abs_weights_of_the_class():
    torch.manual_seed(0)
    model = linear_model(2, 5, 3)
    weight = model[1].weight.detach()
    for _ in range(2):  # whatever the image
        image = torch.rand(2, 5, 5)
        saliency = saliency_map(ClassScore(model, 1), image)
        expected = weight[1].reshape(2, 5, 5).abs().amax(0)  # max over channels of |W_k|
        torch.testing.assert_close(saliency, expected)


@pytest.mark.parametrize(("patch", "stride"), [(1, 1), (2, 2)])
def test_occlusion_on_a_model_that_sees_one_region_lights_up_exactly_that_region(patch, stride):
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:4, 4:6] = True
    weight = torch.zeros(2, 64)
    weight[0, region.flatten()] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    model = linear_model(1, 8, 2, weight)
    image = torch.ones(1, 8, 8)
    heat = occlusion_map(ClassScore(model, 0), image, patch=patch, stride=stride, fill=0.5)
    assert torch.equal(heat != 0, region)
    if patch == 1:  # hand-computed: hiding pixel p drops the score by w_p * (1 - 0.5)
        torch.testing.assert_close(heat[region], torch.tensor([0.5, 1.0, 1.5, 2.0]))
    else:  # one 2x2 patch covers the whole region: every pixel gets the whole drop
        torch.testing.assert_close(heat[region], torch.full((4,), 5.0))


def test_occlusion_patches_cover_the_border_when_the_stride_does_not_divide():
    score = lambda x: x[:, :, 6:, 6:].sum((1, 2, 3))  # noqa: E731 - looks only at the bottom-right corner
    heat = occlusion_map(score, torch.ones(1, 7, 7), patch=3, stride=3, fill=0.0)
    assert heat[6, 6] > 0 and heat[:4, :4].abs().sum() == 0


def test_layer_output_stops_the_forward_pass_after_the_layer():
    class Boom(nn.Module):
        def forward(self, x):
            raise AssertionError("the pass should have stopped before this layer")

    conv = nn.Conv2d(1, 4, 3)
    model = nn.Sequential(conv, nn.ReLU(inplace=True), Boom())
    out = layer_output(model, conv, torch.rand(2, 1, 6, 6))
    assert out.shape == (2, 4, 4, 4) and (out < 0).any()  # taken before the in-place ReLU


def test_class_model_of_a_linear_model_follows_the_sign_of_its_weights():
    torch.manual_seed(0)
    weight = torch.randn(2, 36)
    model = linear_model(1, 6, 2, weight)
    images = class_model_visualization(model, [0], (1, 6, 6), neutral=0.5, steps=150, lr=0.02, l2_reg=0.5, jitter=0)
    # optimum of w.x - l2 ||x - 0.5||^2: x = clip(0.5 + w / (2 l2)) - brighter where w > 0, darker where w < 0
    x = images[0, 0].flatten()
    strong = weight[0].abs() > 0.1
    assert torch.all(torch.sign(x - 0.5)[strong] == torch.sign(weight[0])[strong])
    expected = (0.5 + weight[0] / (2 * 0.5)).clamp(0, 1)
    assert (x - expected).abs().max() < 0.1


def test_deep_dream_amplifies_the_layer_and_stays_in_range():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    image = torch.rand(1, 12, 12) * 0.5 + 0.25
    dream = deep_dream(model, conv, image, steps=5, lr=0.02, jitter=1)
    energy = lambda x: layer_output(model, conv, x[None]).pow(2).sum()  # noqa: E731
    assert energy(dream) > energy(image)
    assert dream.min() >= 0 and dream.max() <= 1 and dream.shape == image.shape


def test_neighbours_and_penultimate_features():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    images = torch.rand(5, 1, 2, 2)
    feats = penultimate_features(model, images, batch_size=2)
    torch.testing.assert_close(feats, torch.relu(model[1](images.flatten(1))).detach())
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    index, dist = nearest_neighbors(torch.tensor([[0.9, 0.1]]), bank, 2)
    assert index.tolist() == [[1, 0]] and dist[0, 0] == pytest.approx(2**0.5 * 0.1, abs=1e-6)


# ----------------------------------------------------------------------------- detector target


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    config = load_config(CONFIG_DIR / "shapes_faster_rcnn.yaml", ["model.postprocess.score_thresh=0.0"])
    model = build_detector(config, load_plugins().registry, num_classes=len(SHAPES)).eval()
    return model, config


def shapes_image():
    image = np.full((64, 64, 3), 40, np.uint8)
    cv2.circle(image, (20, 24), 10, (255, 60, 60), -1)
    cv2.rectangle(image, (36, 30), (58, 54), (60, 200, 90), -1)
    return image


def test_detection_score_is_differentiable_down_to_the_pixels(detector):
    model, _ = detector
    image = torch.from_numpy(shapes_image()).permute(2, 0, 1).float() / 255
    score, picked = DetectionScore.pick(model, image)
    with torch.no_grad():
        plain = model([image])[0][0]
    assert picked.score == pytest.approx(float(plain.scores.max()))
    x = image[None].clone().requires_grad_(True)
    value = score(x)
    assert value.shape == (1,) and float(value.detach()) == pytest.approx(picked.score, rel=1e-4)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the same detections with and without gradients
    dets = detector_forward(model, x)[0]
    torch.testing.assert_close(dets.scores.detach(), plain.scores)
    # a box where nothing is detected scores 0 and still back-propagates
    far = DetectionScore(model, box=torch.tensor([1000.0, 1000.0, 1010.0, 1010.0]), label=picked.label)
    zero = far(x)
    assert float(zero.detach()) == 0 and torch.autograd.grad(zero.sum(), x)[0].abs().sum() == 0


def test_default_layer_and_first_conv_of_a_detector(detector):
    model, _ = detector
    assert default_layer(model).startswith("backbone.")
    assert first_conv(model) is model.backbone.conv1


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory):
    """An untrained LeNet-5 for 16x16 digits, saved as `detkit classify train` saves it."""
    torch.manual_seed(0)
    config = load_classify_config(None, [
        "data.image_size=16", "model.pixel_mean=[0.3]", "model.pixel_std=[0.4]",
        "model.backbone.in_channels=1", "model.backbone.input_size=16",
    ])
    model = build_classifier(config, load_plugins(), num_classes=10)
    path = tmp_path_factory.mktemp("clf") / "best.pt"
    save_classifier(path, model, config, [str(k) for k in range(10)])
    return path


FAST = ["--k", "3", "--points", "60", "--class-steps", "10", "--dream-steps", "2"]


def test_explain_classifier_every_method_writes_a_drawn_png(classifier_checkpoint, tmp_path, capsys):
    digit = tmp_path / "digit.png"
    assert cv2.imwrite(str(digit), np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((2, 2), np.uint8)))
    out = tmp_path / "out"
    assert run_cli(["explain", "--weights", str(classifier_checkpoint), "--out", str(out), "--image", str(digit),
                    *FAST]) == 0
    expected = [m for m in CLASSIFIER_METHODS if m != "embedding"] + ["embedding_pca", "embedding_tsne"]
    for name in expected:
        assert png_std(out / f"{name}.png") > MIN_STD, name
    printed = capsys.readouterr().out
    assert all(name in printed for name in expected)


def test_explain_classifier_subset_with_its_own_test_image(classifier_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert run_cli(["explain", "--weights", str(classifier_checkpoint), "--out", str(out),
                    "--methods", "saliency,occlusion", "--patch", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["occlusion.png", "saliency.png"]


@pytest.fixture(scope="module")
def detector_checkpoint(detector, tmp_path_factory):
    model, config = detector
    folder = tmp_path_factory.mktemp("det")
    save_checkpoint(folder / "det.pt", model=model, config=config, class_names=SHAPES)
    assert cv2.imwrite(str(folder / "shapes.png"), shapes_image()[:, :, ::-1])
    return folder / "det.pt", folder / "shapes.png"


def test_explain_detector_every_method_writes_a_drawn_png(detector_checkpoint, tmp_path, capsys):
    weights, image = detector_checkpoint
    out = tmp_path / "out"
    assert run_cli(["explain", "--weights", str(weights), "--out", str(out), "--image", str(image),
                    "--patch", "32", "--stride", "32", "--dream-steps", "2", "--detection", "1"]) == 0
    for name in DETECTOR_METHODS:
        assert png_std(out / f"{name}.png") > MIN_STD, name
    assert not (out / "neighbors.png").exists()


def test_explain_detector_errors(detector_checkpoint, tmp_path, capsys):
    weights, image = detector_checkpoint
    with pytest.raises(DetkitError, match="--image"):
        run_cli(["explain", "--weights", str(weights), "--out", str(tmp_path)])
    with pytest.raises(DetkitError, match="did you mean 'saliency'"):
        run_cli(["explain", "--weights", str(weights), "--out", str(tmp_path), "--image", str(image),
                 "--methods", "salency"])
    with pytest.raises(DetkitError, match="none of neighbors"):
        run_cli(["explain", "--weights", str(weights), "--out", str(tmp_path), "--image", str(image),
                 "--methods", "neighbors"])
    with pytest.raises(DetkitError, match="100 "):
        run_cli(["explain", "--weights", str(weights), "--out", str(tmp_path), "--image", str(image),
                 "--methods", "filters", "--detection", "100"])


def test_library_refuses_methods_without_their_data(tmp_path):
    from detkit.explain.figures import explain_classifier

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    with pytest.raises(DetkitError, match="neighbors"):
        explain_classifier(model, class_names=["a", "b", "c"], image=torch.rand(1, 6, 6), out_dir=tmp_path,
                           methods=["saliency", "neighbors"])
    assert not list(tmp_path.iterdir())  # refused before writing anything
    with pytest.raises(DetkitError, match="did you mean 'occlusion'"):
        explain_classifier(model, class_names=["a", "b", "c"], image=torch.rand(1, 6, 6), out_dir=tmp_path,
                           methods=["oclusion"])
