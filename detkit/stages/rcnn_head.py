"""R-CNN (Girshick et al., CVPR 2014): a CNN on every warped proposal, one linear SVM
per class trained with hard-negative mining, class-specific box regression.

The three learned parts are trained in the paper's order:

1. **Fine-tuning** (the ``detkit train`` loop): the CNN classifies warped crops into
   K + 1 classes with softmax cross-entropy; proposals with IoU >= ``fg_iou_thresh``
   to an object take its class, the rest are background; each image contributes
   ``batch_size_per_image`` crops, ``positive_fraction`` of them objects.
2. **SVMs** (:meth:`RCNNHead.fit_svms`, after the loop): per class, positives are
   the ground-truth boxes only, negatives the proposals with IoU < ``svm_neg_iou``
   to every object of that class; training starts from a random subset of the
   negatives and repeatedly adds the *hard* ones (scored above -1, inside the
   margin) over the whole set until none is left or ``hard_negative_rounds`` ends.
3. **Box regression** (:meth:`RCNNHead.fit_box_regressors`): per class, ridge
   regression from the crop features to the box deltas of the proposals with
   IoU >= ``bbox_iou_thresh`` to an object of that class.

Features are the CNN's last map, average-pooled, through one fully connected
layer (``representation_size``), scaled so that their mean L2 norm is
``feature_norm`` before the SVMs and regressors see them (the paper's 20).
Until the SVMs are fitted (e.g. evaluations during fine-tuning) the softmax
scores the crops and the boxes are the proposals themselves.

Shape glossary: R crops, K foreground classes, D feature width, G objects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.ops import BoxCoder, box_iou
from detkit.progress import progress as show_progress
from detkit.stages.base import Backbone, ClassRows, Losses, RegionExtractor, RoIHead, no_detections
from detkit.stages.roi_heads import ProposalSampler
from detkit.structures import Detections, FeatureMaps, ImageBatch, Instances, Proposals, SampledProposals, Targets

logger = logging.getLogger(__name__)


@dataclass
class BankedProposals(Instances):
    """Crop features of proposals over a training set, with their best-matching objects.

    Attributes:
        proposal_boxes: ``(R, 4)`` the proposals.
        features: ``(R, D)`` their crop features.
        class_iou: ``(R, K)`` each proposal's best IoU with an object of each class.
        gt_labels: ``(R,)`` class of its best-matching object (0 without objects).
        gt_boxes: ``(R, 4)`` that object's box (zeros without objects).
        gt_iou: ``(R,)`` that IoU (0 without objects).
    """

    proposal_boxes: Tensor
    features: Tensor
    class_iou: Tensor
    gt_labels: Tensor
    gt_boxes: Tensor
    gt_iou: Tensor


@dataclass
class BankedObjects(Instances):
    """Crop features of the objects' own boxes over a training set: the SVMs' positives.

    Attributes:
        features: ``(G, D)``.
        labels: ``(G,)`` classes.
    """

    features: Tensor
    labels: Tensor


@dataclass
class RegionBank:
    """Crop features gathered batch by batch for the SVMs and box regressors; :meth:`cat` joins them."""

    proposals: list[BankedProposals] = field(default_factory=list)
    objects: list[BankedObjects] = field(default_factory=list)

    def cat(self) -> tuple[BankedProposals, BankedObjects]:
        return BankedProposals.cat(self.proposals), BankedObjects.cat(self.objects)


class RCNNHead(RoIHead):
    """Classify warped proposal crops with their own CNN, score them with SVMs, regress boxes.

    Args:
        region_extractor: gives the warped crops (:class:`~detkit.stages.region_features.WarpedCrops`).
        network: the CNN run on every crop (a detkit backbone; its last map is pooled).
        num_classes: K.
        representation_size: width of the fully connected layer after pooling.
        fg_iou_thresh, bg_iou_thresh: fine-tuning labels (>= fg: object, < bg: background).
        batch_size_per_image, positive_fraction: crops sampled per image in fine-tuning.
        add_gt_proposals: add the objects' boxes to the proposals in fine-tuning.
        svm_c: the SVMs' C (hinge loss, L2 regularization; the features have norm ``feature_norm``).
        svm_positive_weight: weight of the positives in the SVM loss.
        svm_neg_iou: proposals below this IoU with every object of a class are its negatives.
        initial_negatives: random negatives per class in the first SVM round.
        hard_negative_rounds: SVM rounds (each adds the negatives scored above -1).
        svm_max_proposals: top-ranked proposals per image gathered for the SVMs and regressors.
        bbox_iou_thresh: proposals at least this close to an object train its class's regressor.
        bbox_ridge: the ridge regressors' L2 penalty.
        feature_norm: mean L2 norm of the features given to the SVMs and regressors.
        crop_batch: crops per CNN call (bounds memory at inference).
        seed: seeds the random initial negatives.
    """

    fitted: Tensor
    feature_scale: Tensor
    svm_weight: Tensor
    svm_bias: Tensor
    bbox_weight: Tensor

    def __init__(
        self,
        *,
        region_extractor: RegionExtractor,
        network: Backbone,
        num_classes: int,
        representation_size: int = 256,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 64,
        positive_fraction: float = 0.25,
        add_gt_proposals: bool = True,
        svm_c: float = 1e-3,
        svm_positive_weight: float = 2.0,
        svm_neg_iou: float = 0.3,
        initial_negatives: int = 5000,
        hard_negative_rounds: int = 3,
        svm_max_proposals: int = 500,
        bbox_iou_thresh: float = 0.6,
        bbox_ridge: float = 100.0,
        feature_norm: float = 20.0,
        crop_batch: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.region_extractor = region_extractor
        self.network = network
        self.num_classes = num_classes
        self.feature_name = list(network.out_channels)[-1]
        self.fc = nn.Linear(network.out_channels[self.feature_name], representation_size)
        self.cls_score = nn.Linear(representation_size, num_classes + 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)
        self.proposal_sampler = ProposalSampler(
            fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh, batch_size_per_image=batch_size_per_image,
            positive_fraction=positive_fraction, add_gt_proposals=add_gt_proposals,
        )
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.svm_c = svm_c
        self.svm_positive_weight = svm_positive_weight
        self.svm_neg_iou = svm_neg_iou
        self.initial_negatives = initial_negatives
        self.hard_negative_rounds = hard_negative_rounds
        self.svm_max_proposals = svm_max_proposals
        self.bbox_iou_thresh = bbox_iou_thresh
        self.bbox_ridge = bbox_ridge
        self.feature_norm = feature_norm
        self.crop_batch = crop_batch
        self.seed = seed
        d = representation_size
        # fitted after fine-tuning; saved with the model
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("feature_scale", torch.ones(()))
        self.register_buffer("svm_weight", torch.zeros(num_classes, d))
        self.register_buffer("svm_bias", torch.zeros(num_classes))
        self.register_buffer("bbox_weight", torch.zeros(num_classes, d + 1, 4))

    def class_rows(self) -> dict[str, ClassRows]:
        """The softmax classifier (background first) and the per-class SVMs and box regressors."""
        return {
            "cls_score.weight": ClassRows(background=True),
            "cls_score.bias": ClassRows(background=True),
            "svm_weight": ClassRows(),
            "svm_bias": ClassRows(),
            "bbox_weight": ClassRows(),
        }

    # ------------------------------------------------------------------ features

    def features(self, images: ImageBatch, boxes: list[Tensor]) -> Tensor:
        """``(R, D)`` features of the warped crops of ``boxes`` (per image, resized pixels)."""
        crops = self.region_extractor(images, None, boxes).features
        if crops.shape[0] == 0:
            return crops.new_zeros((0, self.fc.out_features))
        chunks = [self._features(c) for c in crops.split(self.crop_batch)]
        return torch.cat(chunks)

    def _features(self, crops: Tensor) -> Tensor:
        fmap = self.network(crops)[self.feature_name]
        return F.relu(self.fc(fmap.mean(dim=(2, 3))))

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        images: ImageBatch,
        features: FeatureMaps | None,
        proposals: list[Proposals],
        targets: list[Targets] | None = None,
    ) -> tuple[list[Detections], Losses]:
        if self.training and targets is not None:
            return no_detections(images), self._fine_tuning_losses(images, proposals, targets)
        proposal_boxes = [p.boxes for p in proposals]
        return self._raw_detections(self.features(images, proposal_boxes), proposal_boxes), {}

    def _fine_tuning_losses(self, images: ImageBatch, proposals: list[Proposals], targets: list[Targets]) -> Losses:
        """Softmax cross-entropy over K + 1 classes on a balanced sample of labelled proposals."""
        sampled = self.proposal_sampler(proposals, targets)
        pred_logits = self.cls_score(self.features(images, [s.proposal_boxes for s in sampled]))
        gt_classes = SampledProposals.cat(sampled).gt_labels + 1  # background -1 -> 0
        loss = F.cross_entropy(pred_logits, gt_classes) if gt_classes.numel() else pred_logits.sum() * 0
        return {"loss_rcnn_cls": loss}

    def _raw_detections(self, feats: Tensor, boxes: list[Tensor]) -> list[Detections]:
        """Every (proposal, class) pair, scored by the SVMs (or the softmax before they exist)."""
        k = self.num_classes
        reference = torch.cat(boxes) if boxes else feats.new_zeros((0, 4))
        if bool(self.fitted):
            x = feats * self.feature_scale
            scores = torch.sigmoid(x @ self.svm_weight.T + self.svm_bias)  # (R, K)
            deltas = torch.einsum("rd,kdc->rkc", F.pad(x, (0, 1), value=1.0), self.bbox_weight)  # (R, K, 4)
            pred = self.box_coder.decode(deltas.reshape(-1, 4 * k), reference)  # (R, K, 4)
        else:
            scores = F.softmax(self.cls_score(feats), dim=-1)[:, 1:]
            pred = reference[:, None, :].expand(-1, k, -1)
        result = []
        sizes = [b.shape[0] for b in boxes]
        for boxes_i, scores_i in zip(pred.split(sizes), scores.split(sizes)):
            labels = torch.arange(k, device=scores_i.device).expand(boxes_i.shape[0], -1)
            result.append(
                Detections(boxes=boxes_i.reshape(-1, 4), scores=scores_i.reshape(-1), labels=labels.reshape(-1))
            )
        return result

    # ------------------------------------------------------------------ after fine-tuning

    def finish_training(
        self, detector: nn.Module, batches: Iterable[Any], *, device: torch.device, progress: bool = False
    ) -> dict[str, Any] | None:
        """Gather crop features over ``batches`` and fit the SVMs and box regressors."""
        return gather_and_fit(detector, batches, device=device, progress=progress)

    @torch.no_grad()
    def gather(self, images: ImageBatch, proposals: list[Proposals], targets: list[Targets], bank: RegionBank) -> None:
        """Add the features of the objects and of the top proposals of one batch to ``bank``."""
        top = [p.boxes[: self.svm_max_proposals] for p in proposals]
        gts = [t.without_crowd() for t in targets]
        proposal_features = self.features(images, top).float().cpu().split([b.shape[0] for b in top])
        object_features = self.features(images, [g.boxes for g in gts]).float().cpu().split([len(g) for g in gts])
        for boxes, feats, gt, gt_feats in zip(top, proposal_features, gts, object_features):
            gt = gt.to("cpu")
            bank.proposals.append(self._match_to_objects(boxes.float().cpu(), feats, gt))
            bank.objects.append(BankedObjects(features=gt_feats, labels=gt.labels))

    def _match_to_objects(self, boxes: Tensor, feats: Tensor, gt: Targets) -> BankedProposals:
        """Each proposal's best IoU per class and its best-matching object, for one image."""
        num = boxes.shape[0]
        if len(gt) == 0:
            zeros = torch.zeros(num)
            return BankedProposals(
                proposal_boxes=boxes, features=feats, class_iou=torch.zeros((num, self.num_classes)),
                gt_labels=torch.zeros(num, dtype=torch.int64), gt_boxes=torch.zeros_like(boxes), gt_iou=zeros,
            )
        iou = box_iou(boxes, gt.boxes)  # (P, G)
        onehot = F.one_hot(gt.labels, self.num_classes).bool()  # (G, K)
        # (P, G, 1) masked by (1, G, K) -> (P, K): the best IoU with an object of each class
        class_iou = torch.where(onehot[None], iou[:, :, None], torch.zeros(())).amax(dim=1)
        best_iou, best = iou.max(dim=1)
        return BankedProposals(
            proposal_boxes=boxes, features=feats, class_iou=class_iou,
            gt_labels=gt.labels[best], gt_boxes=gt.boxes[best], gt_iou=best_iou,
        )

    def fit(self, bank: RegionBank, *, progress: bool = False) -> dict[str, Any]:
        """Fit the SVMs and the box regressors on a gathered bank; returns a summary."""
        proposals, objects = bank.cat()
        norm = torch.cat([proposals.features, objects.features]).norm(dim=1).mean().clamp(min=1e-6)
        self.feature_scale.fill_(float(self.feature_norm / norm))
        summary = {
            "svm": self.fit_svms(proposals, objects, progress=progress),
            "bbox": self.fit_box_regressors(proposals),
        }
        self.fitted.fill_(True)
        return summary

    def fit_svms(
        self, proposals: BankedProposals, objects: BankedObjects, *, progress: bool = False
    ) -> list[dict[str, int]]:
        """One linear SVM per class, with hard-negative mining (see the module docstring)."""
        from sklearn.svm import LinearSVC

        scale = float(self.feature_scale)
        feats = (proposals.features * scale).numpy()
        gt_feats = (objects.features * scale).numpy()
        rng = np.random.default_rng(self.seed)
        summary = []
        for c in show_progress(range(self.num_classes), desc="svms", enabled=progress, leave=False):
            positives = gt_feats[(objects.labels == c).numpy()]
            pool = np.flatnonzero((proposals.class_iou[:, c] < self.svm_neg_iou).numpy())
            if len(positives) == 0 or len(pool) == 0:
                logger.warning("class %d: %d positives, %d negatives; its SVM is left at zero", c, len(positives),
                               len(pool))
                summary.append({"positives": len(positives), "negatives": 0, "rounds": 0})
                continue
            active = rng.choice(pool, size=min(self.initial_negatives, len(pool)), replace=False)
            svm = LinearSVC(C=self.svm_c, loss="hinge", dual=True, max_iter=5000,
                            class_weight={1: self.svm_positive_weight, 0: 1.0})
            rounds = 0
            for rounds in range(1, self.hard_negative_rounds + 1):  # noqa: B007 (reported below)
                x = np.concatenate([positives, feats[active]])
                y = np.concatenate([np.ones(len(positives)), np.zeros(len(active))])
                svm.fit(x, y)
                hard = pool[svm.decision_function(feats[pool]) > -1.0]
                new = np.setdiff1d(hard, active, assume_unique=False)
                if len(new) == 0:
                    break
                active = np.concatenate([active, new])
            self.svm_weight[c] = torch.as_tensor(svm.coef_[0], dtype=self.svm_weight.dtype)
            self.svm_bias[c] = float(svm.intercept_[0])
            summary.append({"positives": len(positives), "negatives": len(active), "rounds": rounds})
        return summary

    def fit_box_regressors(self, proposals: BankedProposals) -> list[int]:
        """Per class, ridge regression from features to box deltas; returns the samples per class."""
        x = F.pad(proposals.features * self.feature_scale, (0, 1), value=1.0).double()
        deltas = self.box_coder.encode(proposals.gt_boxes, proposals.proposal_boxes).double()
        counts = []
        for c in range(self.num_classes):
            use = (proposals.gt_labels == c) & (proposals.gt_iou >= self.bbox_iou_thresh)
            counts.append(int(use.sum()))
            if not use.any():
                self.bbox_weight[c] = 0.0
                continue
            xc, yc = x[use], deltas[use]
            gram = xc.T @ xc + self.bbox_ridge * torch.eye(xc.shape[1], dtype=xc.dtype)
            self.bbox_weight[c] = torch.linalg.solve(gram, xc.T @ yc).to(self.bbox_weight.dtype)
        return counts


def gather_and_fit(
    detector: Any, batches: Iterable[Any], *, device: torch.device, progress: bool = False
) -> dict[str, Any]:
    """Run ``detector``'s proposer over ``batches`` and fit its :class:`RCNNHead` (see the module docstring)."""
    head: RCNNHead = detector.roi_head
    bank = RegionBank()
    detector.eval()
    with torch.no_grad():
        for batch in show_progress(batches, desc="svm features", enabled=progress, leave=False):
            if not batch.images:
                continue
            images = [img.to(device) for img in batch.images]
            targets = [t.to(device) for t in batch.targets]
            image_batch, targets = detector.preprocess(images, targets)
            proposals, _ = detector.proposer(image_batch, None, None)
            head.gather(image_batch, proposals, targets, bank)
    if not bank.proposals:
        raise ValueError("no training images to fit the R-CNN SVMs on")
    return head.fit(bank, progress=progress)
