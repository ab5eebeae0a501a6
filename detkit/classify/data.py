"""Classification datasets: scikit-learn's 8x8 digits and image folders.

Every dataset here is a :class:`torch.utils.data.Dataset` of ``(image, label)``
with ``image`` a ``(C, S, S)`` float32 tensor in ``[0, 1]`` and ``label`` an int in
``0..K-1``, plus ``class_names[k]`` (the name of label ``k``) and ``labels`` (an
``(N,)`` int64 tensor, for stratified sampling and per-class metrics).

Images are decoded and resized once, when the dataset is built, and kept in memory
as ``(N, C, S, S)``: these are small-image datasets for CPU training, and decoding
up front is what lets an image folder report and skip a corrupt file before the
first epoch rather than in the middle of one.

Shape glossary: N images, C channels (1 gray or 3 RGB), S side after resizing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from detkit.data.images import IMAGE_EXTENSIONS, read_image
from detkit.errors import DataError

__all__ = [
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_SIZE",
    "ImageFolderDataset",
    "TensorImageDataset",
    "digits_split",
    "prepare_image",
    "resize_images",
    "stratified_split",
]

#: The fixed digits split: ``train_test_split(test_size=0.25, stratify=y, random_state=0)``.
DIGITS_TEST_SIZE = 0.25
DIGITS_SPLIT_SEED = 0

#: The digits' pixels are integers 0..16.
_DIGITS_MAX = 16.0

def resize_images(images: Tensor, size: int | None) -> Tensor:
    """Bilinearly resize ``(N, C, H, W)`` images to ``(N, C, size, size)``; ``None`` keeps them.

    Values stay in ``[0, 1]`` (bilinear interpolation is a convex combination).
    """
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


class TensorImageDataset(Dataset[tuple[Tensor, int]]):
    """In-memory images ``(N, C, S, S)`` in ``[0, 1]`` with labels ``(N,)``.

    Args:
        images: float images in ``[0, 1]``.
        labels: int labels ``0..K-1``.
        class_names: ``K`` names, ``class_names[k]`` for label ``k``.
    """

    def __init__(self, images: Tensor, labels: Tensor, class_names: Sequence[str]) -> None:
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"need (N, C, H, W) images and (N,) labels, got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}")
        self.images = images.float().contiguous()
        self.labels = labels.long()
        self.class_names = [str(n) for n in class_names]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, S, S)`` of every image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)


def digits_split(*, image_size: int | None = None) -> tuple[TensorImageDataset, TensorImageDataset]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), split 75/25.

    The split is fixed and stratified (``train_test_split(test_size=0.25,
    stratify=y, random_state=0)``), so every run and every checkpoint sees the same
    test set. Images are ``(1, S, S)`` in ``[0, 1]`` (pixel / 16), ``S = 8`` or
    ``image_size`` after bilinear resizing (LeNet-5 wants 32).

    Returns:
        ``(train, test)`` with 1347 and 450 images; class names ``"0"`` .. ``"9"``.
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    pixels = np.asarray(digits.images, dtype=np.float32) / _DIGITS_MAX
    x = torch.from_numpy(pixels)[:, None]  # (N, 8, 8) -> (N, 1, 8, 8)
    y = torch.from_numpy(np.asarray(digits.target, dtype=np.int64))
    names = [str(int(n)) for n in digits.target_names]
    everything = TensorImageDataset(resize_images(x, image_size), y, names)
    return stratified_split(everything, test_size=DIGITS_TEST_SIZE, seed=DIGITS_SPLIT_SEED)


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {str(root)!r} {what}; give a folder holding one sub-folder per class")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not folders:
        raise DataError(f"image folder {str(root)!r} has no class sub-folders; lay it out as ROOT/CLASS_NAME/*.png")
    return folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def prepare_image(array: np.ndarray, *, channels: int, size: int | None) -> Tensor:
    """``(H, W, 3)`` uint8 RGB (from :func:`~detkit.data.images.read_image`) -> ``(channels, S, S)`` in ``[0, 1]``.

    ``channels`` 1 converts to gray (Rec. 601 luma); ``size`` resizes bilinearly (``None`` keeps the size).
    """
    image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)  # (H, W, 3) -> (3, H, W)
    if channels == 1:
        # ITU-R BT.601 luma, the usual RGB -> gray weights
        image = (image * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    return resize_images(image[None], size)[0]


class ImageFolderDataset(TensorImageDataset):
    """``root/CLASS_NAME/*.png|jpg|...``: one sub-folder per class, classes sorted by name.

    Every image is read with :func:`detkit.data.images.read_image`, converted to
    ``channels`` (1: gray, 3: RGB) and resized to ``size x size`` (bilinear, aspect
    ratio not kept). A file that cannot be decoded is reported with a warning that
    names it and is skipped.

    Args:
        root: the folder.
        size: side of the resized images.
        channels: 1 or 3.
        class_names: use these classes (sub-folder names) in this order, e.g. the
            classes of a checkpoint; default: every sub-folder, sorted.

    Raises:
        DataError: ``root`` is missing or has no class folders, a requested class
            has no folder, or no image at all could be read.
    """

    def __init__(
        self, root: str | Path, *, size: int, channels: int = 3, class_names: Sequence[str] | None = None
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.root = Path(root)
        folders = {p.name: p for p in _class_folders(self.root)}
        names = list(class_names) if class_names is not None else sorted(folders)
        missing = [n for n in names if n not in folders]
        if missing:
            raise DataError(
                f"image folder {str(self.root)!r} has no sub-folder for class(es) {', '.join(map(repr, missing))}; "
                f"it has {', '.join(sorted(folders))}"
            )
        images: list[Tensor] = []
        labels: list[int] = []
        self.files: list[Path] = []
        self.skipped: list[tuple[Path, str]] = []
        for label, name in enumerate(names):
            for file in _image_files(folders[name]):
                try:
                    array = read_image(file)
                except DataError as exc:
                    self.skipped.append((file, str(exc)))
                    warnings.warn(f"skipping {file}: {exc}", stacklevel=2)
                    continue
                images.append(prepare_image(array, channels=channels, size=size))
                labels.append(label)
                self.files.append(file)
        if not images:
            raise DataError(
                f"image folder {str(self.root)!r} holds no readable images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)} in {', '.join(names)})"
            )
        super().__init__(torch.stack(images), torch.tensor(labels, dtype=torch.int64), names)


def stratified_split(
    dataset: TensorImageDataset, *, test_size: float = DIGITS_TEST_SIZE, seed: int = DIGITS_SPLIT_SEED
) -> tuple[TensorImageDataset, TensorImageDataset]:
    """Split an in-memory dataset into ``(train, test)``, stratified by label, deterministically.

    Raises:
        DataError: a class has too few images to appear on both sides.
    """
    from sklearn.model_selection import train_test_split

    labels = dataset.labels.numpy()
    try:
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise DataError(
            f"cannot split {len(labels)} images into train and test stratified by class ({exc}); "
            "add images to the small classes or give a separate test folder"
        ) from exc
    train_t, test_t = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return (
        TensorImageDataset(dataset.images[train_t], dataset.labels[train_t], dataset.class_names),
        TensorImageDataset(dataset.images[test_t], dataset.labels[test_t], dataset.class_names),
    )
