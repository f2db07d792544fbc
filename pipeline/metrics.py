"""Mask metrics every stage measures the same way: IoU, boundary F1, and the ROC AUC of a score.

Conventions for empty masks (the official ExtremeC3Net code's ``EMPTY=1`` for IoU):
- IoU: both empty -> 1 (nothing to find, nothing found); exactly one empty -> 0.
- Boundary F1: the outline of a mask is its pixels with a 4-neighbour outside it; the image
  frame is not an outline. Both outlines empty -> 1; exactly one empty -> 0.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU of two boolean masks (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    union = np.logical_or(pred, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, truth).sum() / union)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it; the image frame does not count."""
    mask = np.asarray(mask, dtype=bool)
    p = np.pad(mask, 1, mode="edge")
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def boundary_f1(pred: np.ndarray, truth: np.ndarray, tolerance_px: float = 3.0) -> float:
    """F1 of outline pixels matched within ``tolerance_px`` (Euclidean) of the other outline."""
    from scipy.ndimage import distance_transform_edt

    pred_outline, truth_outline = mask_outline(pred), mask_outline(truth)
    if pred_outline.shape != truth_outline.shape:
        raise ValueError(f"prediction {pred_outline.shape} and ground truth {truth_outline.shape} differ in shape")
    has_pred, has_truth = pred_outline.any(), truth_outline.any()
    if not has_pred and not has_truth:
        return 1.0
    if not has_pred or not has_truth:
        return 0.0
    precision = float((distance_transform_edt(~truth_outline)[pred_outline] <= tolerance_px).mean())
    recall = float((distance_transform_edt(~pred_outline)[truth_outline] <= tolerance_px).mean())
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def roc_auc(scores: Iterable[float], positives: Iterable[bool]) -> float:
    """P(a random positive scores higher than a random negative), ties counting half.

    nan when either class is empty (the AUC is undefined, not 0.5).
    """
    from scipy.stats import rankdata

    scores = np.asarray(list(scores), dtype=float)
    positives = np.asarray(list(positives), dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def failure_auc(scores: Iterable[float], ious: Iterable[float], threshold: float) -> float:
    """How well a low score flags a bad pseudo-label (IoU < threshold): 1 perfect, 0.5 chance."""
    scores = np.asarray(list(scores), dtype=float)
    return roc_auc(-scores, np.asarray(list(ious), dtype=float) < threshold)
