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
from pipeline.trainops import descending_order

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


def jaccard_increments(sorted_labels: torch.Tensor, sorted_valid: torch.Tensor | None = None) -> torch.Tensor:
    """``lovasz_jaccard_gradient`` of every row of (N, P) at once, optionally of the ``valid``
    pixels only, without removing the others from the sorted rows.

    An invalid pixel neither counts as a positive nor widens the union, so the Jaccard loss
    stays flat across it and its increment is exactly 0: the increments at the valid
    positions are those of the valid pixels sorted on their own (which is what
    ``lovasz_hinge(..., valid)`` computes one image at a time). A row with no valid pixel
    (or no pixel) gets increments 0.
    """
    labels = sorted_labels if sorted_valid is None else sorted_labels * sorted_valid
    negatives = 1.0 - sorted_labels if sorted_valid is None else (1.0 - sorted_labels) * sorted_valid
    positives = labels.sum(1, keepdim=True)
    intersection = positives - labels.cumsum(1)
    union = positives + negatives.cumsum(1)
    jaccard = torch.where(union > 0, 1.0 - intersection / union.clamp_min(1.0), torch.zeros_like(union))
    return torch.diff(jaccard, dim=1, prepend=torch.zeros_like(jaccard[:, :1]))


def lovasz_hinge_and_band(scores: torch.Tensor, masks: torch.Tensor,
                          band: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``lovasz_hinge(scores, masks)``, ``lovasz_hinge(scores, masks, band)``) from one batched sort.

    The band's pixels sorted by error are the image's sorted pixels with the others left out,
    so one descending sort per image serves both terms (``jaccard_increments`` zeroes the
    pixels outside the band) and no per-image loop or boolean indexing is left. The values
    equal the two separate calls up to float summation order (and the order of exactly tied
    errors, which does not change the value); the loss is computed in float32.
    """
    if scores.shape != masks.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and masks {tuple(masks.shape)} differ in shape")
    n = scores.shape[0]
    flat = scores.reshape(n, -1).float()
    labels = masks.reshape(n, -1).to(flat.dtype)
    errors = 1.0 - flat * (2.0 * labels - 1.0)
    order = descending_order(errors.detach())  # a radix sort on CPU (pipeline.trainops)
    hinge = F.relu(errors.gather(1, order))
    with torch.no_grad():
        sorted_labels = labels.gather(1, order)
        main_grad = jaccard_increments(sorted_labels)
        band_grad = (jaccard_increments(sorted_labels, band.reshape(n, -1).gather(1, order).to(flat.dtype))
                     if band is not None else None)
    main = (hinge * main_grad).sum(1).mean()
    edge = (hinge * band_grad).sum(1).mean() if band_grad is not None else main.new_zeros(())
    return main, edge


def boundary_band(masks: torch.Tensor, kernel_size: int = 7) -> torch.Tensor:
    """Pixels within the k x k dilation but outside the k x k erosion of each mask (bool, N x H x W).

    Outside the image counts as neither person nor background, so a person cut by the frame
    has no band along the frame.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"boundary kernel size must be an odd positive integer, got {kernel_size}")
    m = masks.float()
    pad = kernel_size // 2
    highest = _window_extreme(_window_extreme(m, pad, 1, torch.maximum), pad, 2, torch.maximum)
    lowest = _window_extreme(_window_extreme(m, pad, 1, torch.minimum), pad, 2, torch.minimum)
    return (highest - lowest) > 0.5


def _window_extreme(m: torch.Tensor, pad: int, dim: int, op) -> torch.Tensor:
    """The max (or min: ``op``) over the 2 pad + 1 values around each one along ``dim``, those
    inside the tensor only: ``op`` of ``m`` and its shifts, each shift on the overlap alone.
    The k x k window is one such pass per axis; a max is exact, so this equals a k x k max-pool
    with -inf padding, in a third of its time or less (PyTorch's single-channel max-pool took
    61-70 ms for a batch of 32 masks of 224 x 224 on 2 cores, this 6-19 ms)."""
    out = m.clone()
    size = m.shape[dim]
    for shift in range(1, min(pad, size - 1) + 1):
        later = out.narrow(dim, shift, size - shift)
        op(later, m.narrow(dim, 0, size - shift), out=later)
        earlier = out.narrow(dim, 0, size - shift)
        op(earlier, m.narrow(dim, shift, size - shift), out=earlier)
    return out


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
    both work); ``kind="ce"`` is the cross-entropy baseline of its ablation. ``fused`` computes
    the Lovász terms batched (``lovasz_hinge_and_band``): the same values up to float rounding,
    several times fewer operations; off, the loss is bit-identical to the per-image loop.
    """

    def __init__(self, kind: LossKind = "lovasz", boundary_weight: float = 0.5, boundary_kernel: int = 7, *,
                 fused: bool = False):
        super().__init__()
        if kind not in ("lovasz", "ce"):
            raise ValueError(f"loss kind must be 'lovasz' or 'ce', got {kind!r}")
        if boundary_weight < 0:
            raise ValueError(f"boundary weight must be >= 0, got {boundary_weight}")
        boundary_band(torch.zeros(1, 1, 1), boundary_kernel)  # validates the kernel size early
        self.kind = kind
        self.boundary_weight = float(boundary_weight)
        self.boundary_kernel = int(boundary_kernel)
        self.fused = bool(fused)  # lovasz: both terms from one batched sort (lovasz_hinge_and_band)

    def parts(self, logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask term, boundary term) before weighting."""
        logits = logits.float()  # a bf16 forward (autocast) still sorts and sums in float32; no-op otherwise
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        band = boundary_band(masks, self.boundary_kernel) if self.boundary_weight > 0 else None
        if self.kind == "lovasz" and self.fused:
            return lovasz_hinge_and_band(foreground_logit(logits), masks, band)
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
