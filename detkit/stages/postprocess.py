"""Raw detections -> final detections in original image pixels."""

from __future__ import annotations

from detkit.ops import batched_nms, clip_boxes, remove_small_boxes, scale_boxes
from detkit.stages.base import PostProcess
from detkit.structures import Detections, ImageBatch


class DetectionPostProcess(PostProcess):
    """Clip, score threshold, drop tiny boxes, class-wise NMS, top-k, rescale.

    Args:
        score_thresh: detections scoring at or below this are dropped.
        nms_thresh: IoU threshold of the class-wise NMS.
        detections_per_img: detections kept per image (highest scores).
        min_box_size: boxes narrower or shorter than this (resized pixels) are dropped.
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

    def forward(self, detections: list[Detections], images: ImageBatch) -> list[Detections]:
        return [
            self._per_image(d, size, original)
            for d, size, original in zip(detections, images.image_sizes, images.original_sizes)
        ]

    def _per_image(self, dets: Detections, size: tuple[int, int], original: tuple[int, int]) -> Detections:
        dets = dets.replace(boxes=clip_boxes(dets.boxes, size))
        dets = dets[dets.scores > self.score_thresh]
        dets = dets[remove_small_boxes(dets.boxes, self.min_box_size)]
        if self.pre_nms_top_k and len(dets) > self.pre_nms_top_k:
            dets = dets[dets.scores.topk(self.pre_nms_top_k).indices]
        keep = batched_nms(dets.boxes, dets.scores, dets.labels, self.nms_thresh)
        dets = dets[keep[: self.detections_per_img]]
        return dets.replace(boxes=scale_boxes(dets.boxes, size, original))
