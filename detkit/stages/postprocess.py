"""Raw detections -> final detections in original image pixels (masks pasted at full size).

Shape glossary: D detections of an image, M the side of box-relative masks,
H x W the original image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detkit.ops import at_least_float32, batched_nms, clip_boxes, remove_small_boxes, scale_boxes
from detkit.stages.base import PostProcess
from detkit.structures import Detections, ImageBatch


def paste_masks(masks: Tensor, boxes: Tensor, size: tuple[int, int], *, padding: int = 1) -> Tensor:
    """Paste box-relative masks into an image of ``size``.

    Each ``M x M`` mask is padded by ``padding`` zero pixels on every side and its box
    grown by ``(M + 2 padding) / M`` about its centre, so that the mask's border
    interpolates towards zero instead of being cut; the grown box is truncated to
    integer pixels, the mask resized bilinearly (``align_corners=False``) to the box's
    ``(y2 - y1 + 1) x (x2 - x1 + 1)`` pixels and copied where it overlaps the image.
    These are the numerics of torchvision's Mask R-CNN (``paste_masks_in_image``).

    Args:
        masks: ``(D, M, M)`` float probabilities.
        boxes: ``(D, 4)`` xyxy in the target image's pixels.
        size: ``(H, W)`` of the target image.

    Returns:
        ``(D, H, W)`` masks of ``masks``' dtype, zero outside the grown boxes.
    """
    height, width = size
    out = masks.new_zeros((masks.shape[0], height, width))
    if masks.shape[0] == 0:
        return out
    m = masks.shape[-1]
    padded = F.pad(masks, (padding,) * 4)  # (D, M, M) -> (D, M + 2p, M + 2p)
    scale = float(m + 2 * padding) / m
    centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    grown = torch.cat([centre - half, centre + half], dim=1).to(torch.int64).tolist()
    for i, (x1, y1, x2, y2) in enumerate(grown):
        box_w, box_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        # (M + 2p, M + 2p) -> (box_h, box_w)
        resized = F.interpolate(padded[i][None, None], size=(box_h, box_w), mode="bilinear", align_corners=False)[0, 0]
        ix1, iy1 = max(x1, 0), max(y1, 0)
        ix2, iy2 = min(x2 + 1, width), min(y2 + 1, height)
        if ix2 > ix1 and iy2 > iy1:
            out[i, iy1:iy2, ix1:ix2] = resized[iy1 - y1 : iy2 - y1, ix1 - x1 : ix2 - x1]
    return out


class DetectionPostProcess(PostProcess):
    """Clip, score threshold, drop tiny boxes, class-wise NMS, top-k; then rescale and paste masks.

    Boxes, scores and masks are handled and returned in float32 (float64 stays), also
    when a head ran under autocast and gave them in float16/bfloat16.

    Args:
        score_thresh: detections scoring at or below this are dropped.
        nms_thresh: IoU threshold of the class-wise NMS.
        detections_per_img: detections kept per image (highest scores).
        min_box_size: boxes narrower or shorter than this (resized pixels) are dropped;
            0 keeps every box (as torchvision's SSD).
        pre_nms_top_k: cap on candidates entering NMS (NMS is quadratic); 0 for no cap.
    """

    def __init__(
        self,
        *,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        min_box_size: float = 1e-2,
        pre_nms_top_k: int = 0,
    ) -> None:
        super().__init__()
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_box_size = min_box_size
        self.pre_nms_top_k = pre_nms_top_k

    def select(self, detections: list[Detections], images: ImageBatch) -> list[Detections]:
        return [self._select_per_image(d, size) for d, size in zip(detections, images.image_sizes)]

    def rescale(self, detections: list[Detections], images: ImageBatch) -> list[Detections]:
        return [
            self._rescale_per_image(d, size, original)
            for d, size, original in zip(detections, images.image_sizes, images.original_sizes)
        ]

    def _select_per_image(self, dets: Detections, size: tuple[int, int]) -> Detections:
        dets = dets.replace(boxes=clip_boxes(at_least_float32(dets.boxes), size), scores=at_least_float32(dets.scores))
        dets = dets[dets.scores > self.score_thresh]
        if self.min_box_size > 0:
            dets = dets[remove_small_boxes(dets.boxes, self.min_box_size)]
        if self.pre_nms_top_k and len(dets) > self.pre_nms_top_k:
            dets = dets[dets.scores.topk(self.pre_nms_top_k).indices]
        keep = batched_nms(dets.boxes, dets.scores, dets.labels, self.nms_thresh, max_kept=self.detections_per_img)
        return dets[keep]

    def _rescale_per_image(self, dets: Detections, size: tuple[int, int], original: tuple[int, int]) -> Detections:
        boxes = scale_boxes(at_least_float32(dets.boxes), size, original)
        masks = paste_masks(at_least_float32(dets.masks), boxes, original) if dets.masks is not None else None
        return dets.replace(boxes=boxes, masks=masks)
