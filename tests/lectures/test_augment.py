"""Augmentation against torchvision's functional ops and sampling, PCA lighting statistics; preprocessing stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import RandomResizedCrop

from detkit.lectures.augment import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    color_jitter,
    color_jitter_params,
    horizontal_flip,
    pca_lighting,
    random_horizontal_flip,
    random_resized_crop,
    random_resized_crop_params,
    rgb_pca,
)
from detkit.lectures.preprocess import Preprocessor, channel_mean_std, fit_preprocessor, mean_image


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (torch's thread pool spins badly on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image(h: int = 9, w: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_horizontal_flip():
    img = image()
    torch.testing.assert_close(horizontal_flip(img), TF.hflip(img))
    torch.testing.assert_close(horizontal_flip(img)[:, :, 0], img[:, :, -1])
    assert torch.equal(random_horizontal_flip(img, p=1.0), TF.hflip(img))
    assert torch.equal(random_horizontal_flip(img, p=0.0), img)
    gen = torch.Generator().manual_seed(0)
    flips = sum(not torch.equal(random_horizontal_flip(img, generator=gen), img) for _ in range(2000))
    assert flips / 2000 == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(("h", "w"), [(32, 48), (40, 40), (5, 200), (200, 5)])
@pytest.mark.parametrize(("scale", "ratio"), [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 0.9), (0.5, 2.0))])
def test_resized_crop_params_equal_torchvision_with_the_same_seed(h, w, scale, ratio):
    img = torch.zeros(3, h, w)
    for seed in range(20):
        torch.manual_seed(seed)
        theirs = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        torch.manual_seed(seed)
        ours = random_resized_crop_params(h, w, scale, ratio)
        assert ours == tuple(theirs)


def test_resized_crop_bounds_area_and_ratio():
    h, w, scale, ratio = 60, 80, (0.2, 0.7), (3 / 4, 4 / 3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        top, left, ch, cw = random_resized_crop_params(h, w, scale, ratio, generator=gen)
        assert top >= 0 and top + ch <= h and left >= 0 and left + cw <= w
        # Rounding each side to an integer moves area and ratio a little outside the ranges.
        assert scale[0] * 0.9 <= ch * cw / (h * w) <= scale[1] * 1.1
        assert ratio[0] * 0.9 <= cw / ch <= ratio[1] * 1.1


def test_resized_crop_output_equals_torchvision_resized_crop():
    img = image(30, 40)
    for seed in range(5):
        out = random_resized_crop(img, (16, 12), generator=torch.Generator().manual_seed(seed))
        top, left, h, w = random_resized_crop_params(30, 40, generator=torch.Generator().manual_seed(seed))
        assert out.shape == (3, 16, 12)
        torch.testing.assert_close(out, TF.resized_crop(img, top, left, h, w, [16, 12], antialias=True))


@pytest.mark.parametrize("factor", [0.0, 0.6, 1.0, 1.7])
def test_colour_adjustments_equal_torchvision(factor):
    img = image()
    torch.testing.assert_close(adjust_brightness(img, factor), TF.adjust_brightness(img, factor))
    torch.testing.assert_close(adjust_contrast(img, factor), TF.adjust_contrast(img, factor))
    torch.testing.assert_close(adjust_saturation(img, factor), TF.adjust_saturation(img, factor))


def test_color_jitter_applies_the_sampled_factors_in_the_sampled_order():
    img = image()
    adjust = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    orders = set()
    for seed in range(30):
        params = color_jitter_params(0.4, 0.3, 0.2, generator=torch.Generator().manual_seed(seed))
        factors = (params.brightness, params.contrast, params.saturation)
        for f, s in zip(factors, (0.4, 0.3, 0.2)):
            assert f is not None and 1 - s <= f <= 1 + s
        expected = img
        for i in params.order:
            expected = adjust[i](expected, factors[i])
        orders.add(tuple(params.order))
        out = color_jitter(img, 0.4, 0.3, 0.2, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out, expected)
    assert len(orders) > 1
    assert torch.equal(color_jitter(img, 0.0, 0.0, 0.0), img)


def planar_colour_dataset() -> torch.Tensor:
    """RGB images whose pixels all lie in a plane (B = 0.5 R + 0.5 G): a rank-2 colour covariance."""
    gen = torch.Generator().manual_seed(0)
    rg = torch.rand(20, 2, 6, 6, dtype=torch.float64, generator=gen)
    rg[:, 0] *= 0.5
    b = 0.5 * rg[:, 0] + 0.5 * rg[:, 1]
    return torch.cat([rg, b[:, None]], dim=1)


def test_rgb_pca_matches_numpy_covariance():
    images = planar_colour_dataset()
    eigvals, eigvecs = rgb_pca(images)
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    np_vals, np_vecs = np.linalg.eigh(np.cov(pixels, rowvar=False, bias=True))
    np.testing.assert_allclose(eigvals.numpy(), np_vals[::-1], atol=1e-12)
    np.testing.assert_allclose(np.abs(eigvecs.numpy().T @ np_vecs[:, ::-1]), np.eye(3), atol=1e-9)
    assert eigvals[2] < 1e-12  # the planar colours have no variance along the plane's normal


def test_pca_lighting_offset_lies_in_the_principal_span_with_the_right_variance():
    images = planar_colour_dataset()
    eigvals, eigvecs = rgb_pca(images)
    img = images[0]
    gen = torch.Generator().manual_seed(1)
    coords = []
    for _ in range(2000):
        offset = pca_lighting(img, eigvals, eigvecs, alpha_std=0.1, generator=gen) - img
        torch.testing.assert_close(offset, offset[:, :1, :1].expand_as(offset))  # one RGB shift for all pixels
        coords.append(eigvecs.T @ offset[:, 0, 0])  # coordinates along the principal components
    c = torch.stack(coords)
    assert c[:, 2].abs().max() < 1e-12  # nothing along the zero-variance component: in the span of the others
    for i in range(2):
        assert (c[:, i] / eigvals[i]).std().item() == pytest.approx(0.1, rel=0.05)  # std alpha_std * eigval_i
        assert abs((c[:, i] / eigvals[i]).mean().item()) < 0.01


def test_mean_image_and_channel_stats_match_numpy_with_any_batching():
    gen = torch.Generator().manual_seed(0)
    images = 3.0 * torch.rand(13, 3, 4, 5, dtype=torch.float64, generator=gen) + 100.0  # a large offset
    arr = images.numpy()
    batches = [images[:5], images[5:6], images[6:]]
    for data in (images, batches, [(b, torch.zeros(len(b))) for b in batches]):
        np.testing.assert_allclose(mean_image(data).numpy(), arr.mean(axis=0), rtol=1e-12)
        mean, std = channel_mean_std(data)
        np.testing.assert_allclose(mean.numpy(), arr.mean(axis=(0, 2, 3)), rtol=1e-12)
        np.testing.assert_allclose(std.numpy(), arr.std(axis=(0, 2, 3)), rtol=1e-9)


def test_preprocessor_uses_training_statistics_on_test_data():
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(10, 3, 4, 4, dtype=torch.float64, generator=gen) * torch.tensor([1.0, 2.0, 4.0])[:, None, None]
    test = train[:3] + 1.0
    pre = fit_preprocessor(train, "channel", scale=True)
    normalised = pre(train)
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(normalised.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(pre(test), (test - pre.mean[:, None, None]) / pre.std[:, None, None])
    torch.testing.assert_close(pre(test[0]), pre(test)[0])  # a single (C, H, W) image works too

    image_pre = fit_preprocessor(train, "image")
    torch.testing.assert_close(image_pre(train).mean(dim=0), torch.zeros(3, 4, 4, dtype=torch.float64))
    assert Preprocessor(mean=torch.zeros(3))(torch.zeros(1, 3, 2, 2, dtype=torch.uint8)).dtype == torch.float32
    with pytest.raises(ValueError, match="channel"):
        fit_preprocessor(train, "image", scale=True)
    with pytest.raises(ValueError, match="empty"):
        mean_image([])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        channel_mean_std(train[0])
    assert math.isfinite(float(pre.std.min()))
