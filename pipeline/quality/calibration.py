"""P(mask is good) by logistic regression, fitted out of fold, and how well it is calibrated.

Why logistic regression: a handful of features, a few hundred to a few thousand labelled
masks, and a number that must *mean* something (a probability the auto-accept bound and
the reviewer read). A ridge-penalised logistic model on standardised features is
calibrated by construction where it is well specified, its coefficients say which feature
pulled a mask's score down (the sidebar's "which part is low"), and it is fitted here by
Newton's method in a few lines of numpy, exactly and deterministically.

Out of fold: every evidence row's probability comes from a model that never saw it nor any
row of the same parent photo (folds are groups of photos: a full-body photo, its portrait
crops and a person's decisions on masks of that photo are one group), so the reliability,
Brier score, ROC AUC and the auto-accept threshold are measured on masks the model was not
fitted on. The pool is scored by one model fitted on all the evidence.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.metrics import roc_auc
from pipeline.quality.features import Standardiser, transform_name

MAX_NEWTON_STEPS = 100


def _sigmoid(eta: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * eta))  # overflow-free


def fit_logistic_arrays(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """(intercept, coefficients) minimising the log loss + ``l2``/2 * |coefficients|^2 (intercept free).

    Newton's method with a step halving when the penalised loss would rise: converges from
    zero for any data, separable data included (the penalty keeps the optimum finite).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n, d = x.shape
    design = np.column_stack([np.ones(n), x])
    penalty = np.full(d + 1, float(l2))
    penalty[0] = 0.0
    w = np.zeros(d + 1)
    base = y.mean() if n else 0.5
    if 0.0 < base < 1.0:
        w[0] = math.log(base / (1.0 - base))

    def loss(weights):
        eta = design @ weights
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta) + 0.5 * np.sum(penalty * weights ** 2))

    current = loss(w)
    for _ in range(MAX_NEWTON_STEPS):
        p = _sigmoid(design @ w)
        gradient = design.T @ (p - y) + penalty * w
        hessian = design.T @ (design * (p * (1.0 - p))[:, None]) + np.diag(penalty) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while True:
            candidate = w - size * step
            value = loss(candidate)
            if value <= current + 1e-12 or size < 1e-6:
                break
            size *= 0.5
        w, previous, current = candidate, current, value
        if np.max(np.abs(size * step)) < 1e-9 or abs(previous - current) < 1e-12 * max(1.0, abs(current)):
            break
    return float(w[0]), w[1:]


@dataclass(frozen=True)
class LogisticModel:
    """A fitted quality model: what it reads, how it scales it, and its weights."""

    features: tuple[str, ...]
    transforms: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    intercept: float
    coefficients: tuple[float, ...]
    l2: float
    fitted_on: int  # evidence rows

    @property
    def standardiser(self) -> Standardiser:
        return Standardiser(self.features, self.mean, self.scale)

    def logit(self, frame: pd.DataFrame) -> np.ndarray:
        return self.intercept + self.standardiser.apply(frame) @ np.asarray(self.coefficients)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """P(good) per row; NaN where a feature is missing."""
        return _sigmoid(self.logit(frame))

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Each feature's push on the logit, against a mask with the evidence's average features.

        ``coefficient * standardised value``: negative = this feature makes the mask look worse
        than the average evidence mask.
        """
        z = self.standardiser.apply(frame) * np.asarray(self.coefficients)
        return pd.DataFrame(z, columns=list(self.features), index=frame.index)

    def as_dict(self) -> dict:
        out = asdict(self)
        for key in ("features", "transforms", "mean", "scale", "coefficients"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "LogisticModel":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def fingerprint(self) -> str:
        """Short hash of the fitted model: names the exact rule in every auto decision."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit_model(frame: pd.DataFrame, good: np.ndarray, features: Sequence[str], l2: float) -> LogisticModel:
    """Standardise on ``frame`` and fit; ``frame`` must have a finite value of every feature."""
    scaler = Standardiser.fit(frame, features)
    intercept, coefficients = fit_logistic_arrays(scaler.apply(frame), np.asarray(good, dtype=float), l2)
    return LogisticModel(tuple(features), tuple(transform_name(f) for f in features), scaler.mean, scaler.scale,
                         round(intercept, 10), tuple(round(float(c), 10) for c in coefficients), float(l2), len(frame))


def low_part(contributions: pd.DataFrame) -> pd.Series:
    """Per row, the feature that pulls the score down most ("" when none pulls it down)."""
    if contributions.shape[1] == 0:
        return pd.Series([""] * len(contributions), index=contributions.index)
    values = contributions.to_numpy(dtype=float)
    safe = np.where(np.isfinite(values), values, np.inf)
    worst = np.argmin(safe, axis=1)
    names = np.asarray(contributions.columns)[worst]
    negative = safe[np.arange(len(safe)), worst] < 0
    return pd.Series(np.where(negative, names, ""), index=contributions.index)


# ---------------------------------------------------------------------------- cross-fitting


def group_folds(groups: Sequence[str], good: Sequence[bool], folds: int, seed: int) -> np.ndarray:
    """A fold number per row; all rows of one group share it.

    Groups are shuffled with ``seed``, those holding a bad mask first, then dealt round-robin,
    so the (rarer) failures spread over every fold and the folds differ in size by at most
    one group.
    """
    groups = pd.Series(list(groups), dtype=str)
    bad = pd.Series(~np.asarray(good, dtype=bool)).groupby(groups.to_numpy()).any()
    rng = np.random.default_rng(seed)
    names = np.asarray(sorted(bad.index))
    shuffled = names[rng.permutation(len(names))]
    ordered = sorted(shuffled, key=lambda g: not bad[g])  # stable: bad-holding groups first, else shuffled
    fold_of = {group: position % folds for position, group in enumerate(ordered)}
    return groups.map(fold_of).to_numpy(dtype=int)


@dataclass(frozen=True)
class CrossFit:
    probability: np.ndarray  # out-of-fold P(good) per evidence row
    fold: np.ndarray
    models: tuple[LogisticModel, ...]  # one per fold (fitted without that fold)


def cross_fit(frame: pd.DataFrame, good: np.ndarray, groups: Sequence[str], features: Sequence[str], *,
              folds: int, l2: float, seed: int) -> CrossFit:
    """Out-of-fold probabilities: each fold predicted by a model fitted on the others."""
    good = np.asarray(good, dtype=bool)
    fold = group_folds(groups, good, folds, seed)
    probability = np.full(len(frame), np.nan)
    models = []
    for k in range(folds):
        held = fold == k
        if not held.any():
            continue
        model = fit_model(frame[~held], good[~held], features, l2)
        probability[held] = model.predict(frame[held])
        models.append(model)
    return CrossFit(probability, fold, tuple(models))


# ---------------------------------------------------------------------------- how good is it


def brier(probability: np.ndarray, good: np.ndarray) -> float:
    probability, good = np.asarray(probability, float), np.asarray(good, float)
    return float(np.mean((probability - good) ** 2)) if probability.size else float("nan")


def reliability_table(probability: np.ndarray, good: np.ndarray, bins: int) -> pd.DataFrame:
    """Predicted against observed per equal-width bin of P(good) (empty bins left out)."""
    probability, good = np.asarray(probability, float), np.asarray(good, bool)
    index = np.minimum((probability * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            rows.append({"bin_low": round(b / bins, 6), "bin_high": round((b + 1) / bins, 6),
                         "masks": int(inside.sum()), "mean_predicted": float(probability[inside].mean()),
                         "observed_good": float(good[inside].mean())})
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "masks", "mean_predicted", "observed_good"])


def calibration_summary(probability: np.ndarray, good: np.ndarray, bins: int) -> dict:
    """Brier score (and the base rate's, for scale), expected calibration error, failure ROC AUC."""
    probability, good = np.asarray(probability, float), np.asarray(good, bool)
    table = reliability_table(probability, good, bins)
    n = len(probability)
    base = float(good.mean()) if n else float("nan")
    ece = float((table["masks"] * (table["mean_predicted"] - table["observed_good"]).abs()).sum() / n) if n else \
        float("nan")
    return {
        "masks": n, "good": int(good.sum()), "bad": int((~good).sum()),
        "brier": _round(brier(probability, good)),
        "brier_of_base_rate": _round(base * (1 - base)) if n else None,
        "expected_calibration_error": _round(ece),
        "failure_auc": _round(roc_auc(-probability, ~good)),  # a low P(good) flags a bad mask
        "reliability": [{k: (_round(v) if isinstance(v, float) else v) for k, v in row.items()}
                        for row in table.to_dict("records")],
    }


def _round(value, digits: int = 6):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, digits)
