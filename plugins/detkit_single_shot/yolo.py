"""YOLO dense heads: the S x S grid of YOLOv1 (Redmon et al., 2016) and YOLOv3's anchor grid.

Both plug into :class:`~detkit_single_shot.detector.SingleStageDetector` as dense heads
(``model.dense_head.name``: ``yolo_v1`` or ``yolo_grid``) and return, at inference,
*raw* detections: every (prediction, class) pair with its class-specific score, up to
``topk_candidates`` per image; score threshold and class-wise NMS are the
post-processing's. Boxes are xyxy pixels of the padded batch (the fixed-size resize
makes it the image).

YOLOv1 (:class:`YoloV1Head`): the last feature map is (optionally convolved and)
adaptively pooled to S x S cells; fully connected layers predict, per cell, B boxes
``(x, y, sqrt w, sqrt h, confidence)`` and K class probabilities. ``x, y`` are the
centre's offset in the cell, ``sqrt w, sqrt h`` the square roots of the size over the
image size. The paper's last layer is linear; here the box values and the confidence
pass through a sigmoid and the class scores through a softmax, so that every value
lives in its target's range ``[0, 1]`` and ``confidence x probability`` is a score
(the loss is still the paper's sum-squared error, on these values).

YOLOv3 grid (:class:`YoloGridHead`): on every level, A anchors (sizes in pixels) per
cell, each predicting ``(tx, ty, tw, th, objectness, K class logits)``; the centre is
``(cell + sigmoid(t)) * stride``, the size ``anchor * exp(t)``. The box loss is a
binary cross-entropy on the sigmoid offsets plus a squared error on the log sizes.

Shape glossary: N images, K classes, G ground-truth boxes, S grid side, B boxes per
cell (YOLOv1), L levels, A anchors per level, Hl/Wl level l's size, P = sum over
levels of Hl * Wl * A predictions of an image (level-major, then row, column, anchor),
D raw detections of an image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.ops import box_iou, clip_boxes, paired_box_iou
from detkit.stages import ClassRows, DenseHead, Losses, no_detections
from detkit.structures import Detections, FeatureMaps, ImageBatch, Targets

#: YOLOv3's COCO anchors (pixels at 416 px), strides 8, 16 and 32.
YOLOV3_ANCHORS: list[list[list[float]]] = [
    [[10, 13], [16, 30], [33, 23]],
    [[30, 61], [62, 45], [59, 119]],
    [[116, 90], [156, 198], [373, 326]],
]

#: exp() of a log-size prediction is clamped here (as torchvision's box coder).
_LOG_SIZE_CLIP = math.log(1000.0 / 16)


def _topk_detections(boxes: Tensor, scores: Tensor, topk: int) -> Detections:
    """The ``topk`` best (box, class) pairs of one image.

    Args:
        boxes: ``(M, 4)`` xyxy, one per prediction.
        scores: ``(M, K)`` class-specific scores.
    """
    num_classes = scores.shape[1]
    flat = scores.reshape(-1)  # (M, K) -> (M*K,), prediction-major
    k = min(topk, flat.numel())
    top_scores, top_idx = flat.topk(k)
    return Detections(boxes=boxes[top_idx // num_classes], scores=top_scores, labels=top_idx % num_classes)


# --------------------------------------------------------------------------- YOLOv1


@dataclass
class YoloV1Targets:
    """The grid targets of one image.

    Attributes:
        has_object: ``(S, S)`` bool, the cells in which a ground-truth centre falls.
        boxes: ``(S, S, 4)`` the cell's ``(x, y, sqrt w, sqrt h)`` targets (0 elsewhere).
        classes: ``(S, S, K)`` one-hot class of the cell's object (0 elsewhere).
        gt_boxes: ``(S, S, 4)`` xyxy pixels of the cell's object (0 elsewhere).
    """

    has_object: Tensor
    boxes: Tensor
    classes: Tensor
    gt_boxes: Tensor


def yolo_v1_targets(
    gt_boxes: Tensor, gt_labels: Tensor, *, grid_size: int, image_size: tuple[int, int], num_classes: int
) -> YoloV1Targets:
    """YOLOv1's assignment: an object belongs to the cell its centre falls in.

    A cell holds one object; when several centres fall in one cell, the largest object
    wins (ties: the later one).

    Args:
        gt_boxes: ``(G, 4)`` xyxy pixels.
        gt_labels: ``(G,)`` int64 in ``0..K-1``.
        grid_size: S.
        image_size: ``(h, w)`` the grid covers.
        num_classes: K.
    """
    s = grid_size
    height, width = image_size
    device = gt_boxes.device
    targets = YoloV1Targets(
        has_object=torch.zeros((s, s), dtype=torch.bool, device=device),
        boxes=torch.zeros((s, s, 4), device=device),
        classes=torch.zeros((s, s, num_classes), device=device),
        gt_boxes=torch.zeros((s, s, 4), device=device),
    )
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    for g in areas.argsort(stable=True).tolist():  # smallest first: larger objects overwrite
        x0, y0, x1, y1 = gt_boxes[g].tolist()
        cx, cy = (x0 + x1) / 2 * s / width, (y0 + y1) / 2 * s / height  # centre in cell units
        col, row = min(max(int(cx), 0), s - 1), min(max(int(cy), 0), s - 1)
        targets.has_object[row, col] = True
        targets.boxes[row, col] = torch.tensor(
            [cx - col, cy - row, math.sqrt(max(x1 - x0, 0.0) / width), math.sqrt(max(y1 - y0, 0.0) / height)]
        )
        targets.classes[row, col] = 0.0
        targets.classes[row, col, int(gt_labels[g])] = 1.0
        targets.gt_boxes[row, col] = gt_boxes[g]
    return targets


def decode_yolo_v1_boxes(pred_boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Grid-relative boxes to xyxy pixels.

    Args:
        pred_boxes: ``(..., S, S, B, 4)`` ``(x, y, sqrt w, sqrt h)`` (row, column, box).
        image_size: ``(h, w)`` the grid covers.

    Returns:
        ``(..., S, S, B, 4)`` xyxy pixels.
    """
    s = pred_boxes.shape[-3]
    height, width = image_size
    cells = torch.arange(s, dtype=pred_boxes.dtype, device=pred_boxes.device)
    cx = (cells.view(1, s, 1) + pred_boxes[..., 0]) * (width / s)  # column index broadcast over (S, S, B)
    cy = (cells.view(s, 1, 1) + pred_boxes[..., 1]) * (height / s)  # row index
    w, h = pred_boxes[..., 2] ** 2 * width, pred_boxes[..., 3] ** 2 * height
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def yolo_v1_loss(
    pred_boxes: Tensor,
    pred_confidence: Tensor,
    pred_classes: Tensor,
    targets: Sequence[YoloV1Targets],
    *,
    image_size: tuple[int, int],
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
) -> Losses:
    """YOLOv1's sum-squared loss, summed over the grid and averaged over the images.

    In a cell with an object, the responsible predictor is the one of the B whose
    decoded box has the highest IoU with the object; it is trained on the box
    (``lambda_coord`` x squared error of ``x, y, sqrt w, sqrt h``) and on its confidence
    with the IoU (detached) as target. Every other predictor is a no-object predictor:
    ``lambda_noobj`` x its squared confidence. Class probabilities are trained in cells
    with an object only.

    Args:
        pred_boxes: ``(N, S, S, B, 4)`` ``(x, y, sqrt w, sqrt h)`` in ``[0, 1]``.
        pred_confidence: ``(N, S, S, B)``.
        pred_classes: ``(N, S, S, K)`` probabilities.
        targets: one :class:`YoloV1Targets` per image.
        image_size: ``(h, w)`` the grid covers.

    Returns:
        ``loss_yolo_v1_box`` (lambda_coord included), ``loss_yolo_v1_obj``,
        ``loss_yolo_v1_noobj`` (lambda_noobj included), ``loss_yolo_v1_cls``.
    """
    num_boxes = pred_boxes.shape[-2]
    has_object = torch.stack([t.has_object for t in targets])  # (N, S, S)
    gt_boxes = torch.stack([t.boxes for t in targets])  # (N, S, S, 4)
    gt_pixels = torch.stack([t.gt_boxes for t in targets])  # (N, S, S, 4)
    gt_classes = torch.stack([t.classes for t in targets])  # (N, S, S, K)

    with torch.no_grad():
        pred_pixels = decode_yolo_v1_boxes(pred_boxes, image_size)  # (N, S, S, B, 4)
        iou = paired_box_iou(pred_pixels, gt_pixels[..., None, :])  # (N, S, S, B)
        responsible_index = iou.argmax(dim=-1)  # (N, S, S), first on ties
        responsible = F.one_hot(responsible_index, num_boxes).bool() & has_object[..., None]  # (N, S, S, B)

    num_images = max(1, pred_boxes.shape[0])
    box_error = ((pred_boxes - gt_boxes[..., None, :]) ** 2).sum(dim=-1)  # (N, S, S, B)
    confidence_error = (pred_confidence - iou) ** 2  # (N, S, S, B)
    class_error = ((pred_classes - gt_classes) ** 2).sum(dim=-1)  # (N, S, S)
    return {
        "loss_yolo_v1_box": lambda_coord * box_error[responsible].sum() / num_images,
        "loss_yolo_v1_obj": confidence_error[responsible].sum() / num_images,
        "loss_yolo_v1_noobj": lambda_noobj * (pred_confidence[~responsible] ** 2).sum() / num_images,
        "loss_yolo_v1_cls": class_error[has_object].sum() / num_images,
    }


class YoloV1Head(DenseHead):
    """YOLOv1's grid head on the backbone's last feature map.

    ``forward(images, features, targets=None) -> (list[Detections], losses)``: at
    inference, per image the ``topk_candidates`` best of the ``S*S*B*K`` (box, class)
    pairs, scored ``confidence x class probability``; in training, empty detections and
    the losses of :func:`yolo_v1_loss`.

    Layers: an optional 3x3 convolution (``hidden_channels``, leaky ReLU), adaptive
    average pooling to S x S, then either two fully connected layers (``fc_channels``,
    leaky ReLU and dropout between them; the paper's 4096) or, with ``fc_channels=0``,
    a 1x1 convolution per cell.

    Args:
        in_channels: channels of every feature map (passed by the detector builder);
            only the last map is used.
        num_classes: K (passed by the detector builder).
        grid_size: S.
        boxes_per_cell: B.
        hidden_channels: channels of the 3x3 convolution; 0 for none.
        fc_channels: width of the hidden fully connected layer; 0 for a 1x1 conv predictor.
        dropout: dropout after the hidden fully connected layer.
        lambda_coord, lambda_noobj: the loss weights.
        topk_candidates: raw detections kept per image.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_classes: int,
        grid_size: int = 7,
        boxes_per_cell: int = 2,
        hidden_channels: int = 1024,
        fc_channels: int = 4096,
        dropout: float = 0.5,
        lambda_coord: float = 5.0,
        lambda_noobj: float = 0.5,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.grid_size = grid_size
        self.boxes_per_cell = boxes_per_cell
        self.lambda_coord = lambda_coord
        self.lambda_noobj = lambda_noobj
        self.topk_candidates = topk_candidates
        self.per_cell = 5 * boxes_per_cell + num_classes
        channels = in_channels[-1]
        layers: list[nn.Module] = []
        if hidden_channels > 0:
            layers += [nn.Conv2d(channels, hidden_channels, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)]
            channels = hidden_channels
        layers.append(nn.AdaptiveAvgPool2d(grid_size))
        if fc_channels > 0:
            layers += [
                nn.Flatten(),
                nn.Linear(channels * grid_size * grid_size, fc_channels),
                nn.LeakyReLU(0.1, inplace=True),
                nn.Dropout(dropout),
                nn.Linear(fc_channels, grid_size * grid_size * self.per_cell),
            ]
        else:
            layers.append(nn.Conv2d(channels, self.per_cell, 1))
        self.predictor = nn.Sequential(*layers)
        self.fully_connected = fc_channels > 0

    def class_rows(self) -> dict[str, ClassRows]:
        """The last layer's K class scores after the 5 B box terms of every grid cell."""
        last = len(self.predictor) - 1
        cells = self.grid_size**2 if self.fully_connected else 1  # an FC layer predicts every cell at once
        layout = ClassRows(groups=cells, lead=5 * self.boxes_per_cell)
        return {f"predictor.{last}.weight": layout, f"predictor.{last}.bias": layout}

    def forward(
        self, images: ImageBatch, features: FeatureMaps, targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        pred_boxes, pred_confidence, pred_classes = self._predict(list(features.maps.values())[-1])
        grid_image_size = (int(images.tensor.shape[-2]), int(images.tensor.shape[-1]))
        if self.training:
            if targets is None:
                raise ValueError("YoloV1Head needs targets in training")
            losses = self._losses(pred_boxes, pred_confidence, pred_classes, targets, grid_image_size)
            return no_detections(images), losses
        return self._raw_detections(pred_boxes, pred_confidence, pred_classes, grid_image_size, images), {}

    def _predict(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(N, C, H, W)`` -> boxes ``(N, S, S, B, 4)``, confidence ``(N, S, S, B)``, classes ``(N, S, S, K)``."""
        s, b = self.grid_size, self.boxes_per_cell
        out = self.predictor(x)
        if self.fully_connected:
            out = out.view(-1, s, s, self.per_cell)  # (N, S*S*(5B+K)) -> (N, S, S, 5B+K)
        else:
            out = out.permute(0, 2, 3, 1)  # (N, 5B+K, S, S) -> (N, S, S, 5B+K)
        box_part = out[..., : 5 * b].reshape(*out.shape[:3], b, 5).sigmoid()  # -> (N, S, S, B, 5)
        pred_classes = out[..., 5 * b :].softmax(dim=-1)  # (N, S, S, K)
        return box_part[..., :4], box_part[..., 4], pred_classes

    def _losses(
        self,
        pred_boxes: Tensor,
        pred_confidence: Tensor,
        pred_classes: Tensor,
        targets: list[Targets],
        image_size: tuple[int, int],
    ) -> Losses:
        grid_targets = []
        for targets_per_image in targets:
            t = targets_per_image.without_crowd().to(pred_boxes.device)
            grid_targets.append(
                yolo_v1_targets(
                    t.boxes, t.labels, grid_size=self.grid_size, image_size=image_size, num_classes=self.num_classes
                )
            )
        return yolo_v1_loss(
            pred_boxes, pred_confidence, pred_classes, grid_targets,
            image_size=image_size, lambda_coord=self.lambda_coord, lambda_noobj=self.lambda_noobj,
        )

    def _raw_detections(
        self,
        pred_boxes: Tensor,
        pred_confidence: Tensor,
        pred_classes: Tensor,
        grid_image_size: tuple[int, int],
        images: ImageBatch,
    ) -> list[Detections]:
        boxes_batch = decode_yolo_v1_boxes(pred_boxes, grid_image_size)  # (N, S, S, B, 4)
        # class-specific score: (N, S, S, B, 1) x (N, S, S, 1, K) -> (N, S, S, B, K)
        scores_batch = pred_confidence[..., None] * pred_classes[..., None, :]
        results = []
        for boxes, scores, size in zip(boxes_batch, scores_batch, images.image_sizes):
            boxes = clip_boxes(boxes.reshape(-1, 4), size)  # (S, S, B, 4) -> (S*S*B, 4)
            results.append(_topk_detections(boxes, scores.reshape(-1, self.num_classes), self.topk_candidates))
        return results


# --------------------------------------------------------------------------- YOLOv3 anchor grid


@dataclass
class GridAssignment:
    """Where each ground truth of an image is predicted, and its regression targets.

    Attributes:
        index: ``(G,)`` int64 prediction index in ``0..P-1``.
        level: ``(G,)`` int64 level.
        anchor: ``(G,)`` int64 anchor of the level.
        cell: ``(G, 2)`` int64 ``(column, row)`` of the cell.
        offsets: ``(G, 2)`` the centre's ``(x, y)`` offset in its cell, in ``[0, 1]``.
        log_sizes: ``(G, 2)`` ``log(w / anchor_w), log(h / anchor_h)``.
    """

    index: Tensor
    level: Tensor
    anchor: Tensor
    cell: Tensor
    offsets: Tensor
    log_sizes: Tensor


def shape_iou(sizes1: Tensor, sizes2: Tensor) -> Tensor:
    """IoU of box shapes with the same centre: ``(M, 2)`` and ``(Q, 2)`` ``(w, h)`` -> ``(M, Q)``."""
    inter = torch.minimum(sizes1[:, None, :], sizes2[None, :, :]).prod(dim=-1)  # (M, Q, 2) -> (M, Q)
    union = (sizes1[:, 0] * sizes1[:, 1])[:, None] + (sizes2[:, 0] * sizes2[:, 1])[None, :] - inter
    return inter / union.clamp(min=1e-9)


def assign_to_anchors(
    gt_boxes: Tensor, anchors: Tensor, strides: Sequence[int], grid_sizes: Sequence[tuple[int, int]]
) -> GridAssignment:
    """YOLOv3's assignment: each ground truth goes to the single anchor, over all levels, whose
    shape overlaps it best (both centred), at that level's cell containing its centre.

    Args:
        gt_boxes: ``(G, 4)`` xyxy pixels.
        anchors: ``(L, A, 2)`` anchor ``(w, h)`` pixels.
        strides: L level strides.
        grid_sizes: L ``(Hl, Wl)``.
    """
    num_anchors = anchors.shape[1]
    sizes = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=1e-6)  # (G, 2)
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (G, 2)
    best = shape_iou(sizes, anchors.reshape(-1, 2)).argmax(dim=1)  # (L, A, 2) -> (L*A, 2); best (G,)
    level, anchor = best // num_anchors, best % num_anchors
    stride = torch.tensor(list(strides), dtype=gt_boxes.dtype, device=gt_boxes.device)[level]  # (G,)
    widths = torch.tensor([w for _, w in grid_sizes], device=gt_boxes.device)[level]  # (G,)
    heights = torch.tensor([h for h, _ in grid_sizes], device=gt_boxes.device)[level]
    scaled = centres / stride[:, None]  # (G, 2) centre in cells of its level
    col = scaled[:, 0].floor().long().clamp(min=0).minimum(widths - 1)
    row = scaled[:, 1].floor().long().clamp(min=0).minimum(heights - 1)
    cell = torch.stack([col, row], dim=1)  # (G, 2)
    level_sizes = torch.tensor([h * w * num_anchors for h, w in grid_sizes], device=gt_boxes.device)
    level_start = torch.cumsum(level_sizes, 0) - level_sizes  # (L,)
    index = level_start[level] + (row * widths + col) * num_anchors + anchor
    return GridAssignment(
        index=index,
        level=level,
        anchor=anchor,
        cell=cell,
        offsets=scaled - cell.to(scaled.dtype),
        log_sizes=torch.log(sizes / anchors.reshape(-1, 2)[best]),
    )


class YoloGridHead(DenseHead):
    """YOLOv3's anchor-grid head: A anchors per cell on each of L feature maps.

    ``forward(images, features, targets=None) -> (list[Detections], losses)``: at
    inference, per image the ``topk_candidates`` best of the ``P*K`` (box, class) pairs,
    scored ``sigmoid(objectness) x sigmoid(class logit)``; in training, empty detections
    and ``loss_yolo_grid_obj``, ``loss_yolo_grid_cls``, ``loss_yolo_grid_box``, each
    summed over predictions and averaged over the images.

    Losses: objectness BCE on every prediction (target 1 where a ground truth is
    assigned, by :func:`assign_to_anchors`; unassigned predictions whose decoded box
    overlaps some ground truth at IoU > ``ignore_thresh`` are left out); class BCE
    (one-hot) and box loss on the assigned predictions; the box loss is a BCE of the
    sigmoid centre offsets plus the squared error of the log sizes. Two objects assigned
    to one prediction both train it (rare: same cell and same best anchor).

    Args:
        in_channels: channels of every feature map (passed by the detector builder);
            one per level of ``anchor_sizes``.
        num_classes: K (passed by the detector builder).
        anchor_sizes: per level, A ``(w, h)`` anchors in pixels; every level has A.
        hidden_channels: channels of a 3x3 convolution (leaky ReLU) before each
            level's 1x1 predictor; 0 for none.
        ignore_thresh: IoU above which an unassigned prediction has no objectness loss.
        topk_candidates: raw detections kept per image.
    """

    anchors: Tensor

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_classes: int,
        anchor_sizes: Sequence[Sequence[Sequence[float]]] = tuple(YOLOV3_ANCHORS),
        hidden_channels: int = 256,
        ignore_thresh: float = 0.5,
        topk_candidates: int = 1000,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(anchor_sizes):
            raise ValueError(
                f"the detector gives {len(in_channels)} feature maps but anchor_sizes lists {len(anchor_sizes)} levels"
            )
        anchors = torch.tensor([[list(map(float, a)) for a in level] for level in anchor_sizes])  # (L, A, 2)
        if anchors.dim() != 3 or anchors.shape[-1] != 2:
            raise ValueError("anchor_sizes must list, per level, the same number of [w, h] pairs")
        self.register_buffer("anchors", anchors, persistent=False)
        self.num_classes = num_classes
        self.num_anchors = int(anchors.shape[1])
        self.ignore_thresh = ignore_thresh
        self.topk_candidates = topk_candidates
        outputs = self.num_anchors * (5 + num_classes)
        self.predictors = nn.ModuleList()
        for channels in in_channels:
            layers: list[nn.Module] = []
            if hidden_channels > 0:
                layers += [nn.Conv2d(channels, hidden_channels, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)]
                channels = hidden_channels
            layers.append(nn.Conv2d(channels, outputs, 1))
            self.predictors.append(nn.Sequential(*layers))
        with torch.no_grad():
            for predictor in self.predictors:
                assert isinstance(predictor, nn.Sequential)
                last = predictor[-1]
                assert isinstance(last, nn.Conv2d) and last.bias is not None
                bias = last.bias.view(self.num_anchors, 5 + num_classes)
                bias[:, 4:] = -4.6  # objectness and class priors ~0.01: most predictions are background

    def class_rows(self) -> dict[str, ClassRows]:
        """Each level's last conv: the K class scores after the 4 box terms and the objectness of every anchor."""
        rows: dict[str, ClassRows] = {}
        for level, predictor in enumerate(self.predictors):
            assert isinstance(predictor, nn.Sequential)
            last = f"predictors.{level}.{len(predictor) - 1}"
            layout = ClassRows(groups=self.num_anchors, lead=5)
            rows |= {f"{last}.weight": layout, f"{last}.bias": layout}
        return rows

    def forward(
        self, images: ImageBatch, features: FeatureMaps, targets: list[Targets] | None = None
    ) -> tuple[list[Detections], Losses]:
        maps = list(features.maps.values())
        grid_sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        strides = [features.strides[name] for name in features.maps]
        pred = self._predict(maps)  # (N, P, 5+K)
        pred_boxes = self.decode(pred[..., :4], grid_sizes, strides)  # (N, P, 4)
        if self.training:
            if targets is None:
                raise ValueError("YoloGridHead needs targets in training")
            return no_detections(images), self._losses(pred, pred_boxes, targets, grid_sizes, strides)
        return self._raw_detections(pred, pred_boxes, images.image_sizes), {}

    def _predict(self, maps: list[Tensor]) -> Tensor:
        per_level = []
        for predictor, x in zip(self.predictors, maps):
            out = predictor(x)  # (N, A*(5+K), Hl, Wl)
            n, _, h, w = out.shape
            out = out.view(n, self.num_anchors, -1, h, w).permute(0, 3, 4, 1, 2)  # -> (N, Hl, Wl, A, 5+K)
            per_level.append(out.reshape(n, h * w * self.num_anchors, -1))  # -> (N, Hl*Wl*A, 5+K)
        return torch.cat(per_level, dim=1)  # (N, P, 5+K)

    def _grid_priors(
        self, grid_sizes: Sequence[tuple[int, int]], strides: Sequence[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per prediction: cell ``(column, row)`` ``(P, 2)``, stride ``(P, 1)``, anchor ``(w, h)`` ``(P, 2)``."""
        cells, prior_strides, prior_anchors = [], [], []
        device, dtype = self.anchors.device, self.anchors.dtype
        a = self.num_anchors
        for (h, w), stride, anchors in zip(grid_sizes, strides, self.anchors):
            rows, cols = torch.meshgrid(
                torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij"
            )
            cell = torch.stack([cols, rows], dim=-1)  # (Hl, Wl, 2)
            cells.append(cell[:, :, None, :].expand(h, w, a, 2).reshape(-1, 2))  # -> (Hl*Wl*A, 2)
            prior_strides.append(torch.full((h * w * a, 1), float(stride), device=device, dtype=dtype))
            prior_anchors.append(anchors[None].expand(h * w, a, 2).reshape(-1, 2))  # (A, 2) -> (Hl*Wl*A, 2)
        return torch.cat(cells), torch.cat(prior_strides), torch.cat(prior_anchors)

    def decode(self, pred_deltas: Tensor, grid_sizes: Sequence[tuple[int, int]], strides: Sequence[int]) -> Tensor:
        """``(..., P, 4)`` ``(tx, ty, tw, th)`` -> ``(..., P, 4)`` xyxy pixels.

        Centre ``(cell + sigmoid(t)) * stride``, size ``anchor * exp(t)``.
        """
        cells, prior_strides, prior_anchors = self._grid_priors(grid_sizes, strides)
        centres = (cells + pred_deltas[..., :2].sigmoid()) * prior_strides
        sizes = prior_anchors * pred_deltas[..., 2:].clamp(max=_LOG_SIZE_CLIP).exp()
        return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)

    def _losses(
        self,
        pred: Tensor,
        pred_boxes: Tensor,
        targets: list[Targets],
        grid_sizes: Sequence[tuple[int, int]],
        strides: Sequence[int],
    ) -> Losses:
        zero = pred.sum() * 0.0  # keeps the graph when no image has an object
        obj_loss, cls_loss, box_loss = zero, zero, zero
        for pred_per_image, boxes_per_image, targets_per_image in zip(pred, pred_boxes, targets):
            t = targets_per_image.without_crowd().to(pred.device)
            obj_target = torch.zeros_like(pred_per_image[:, 4])  # (P,)
            obj_weight = torch.ones_like(obj_target)
            if len(t) > 0:
                with torch.no_grad():
                    best_iou = box_iou(boxes_per_image, t.boxes).max(dim=1).values  # (P, G) -> (P,)
                obj_weight[best_iou > self.ignore_thresh] = 0.0
                assignment = assign_to_anchors(t.boxes, self.anchors, strides, grid_sizes)
                obj_target[assignment.index] = 1.0
                obj_weight[assignment.index] = 1.0
                assigned = pred_per_image[assignment.index]  # (G, 5+K)
                gt_classes = F.one_hot(t.labels, self.num_classes).to(pred.dtype)  # (G, K)
                cls_loss = cls_loss + F.binary_cross_entropy_with_logits(assigned[:, 5:], gt_classes, reduction="sum")
                box_loss = box_loss + F.binary_cross_entropy_with_logits(
                    assigned[:, :2], assignment.offsets, reduction="sum"
                ) + F.mse_loss(assigned[:, 2:4], assignment.log_sizes, reduction="sum")
            obj_loss = obj_loss + F.binary_cross_entropy_with_logits(
                pred_per_image[:, 4], obj_target, weight=obj_weight, reduction="sum"
            )
        num_images = max(1, pred.shape[0])
        return {
            "loss_yolo_grid_obj": obj_loss / num_images,
            "loss_yolo_grid_cls": cls_loss / num_images,
            "loss_yolo_grid_box": box_loss / num_images,
        }

    def _raw_detections(self, pred: Tensor, pred_boxes: Tensor, image_sizes: list[tuple[int, int]]) -> list[Detections]:
        # (N, P, 1) x (N, P, K) -> (N, P, K)
        scores_batch = pred[..., 4:5].sigmoid() * pred[..., 5:].sigmoid()
        return [
            _topk_detections(clip_boxes(boxes, size), scores, self.topk_candidates)
            for boxes, scores, size in zip(pred_boxes, scores_batch, image_sizes)
        ]


__all__ = [
    "YOLOV3_ANCHORS",
    "GridAssignment",
    "YoloGridHead",
    "YoloV1Head",
    "YoloV1Targets",
    "assign_to_anchors",
    "decode_yolo_v1_boxes",
    "shape_iou",
    "yolo_v1_loss",
    "yolo_v1_targets",
]
