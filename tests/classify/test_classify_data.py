"""Classification datasets: the fixed digits split and image folders with a bad file."""

import warnings

import cv2
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from detkit.classify.data import ImageFolderDataset, digits_split, prepare_image, resize_images, stratified_split
from detkit.errors import DataError


def test_digits_split_is_sklearns_fixed_stratified_split():
    train, test = digits_split()
    digits = load_digits()
    # oracle: the split the brief fixes, computed independently
    train_idx, test_idx = train_test_split(
        np.arange(len(digits.target)), test_size=0.25, stratify=digits.target, random_state=0
    )
    assert len(train) == 1347 and len(test) == 450
    np.testing.assert_array_equal(test.labels.numpy(), digits.target[test_idx])
    np.testing.assert_allclose(test.images[:, 0].numpy(), digits.images[test_idx] / 16.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(train.labels.numpy(), digits.target[train_idx])
    assert test.images.shape[1:] == (1, 8, 8) and test.images.min() >= 0 and test.images.max() <= 1
    assert train.class_names == [str(k) for k in range(10)]


def test_digits_split_is_stratified_and_deterministic():
    train, test = digits_split()
    counts_all = torch.bincount(torch.cat([train.labels, test.labels]), minlength=10).double()
    counts_test = torch.bincount(test.labels, minlength=10).double()
    # every class is a quarter of its images in the test split, up to rounding
    assert torch.all((counts_test - 0.25 * counts_all).abs() <= 1)
    again_train, again_test = digits_split()
    assert torch.equal(again_test.images, test.images) and torch.equal(again_train.labels, train.labels)


def test_digits_resized_to_32_bilinear_in_range():
    _, test = digits_split(image_size=32)
    small_test = digits_split()[1]
    assert test.images.shape == (450, 1, 32, 32)
    assert test.images.min() >= 0 and test.images.max() <= 1
    expected = torch.nn.functional.interpolate(small_test.images, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(test.images, expected.clamp(0, 1))
    assert torch.equal(test.labels, small_test.labels)


def _write_png(path, value, size=(12, 10)):
    array = np.full((*size, 3), value, dtype=np.uint8)
    assert cv2.imwrite(str(path), array)


def test_image_folder_sorted_classes_and_corrupt_file_skipped(tmp_path):
    for name, value in (("zebra", 200), ("ant", 50)):
        (tmp_path / name).mkdir()
        for i in range(3):
            _write_png(tmp_path / name / f"{i}.png", value)
    (tmp_path / "ant" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "ant" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match="broken.png"):
        ds = ImageFolderDataset(tmp_path, size=8, channels=1)
    assert ds.class_names == ["ant", "zebra"]
    assert len(ds) == 6 and [p.name for p, _ in ds.skipped] == ["broken.png"]
    assert ds.images.shape == (6, 1, 8, 8)
    image, label = ds[0]
    assert label == 0 and torch.allclose(image, torch.full_like(image, 50 / 255), atol=1e-6)
    assert ds[5][1] == 1 and torch.allclose(ds[5][0], torch.full((1, 8, 8), 200 / 255), atol=1e-6)


def test_image_folder_rgb_subset_of_classes_and_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write_png(tmp_path / "a" / "x.png", 10)
    _write_png(tmp_path / "b" / "y.png", 20)
    ds = ImageFolderDataset(tmp_path, size=4, channels=3, class_names=["b"])
    assert ds.class_names == ["b"] and ds.images.shape == (1, 3, 4, 4)
    with pytest.raises(DataError, match="'c'"):
        ImageFolderDataset(tmp_path, size=4, class_names=["c"])
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", size=4)
    empty = tmp_path / "empty"
    (empty / "k").mkdir(parents=True)
    (empty / "k" / "bad.jpg").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="no readable images"):
            ImageFolderDataset(empty, size=4)


def test_stratified_split_too_small_class_is_a_data_error():
    from detkit.classify.data import TensorImageDataset

    ds = TensorImageDataset(torch.zeros(5, 1, 2, 2), torch.tensor([0, 0, 0, 0, 1]), ["a", "b"])
    with pytest.raises(DataError, match="stratified"):
        stratified_split(ds, test_size=0.4, seed=0)


def test_prepare_image_gray_and_resize():
    array = np.zeros((4, 6, 3), dtype=np.uint8)
    array[..., 0] = 255  # pure red
    gray = prepare_image(array, channels=1, size=None)
    assert gray.shape == (1, 4, 6) and torch.allclose(gray, torch.full_like(gray, 0.299))
    assert prepare_image(array, channels=3, size=5).shape == (3, 5, 5)
    assert resize_images(torch.rand(2, 1, 3, 3), None).shape == (2, 1, 3, 3)
