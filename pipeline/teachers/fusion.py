"""Fusing several teachers' person probabilities into one pseudo-mask, and how far they agree.

Methods (``pseudo_label.fusion``):

- ``mean``: the plain mean of the probabilities (every teacher counts the same);
- ``weighted``: a weighted mean (``pseudo_label.fusion_weights``, normalised over the teachers
  in use), for a strong teacher beside a weaker one;
- ``logit_mean``: the sigmoid of the (weighted) mean logit, a product of experts: one very
  sure teacher outvotes an unsure one.

``teacher_agreement`` is the mean pairwise IoU of the teachers' own masks (NaN with one
teacher): two independent models that disagree flag a likely failure.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal, Sequence

import numpy as np

from pipeline.metrics import iou

FusionMethod = Literal["mean", "weighted", "logit_mean"]
FUSION_METHODS: tuple[str, ...] = ("mean", "weighted", "logit_mean")
_CLIP = 1e-6  # probabilities are clipped this far from 0 and 1 before a logit


def fusion_weights(names: Sequence[str], method: str, weights: dict[str, float]) -> np.ndarray:
    """The weight of each teacher in ``names`` (summing to 1): equal for ``mean``, from ``weights`` otherwise."""
    if method not in FUSION_METHODS:
        raise ValueError(f"fusion must be one of {', '.join(FUSION_METHODS)} (got {method!r})")
    if method == "mean":
        return np.full(len(names), 1.0 / len(names))
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"fusion {method!r}: no weight for teacher(s) {', '.join(missing)}")
    raw = np.array([float(weights[n]) for n in names])
    if not np.all(np.isfinite(raw)) or np.any(raw < 0) or raw.sum() <= 0:
        raise ValueError(f"fusion weights must be finite, >= 0 and not all 0 (got {dict(zip(names, raw))})")
    return raw / raw.sum()


def fuse(probabilities: Sequence[np.ndarray], method: str, weights: np.ndarray) -> np.ndarray:
    """One probability map (float32) from each teacher's map of the same image (same shapes)."""
    if not probabilities:
        raise ValueError("nothing to fuse")
    if len(probabilities) == 1:
        return np.asarray(probabilities[0], np.float32)
    stack = np.stack([np.asarray(p, np.float32) for p in probabilities])
    w = np.asarray(weights, np.float32).reshape(-1, 1, 1)
    if method == "logit_mean":
        clipped = np.clip(stack, _CLIP, 1 - _CLIP)
        logit = (w * (np.log(clipped) - np.log1p(-clipped))).sum(axis=0)
        return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return (w * stack).sum(axis=0).astype(np.float32)


def teacher_agreement(masks: Sequence[np.ndarray]) -> float:
    """Mean IoU over every pair of the teachers' masks; NaN with fewer than two teachers."""
    if len(masks) < 2:
        return math.nan
    return float(np.mean([iou(a, b) for a, b in itertools.combinations(masks, 2)]))
