"""pseudo_label's per-mask features as the quality model sees them.

The features are shares in [0, 1] (confidence, boundary certainty, flip agreement, the
largest component's share, presence, teacher agreement, mask fractions) and one count
(``components``). A logistic model is linear in its inputs, and what tells a good mask
from a bad one is mostly how close a share is to 1 (an agreement of 0.99 against 0.95 is
a big difference, 0.55 against 0.51 a small one), so shares enter as their logit (clipped
at ``EPSILON`` from 0 and 1, which bounds the leverage of an exact 0 or 1) and counts as
``log(1 + n)``. Then each column is standardised with the mean and spread of the rows the
model is fitted on.

Two features come from the probabilities themselves (``probability_features``, which
pseudo_label's ``mask_features`` adds to each ``Prediction``'s row); held out on 2025
labelled CCP + EG1800 photos (benchmarks/auto_accept.py) they lift the failure ROC AUC
from 0.885 to 0.894, beyond what the thresholded masks' agreement tells:
- ``mask_entropy``: how unsure the fused probability is over the mask and its uncertain
  band (a good mask is near 0 or 1 everywhere it reaches);
- ``teacher_soft_agreement``: how close the teachers' probabilities are where either sees
  a person (two teachers can agree on the thresholded mask yet one be unsure).

A named feature that is missing from a table, or empty (NaN) throughout it, is left out
with a note (one teacher: ``teacher_agreement`` is NaN for every mask); one that does not
vary over the evidence is left out too (nothing to learn from it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.errors import StageError

EPSILON = 1e-3  # shares are clipped to [EPSILON, 1 - EPSILON] before the logit
COUNT_FEATURES = frozenset({"components"})  # counts: log(1 + n); every other feature is a share in [0, 1]


ENTROPY_FLOOR = 1e-6  # probabilities are clipped to [floor, 1 - floor] before the entropy (0 log 0 = 0)


def binary_entropy(probability) -> np.ndarray:
    """Entropy in bits of a person/background probability: 0 at 0 or 1, 1 at 0.5."""
    p = np.clip(np.asarray(probability, dtype=np.float32), ENTROPY_FLOOR, 1.0 - ENTROPY_FLOOR)
    q = 1.0 - p
    return -(p * np.log2(p) + q * np.log2(q))  # float32: a whole image's pixels in a few ms


def mask_entropy(probability: np.ndarray, uncertain_band: float) -> float:
    """Mean binary entropy of the pixels with p > ``uncertain_band`` (the mask and its unsure rim).

    1.0 (as unsure as can be) where no pixel is above the band: there is no mask to trust.
    """
    probability = np.asarray(probability, dtype=np.float32)
    reached = probability > uncertain_band
    if not reached.any():
        return 1.0
    return float(binary_entropy(probability[reached]).mean(dtype=np.float64))


def teacher_soft_agreement(probabilities: Sequence[np.ndarray]) -> float:
    """1 - the mean |p_a - p_b| over the union of two teachers' masks, averaged over every pair.

    NaN with fewer than two teachers; 1.0 for a pair where neither sees a person (they agree).
    """
    probabilities = [np.asarray(p, dtype=np.float32) for p in probabilities]
    if len(probabilities) < 2:
        return float("nan")
    values = []
    for i in range(len(probabilities)):
        for j in range(i + 1, len(probabilities)):
            a, b = probabilities[i], probabilities[j]
            union = (a > 0.5) | (b > 0.5)
            values.append(1.0 - float(np.abs(a[union] - b[union]).mean(dtype=np.float64)) if union.any() else 1.0)
    return float(np.mean(values))


def probability_features(probability: np.ndarray, teacher_probabilities: dict[str, np.ndarray],
                         uncertain_band: float) -> dict[str, float]:
    """The features read from a prediction's probabilities (pseudo_label adds them to scores.csv)."""
    return {"mask_entropy": mask_entropy(probability, uncertain_band),
            "teacher_soft_agreement": teacher_soft_agreement(list(teacher_probabilities.values()))}


PROBABILITY_FEATURES = ("mask_entropy", "teacher_soft_agreement")


def transform_name(feature: str) -> str:
    return "log1p" if feature in COUNT_FEATURES else "logit"


def transform(feature: str, values) -> np.ndarray:
    """The model's input for one feature (NaN stays NaN)."""
    values = np.asarray(values, dtype=float)
    if transform_name(feature) == "log1p":
        return np.log1p(np.maximum(values, 0.0))
    clipped = np.clip(values, EPSILON, 1.0 - EPSILON)
    return np.log(clipped) - np.log1p(-clipped)


def check_ranges(frame: pd.DataFrame, features: Sequence[str], where: str) -> None:
    """Shares must lie in [0, 1] and counts be >= 0; the first value that does not is named."""
    for feature in features:
        values = pd.to_numeric(frame[feature], errors="coerce").to_numpy(dtype=float)
        finite = np.isfinite(values)
        if transform_name(feature) == "log1p":
            bad = finite & (values < 0)
            rule = "a count >= 0"
        else:
            bad = finite & ((values < 0) | (values > 1))
            rule = "a share in [0, 1]"
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            sample = frame["id"].iloc[position] if "id" in frame.columns else f"row {position + 1}"
            raise StageError(f"{where}: {sample}: {feature} = {float(values[position])!r} is not {rule}")


def usable_features(wanted: Sequence[str], tables: dict[str, pd.DataFrame]) -> tuple[list[str], list[str]]:
    """The wanted features present and not all-NaN in every table, and a note per feature left out.

    ``tables`` maps a name used in the notes ("evidence", "pool") to its frame.
    """
    used, notes = [], []
    for feature in wanted:
        missing = [name for name, frame in tables.items() if feature not in frame.columns]
        empty = [name for name, frame in tables.items()
                 if feature in frame.columns and len(frame)
                 and pd.to_numeric(frame[feature], errors="coerce").isna().all()]
        if missing:
            notes.append(f"feature {feature} left out: not a column of the {' and the '.join(missing)}")
        elif empty:
            notes.append(f"feature {feature} left out: empty (NaN) throughout the {' and the '.join(empty)} "
                         "(one teacher gives no teacher_agreement)")
        else:
            used.append(feature)
    return used, notes


def raw_matrix(frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """(rows, features) model inputs before standardisation; NaN where a value is missing."""
    if not len(features):
        return np.zeros((len(frame), 0))
    return np.column_stack([transform(f, pd.to_numeric(frame[f], errors="coerce")) for f in features])


@dataclass(frozen=True)
class Standardiser:
    """Centre and scale of each transformed feature, taken from the rows a model is fitted on."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: Sequence[str]) -> "Standardiser":
        x = raw_matrix(frame, features)
        mean = np.nanmean(x, axis=0) if len(x) else np.zeros(len(features))
        scale = np.nanstd(x, axis=0) if len(x) else np.ones(len(features))
        return cls(tuple(features), tuple(float(m) for m in mean),
                   tuple(float(s) if s > 0 else 1.0 for s in scale))

    def apply(self, frame: pd.DataFrame) -> np.ndarray:
        return (raw_matrix(frame, self.features) - np.asarray(self.mean)) / np.asarray(self.scale)


def constant_features(frame: pd.DataFrame, features: Sequence[str]) -> list[str]:
    """Features whose transformed value does not vary over ``frame`` (nothing to learn)."""
    x = raw_matrix(frame, features)
    out = []
    for column, feature in enumerate(features):
        values = x[:, column][np.isfinite(x[:, column])]
        if values.size and float(values.max() - values.min()) <= 1e-12 * max(1.0, abs(float(values.max()))):
            out.append(feature)
    return out


def complete_rows(frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """True where every feature has a finite value."""
    if not len(features):
        return np.ones(len(frame), dtype=bool)
    x = raw_matrix(frame, features)
    return np.isfinite(x).all(axis=1)


def finite_or_nan(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value if math.isfinite(value) else float("nan")
