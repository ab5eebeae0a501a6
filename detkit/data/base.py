"""The dataset protocol: what every detkit dataset returns and offers.

A detection dataset is a :class:`torch.utils.data.Dataset` of :class:`Sample` with a
few extra members that training and evaluation rely on:

* ``class_names[k]``: the name of label index ``k`` (labels are ``0..K-1``);
* ``category_ids[k]``: the COCO category id that label ``k`` is written as in
  result json (and that :meth:`DetectionDataset.coco_gt` uses);
* ``image_ids[i]``: the COCO image id of item ``i``;
* ``image_path(i)``: where the image of item ``i`` lives;
* ``coco_gt()``: the ground truth as a :class:`pycocotools.coco.COCO`, built in
  memory for non-COCO datasets; objects to be ignored carry ``iscrowd=1``.

``dataset[i]`` raises :class:`~detkit.errors.DataError` when the image of item ``i``
is missing or corrupt; :func:`detkit.data.loader.build_loader` reports and skips such
items.
"""

from __future__ import annotations

import abc
import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from detkit.structures import Targets

__all__ = ["DetectionDataset", "Sample", "coco_from_dict"]


@dataclass
class Sample:
    """One image and its ground truth.

    Attributes:
        image: ``(3, H, W)`` float32 RGB in ``[0, 1]``.
        targets: the ground truth of the image, boxes in its pixels (``G`` objects).
        image_id: the COCO image id (what evaluation results refer to).
        file_name: the image file name as the annotations give it.
    """

    image: Tensor
    targets: Targets
    image_id: int
    file_name: str

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])


class DetectionDataset(Dataset[Sample], abc.ABC):
    """Base class of detkit's datasets; see the module docstring for the protocol.

    Subclasses set :attr:`class_names`, :attr:`category_ids` and :attr:`image_ids`
    in their constructor and implement the abstract methods.
    """

    class_names: list[str]
    category_ids: list[int]
    image_ids: list[int]

    @property
    def num_classes(self) -> int:
        """K, the number of object classes."""
        return len(self.class_names)

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Sample:
        """The image and ground truth of item ``index``; DataError if the image is unusable."""

    @abc.abstractmethod
    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""

    @abc.abstractmethod
    def coco_gt(self) -> COCO:
        """The ground truth of every item as a pycocotools COCO object."""


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """Build a pycocotools :class:`COCO` from an in-memory dataset dict, silently.

    ``data`` has the keys of a COCO instances file: ``images``, ``annotations``,
    ``categories``. It is used as is (not copied).
    """
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
