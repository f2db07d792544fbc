"""Training losses: the students' Lovász hinge (+ boundary band) and the teacher's cross-entropy + Dice.

Students (ExtremeC3Net and the networks it is compared with): Lovász hinge on the mask plus
the same loss on a boundary band.

The paper optimises IoU directly with the Lovász hinge (Berman et al., CVPR 2018) and adds an
auxiliary term restricted to the pixels near the person's outline, because that is where
tiny networks fail. The band is the ground truth's morphological dilation minus its erosion
with a k x k square, computed by max-pooling so it runs batched on CPU or GPU. Cross-entropy
with the same boundary term is kept for the paper's loss ablation (its Table 3).

The teacher (DeepLabv3+) trains on cross-entropy plus a soft Dice term (``cross_entropy_dice``).

Every loss takes the network's raw logits (N, C, H, W), C = 1 (one foreground logit) or
C >= 2 (class 1 = person) and a float mask (N, H, W) of 0/1.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import foreground_logit

LossKind = Literal["lovasz", "ce"]


def lovasz_jaccard_gradient(sorted_labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the Jaccard loss's Lovász extension for errors sorted in decreasing order.

    Entry i is J(first i+1 errors) - J(first i errors), where J(S) is the Jaccard loss of
    predicting wrong exactly the pixels in S: the extension is the dot product of the
    sorted errors with these increments.
    """
    positives = sorted_labels.sum()
    intersection = positives - sorted_labels.cumsum(0)
    union = positives + (1.0 - sorted_labels).cumsum(0)
    jaccard = 1.0 - intersection / union
    if sorted_labels.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovász hinge of one image's pixels: 1-D logits and 0/1 labels of the same length."""
    if logits.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph: a batch of empty bands still backpropagates
    labels = labels.to(logits.dtype)
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    grad = lovasz_jaccard_gradient(labels[order])
    return torch.dot(F.relu(errors_sorted), grad)


def lovasz_hinge(scores: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over images of the per-image Lovász hinge.

    ``scores`` (N, H, W) foreground logits, ``masks`` (N, H, W) 0/1, ``valid`` (N, H, W) bool:
    only those pixels count (the boundary band). An image with no valid pixel adds zero.
    """
    if scores.shape != masks.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and masks {tuple(masks.shape)} differ in shape")
    losses = []
    for i in range(scores.shape[0]):
        s, m = scores[i].reshape(-1), masks[i].reshape(-1)
        if valid is not None:
            keep = valid[i].reshape(-1)
            s, m = s[keep], m[keep]
        losses.append(lovasz_hinge_flat(s, m))
    return torch.stack(losses).mean()


def boundary_band(masks: torch.Tensor, kernel_size: int = 7) -> torch.Tensor:
    """Pixels within the k x k dilation but outside the k x k erosion of each mask (bool, N x H x W).

    Outside the image counts as neither person nor background, so a person cut by the frame
    has no band along the frame.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"boundary kernel size must be an odd positive integer, got {kernel_size}")
    m = masks.float().unsqueeze(1)
    pad = kernel_size // 2
    dilated = F.max_pool2d(m, kernel_size, stride=1, padding=pad)
    eroded = -F.max_pool2d(-m, kernel_size, stride=1, padding=pad)
    return (dilated - eroded).squeeze(1) > 0.5


def _cross_entropy(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """BCE for one channel, softmax CE for several; mean over the (valid) pixels."""
    if logits.shape[1] == 1:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], masks.float(), reduction="none")
    else:
        per_pixel = F.cross_entropy(logits, masks.long(), reduction="none")
    if valid is None:
        return per_pixel.mean()
    count = valid.sum()
    if count == 0:
        return per_pixel.sum() * 0.0
    return (per_pixel * valid).sum() / count


class SegmentationLoss(nn.Module):
    """``mask term + boundary_weight x the same term on the boundary band``.

    ``kind="lovasz"`` is the paper's loss (on the foreground logit, so 1- and 2-channel nets
    both work); ``kind="ce"`` is the cross-entropy baseline of its ablation.
    """

    def __init__(self, kind: LossKind = "lovasz", boundary_weight: float = 0.5, boundary_kernel: int = 7):
        super().__init__()
        if kind not in ("lovasz", "ce"):
            raise ValueError(f"loss kind must be 'lovasz' or 'ce', got {kind!r}")
        if boundary_weight < 0:
            raise ValueError(f"boundary weight must be >= 0, got {boundary_weight}")
        boundary_band(torch.zeros(1, 1, 1), boundary_kernel)  # validates the kernel size early
        self.kind = kind
        self.boundary_weight = float(boundary_weight)
        self.boundary_kernel = int(boundary_kernel)

    def parts(self, logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask term, boundary term) before weighting."""
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        band = boundary_band(masks, self.boundary_kernel) if self.boundary_weight > 0 else None
        if self.kind == "lovasz":
            scores = foreground_logit(logits)
            main = lovasz_hinge(scores, masks)
            edge = lovasz_hinge(scores, masks, band) if band is not None else main.new_zeros(())
        else:
            main = _cross_entropy(logits, masks, None)
            edge = _cross_entropy(logits, masks, band) if band is not None else main.new_zeros(())
        return main, edge

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        main, edge = self.parts(logits, masks)
        return main + self.boundary_weight * edge


def cross_entropy_dice(logits: torch.Tensor, masks: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """The teacher's loss: cross-entropy (BCE for one logit, CE for two classes) plus a soft Dice term.

    Dice keeps thin limbs and small people from being outvoted by the background.
    """
    if logits.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(logits[:, 0], masks)
        prob = torch.sigmoid(logits[:, 0])
    else:
        ce = F.cross_entropy(logits, masks.long())
        prob = torch.softmax(logits, dim=1)[:, 1]
    inter = (prob * masks).sum(dim=(1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2)) + masks.sum(dim=(1, 2)) + 1)
    return ce + dice_weight * dice.mean()
