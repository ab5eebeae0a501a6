"""The typed containers that cross stage boundaries.

Conventions shared by every container:

* boxes are absolute ``xyxy`` float32 pixels of the image they refer to;
* labels are int64 class indices ``0..K-1`` (background is a head's internal business);
* every container has ``.to(device)``;
* per-instance containers (:class:`Targets`, :class:`Proposals`, :class:`Detections`)
  index and concatenate like tensors: all fields have the same length and
  ``x[keep]`` indexes every field.

Shape glossary: N images, G ground-truth objects, R proposals, D detections,
C channels, Hp/Wp padded batch size, H/W image size.

Interop with torchvision's ``list[dict[str, Tensor]]`` lives at the bottom of this
module; nothing inside the pipeline uses dicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import torch
from torch import Tensor

from detkit.errors import DataError

T = TypeVar("T", bound="Instances")


def _empty_boxes(device: torch.device | str | None = None) -> Tensor:
    return torch.zeros((0, 4), dtype=torch.float32, device=device)


@dataclass
class ImageBatch:
    """Images normalized, resized and padded into one tensor.

    Attributes:
        tensor: ``(N, 3, Hp, Wp)`` float, zero-padded at the bottom and right.
        image_sizes: ``(h, w)`` of each image after resizing, before padding.
        original_sizes: ``(h, w)`` of each image as it was given.
        pixel_mean, pixel_std: the per-channel normalization applied to ``[0, 1]``
            RGB (``None``: the tensor holds ``[0, 1]`` RGB); :meth:`rgb` undoes it.
        originals: the images as given to the preprocessing (references, not copies),
            or ``None``; content keys hash them, since resized pixels can differ in
            the last bit between thread counts.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None
    originals: list[Tensor] | None = None

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device: torch.device | str) -> ImageBatch:
        return dataclasses.replace(self, tensor=self.tensor.to(device))

    def rgb(self, index: int) -> Tensor:
        """Image ``index`` as resized, unpadded and unnormalized: ``(3, h, w)`` float in ``[0, 1]``."""
        h, w = self.image_sizes[index]
        image = self.tensor[index, :, :h, :w]
        if self.pixel_std is not None:
            image = image * image.new_tensor(self.pixel_std).view(-1, 1, 1)
        if self.pixel_mean is not None:
            image = image + image.new_tensor(self.pixel_mean).view(-1, 1, 1)
        return image.clamp(0.0, 1.0)

    def rgb_uint8(self, index: int) -> Any:
        """Image ``index`` as an ``(h, w, 3)`` uint8 RGB numpy array (for OpenCV-style algorithms)."""
        image = self.rgb(index).detach().float().mul(255.0).round_().to(torch.uint8)
        return image.permute(1, 2, 0).contiguous().cpu().numpy()


@dataclass
class FeatureMaps:
    """Image-level features by name, finest first.

    An image pyramid (the backbone run on copies of the batch resized by a few
    factors, as OverFeat does) is one ``FeatureMaps`` too: :meth:`pyramid` names map
    ``c4`` of pyramid level ``i`` ``"c4@i"`` and records the factor of its copy in
    :attr:`image_scales`; :meth:`levels` lists the levels of one map.

    Attributes:
        maps: name -> ``(N, C, Hi, Wi)``.
        strides: name -> stride in input pixels of the (possibly resized) padded
            batch the map was computed on.
        image_scales: name -> ``(sy, sx)``, the factor from the batch's pixels to the
            pixels of the resized copy the map was computed on; maps not listed were
            computed on the batch itself, ``(1, 1)``. A position ``(x, y)`` on that
            copy is ``(x / sx, y / sy)`` in the batch.
    """

    maps: dict[str, Tensor]
    strides: dict[str, int]
    image_scales: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Tensor:
        return self.maps[name]

    def names(self) -> list[str]:
        return list(self.maps)

    def to(self, device: torch.device | str) -> FeatureMaps:
        return self.map(lambda v: v.to(device))

    def map(self, fn: Callable[[Tensor], Tensor]) -> FeatureMaps:
        """``fn`` applied to every map; strides and image scales kept."""
        return FeatureMaps({k: fn(v) for k, v in self.maps.items()}, dict(self.strides), dict(self.image_scales))

    def image_scale(self, name: str) -> tuple[float, float]:
        """``(sy, sx)`` of map ``name`` (see :attr:`image_scales`)."""
        return self.image_scales.get(name, (1.0, 1.0))

    def levels(self, name: str) -> list[str]:
        """The maps holding feature ``name``: ``[name]``, or ``name@0, name@1, ...`` of a pyramid."""
        if name in self.maps:
            return [name]
        return [k for k in self.maps if k.rpartition("@")[0] == name]

    @classmethod
    def pyramid(cls, per_level: Sequence[FeatureMaps], scales: Sequence[tuple[float, float]]) -> FeatureMaps:
        """Merge the features of resized copies of one batch into one container.

        Args:
            per_level: the features of each copy (same names in each).
            scales: ``(sy, sx)`` of each copy relative to the batch.

        Returns:
            Maps ``"{name}@{i}"`` for every map ``name`` of copy ``i``, with strides
            and :attr:`image_scales`.
        """
        maps, strides, image_scales = {}, {}, {}
        for i, (features, scale) in enumerate(zip(per_level, scales, strict=True)):
            for name, value in features.maps.items():
                key = f"{name}@{i}"
                maps[key], strides[key], image_scales[key] = value, features.strides[name], scale
        return cls(maps, strides, image_scales)


@dataclass
class RegionFeatures:
    """Features pooled for every region of every image of a batch.

    Attributes:
        features: ``(sum R, C, h, w)`` (or ``(sum R, C)`` for vector features),
            regions of image 0 first.
        num_per_image: R of each image.
    """

    features: Tensor
    num_per_image: list[int]

    def to(self, device: torch.device | str) -> RegionFeatures:
        return RegionFeatures(self.features.to(device), list(self.num_per_image))

    def split(self) -> tuple[Tensor, ...]:
        """The features of each image, as a tuple of ``(R_i, ...)`` tensors."""
        return tuple(self.features.split(self.num_per_image))


class Instances:
    """Per-instance container: every tensor field has the same first dimension.

    Subclass it as a dataclass of tensor fields to give a new per-instance record a
    type (as :class:`Targets`, :class:`Detections` and :class:`SampledProposals` do).

    The first field is required and sets the length; the others must have as many
    rows (checked on construction). Optional fields may be ``None``; they stay
    ``None`` through indexing and concatenation (concatenating a container that has
    the field with one that does not is an error).
    """

    def _tensor_fields(self) -> dict[str, Tensor | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def __len__(self) -> int:
        first = fields(self)[0].name  # type: ignore[arg-type]
        return int(getattr(self, first).shape[0])

    def __getitem__(self: T, index: Any) -> T:
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(index, None)
        values = {k: (v[index] if v is not None else None) for k, v in self._tensor_fields().items()}
        return type(self)(**values)

    def to(self: T, device: torch.device | str) -> T:
        values = {k: (v.to(device) if v is not None else None) for k, v in self._tensor_fields().items()}
        return type(self)(**values)

    def __post_init__(self) -> None:
        n = len(self)
        first = fields(self)[0].name  # type: ignore[arg-type]
        for name, value in self._tensor_fields().items():
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{type(self).__name__}.{name} has {value.shape[0]} rows but {first} has {n}")

    @classmethod
    def cat(cls: type[T], items: Sequence[T]) -> T:
        """Concatenate containers of the same type along the instance dimension."""
        if not items:
            raise ValueError(f"{cls.__name__}.cat needs at least one item")
        values: dict[str, Tensor | None] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            parts = [getattr(it, f.name) for it in items]
            if all(p is None for p in parts):
                values[f.name] = None
            elif any(p is None for p in parts):
                raise ValueError(f"{cls.__name__}.cat: field {f.name!r} is missing in some items")
            else:
                values[f.name] = torch.cat(parts, dim=0)
        return cls(**values)

    def replace(self: T, **changes: Tensor | None) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class Targets(Instances):
    """Ground truth of one image.

    Attributes:
        boxes: ``(G, 4)`` xyxy float32.
        labels: ``(G,)`` int64 in ``0..K-1``.
        masks: ``(G, H, W)`` uint8/bool instance masks, or ``None``.
        iscrowd: ``(G,)`` bool; crowd regions are ignored in training.
    """

    boxes: Tensor = field(default_factory=_empty_boxes)
    labels: Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.int64))
    masks: Tensor | None = None
    iscrowd: Tensor | None = None

    def without_crowd(self) -> Targets:
        """The non-crowd objects only."""
        if self.iscrowd is None:
            return self
        return self[~self.iscrowd.bool()]


@dataclass
class Proposals(Instances):
    """Candidate regions of one image.

    Attributes:
        boxes: ``(R, 4)`` xyxy float32.
        objectness: ``(R,)`` score (a probability for RPN, a rank score for others).
    """

    boxes: Tensor = field(default_factory=_empty_boxes)
    objectness: Tensor = field(default_factory=lambda: torch.zeros((0,)))


@dataclass
class Detections(Instances):
    """Final (or raw) detections of one image.

    Attributes:
        boxes: ``(D, 4)`` xyxy float32.
        scores: ``(D,)`` float in ``[0, 1]``.
        labels: ``(D,)`` int64 in ``0..K-1``.
        masks: ``(D, H, W)`` float probabilities or bool masks, or ``None``.
    """

    boxes: Tensor = field(default_factory=_empty_boxes)
    scores: Tensor = field(default_factory=lambda: torch.zeros((0,)))
    labels: Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.int64))
    masks: Tensor | None = None


@dataclass
class SampledProposals(Instances):
    """Proposals of one image chosen to train a RoI head, each with its matched object.

    Returned by proposal sampling (:class:`detkit.stages.ProposalSampler`) and
    consumed by the box heads and, through :meth:`MaskHead.loss
    <detkit.stages.MaskHead.loss>`, by mask heads. Names follow origin: ``proposal_``
    for the region, ``gt_`` for what it was matched to.

    Attributes:
        proposal_boxes: ``(R, 4)`` xyxy float32, in the batch's resized pixels.
        gt_labels: ``(R,)`` int64: the matched object's class in ``0..K-1``, or
            :attr:`BACKGROUND` (-1) for a background sample; a classifier with
            background at index 0 trains on ``gt_labels + 1``.
        gt_boxes: ``(R, 4)`` the matched object's box (zeros for background).
        gt_index: ``(R,)`` int64 index of the matched object among the image's
            non-crowd targets (``Targets.without_crowd()``; 0 for background).
    """

    BACKGROUND = -1

    proposal_boxes: Tensor = field(default_factory=_empty_boxes)
    gt_labels: Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.int64))
    gt_boxes: Tensor = field(default_factory=_empty_boxes)
    gt_index: Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.int64))

    def positive(self) -> SampledProposals:
        """The samples matched to an object."""
        return self[self.gt_labels >= 0]


def validate_targets(targets: Sequence[Targets]) -> None:
    """Check ground truth where it enters a detector: finite boxes of positive width and height.

    Degenerate boxes (``x2 <= x1`` or ``y2 <= y1``) would reach the losses as
    infinite or NaN box-regression targets; detkit's loaders drop them, but a
    dataset plugin or a Python caller can pass them.

    Raises:
        DataError: naming the image index, the box index and its coordinates.
    """
    for i, t in enumerate(targets):
        boxes = t.boxes
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise DataError(f"targets of image {i}: boxes must have shape (G, 4), got {tuple(boxes.shape)}")
        bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bool(bad.any()):
            j = int(torch.where(bad)[0][0])
            coords = [round(float(v), 2) for v in boxes[j]]
            raise DataError(
                f"targets of image {i}: box {j} {coords} is degenerate (x2 <= x1, y2 <= y1 or not finite; "
                f"{int(bad.sum())} such box(es) in this image); drop such boxes or fix their annotations"
            )


# --------------------------------------------------------------------------- interop


def detections_from_torchvision(outputs: Sequence[dict[str, Tensor]], *, label_offset: int = 1) -> list[Detections]:
    """Convert torchvision detection outputs (labels with background 0) to :class:`Detections`."""
    result = []
    for out in outputs:
        masks = out.get("masks")
        if masks is not None and masks.dim() == 4:
            masks = masks[:, 0]
        result.append(
            Detections(
                boxes=out["boxes"].float(),
                scores=out["scores"].float(),
                labels=out["labels"].long() - label_offset,
                masks=masks,
            )
        )
    return result


def detections_to_torchvision(dets: Sequence[Detections], *, label_offset: int = 1) -> list[dict[str, Tensor]]:
    """Convert :class:`Detections` to torchvision's output dicts (labels with background 0)."""
    result = []
    for d in dets:
        out = {"boxes": d.boxes, "scores": d.scores, "labels": d.labels + label_offset}
        if d.masks is not None:
            out["masks"] = d.masks[:, None]
        result.append(out)
    return result


def targets_to_torchvision(targets: Sequence[Targets], *, label_offset: int = 1) -> list[dict[str, Tensor]]:
    """Convert :class:`Targets` to torchvision's training target dicts."""
    result = []
    for t in targets:
        out = {"boxes": t.boxes, "labels": t.labels + label_offset}
        if t.masks is not None:
            out["masks"] = t.masks
        result.append(out)
    return result


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(M, 4)`` xyxy -> COCO ``[x, y, w, h]``."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def detections_to_coco(
    dets: Detections, *, image_id: int, category_ids: Sequence[int], rles: Sequence[dict] | None = None
) -> list[dict[str, Any]]:
    """COCO result records of one image: ``{"image_id", "category_id", "bbox", "score"}``.

    Args:
        category_ids: the dataset category id of each label index ``0..K-1``.
        rles: optional COCO RLE per detection (``counts`` as str), added as ``segmentation``.
    """
    boxes = xyxy_to_xywh(dets.boxes.detach().float().cpu()).tolist()
    scores = dets.scores.detach().float().cpu().tolist()
    labels = dets.labels.detach().cpu().tolist()
    records = []
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        rec: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_ids[label]),
            "bbox": [round(float(v), 3) for v in box],
            "score": round(float(score), 5),
        }
        if rles is not None:
            rec["segmentation"] = rles[i]
        records.append(rec)
    return records


__all__ = [
    "Detections",
    "FeatureMaps",
    "ImageBatch",
    "Instances",
    "Proposals",
    "RegionFeatures",
    "SampledProposals",
    "Targets",
    "detections_from_torchvision",
    "detections_to_coco",
    "detections_to_torchvision",
    "targets_to_torchvision",
    "validate_targets",
    "xyxy_to_xywh",
]
