"""The fused teachers' prediction of one image and its per-mask features (``scores.csv``'s columns).

Shared by ``pseudo_label`` (the pool and its validation rows), the engines' labeller
(``pipeline.labelling.labeller``) and the benchmarks, so none of them imports the stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import Field, field_validator
from tqdm import tqdm

from pipeline.data import UNREADABLE_SAMPLE
from pipeline.images import read_rgb, strip_root
from pipeline.metrics import iou
from pipeline.params import Section
from pipeline.quality.features import PROBABILITY_FEATURES, probability_features
from pipeline.teachers.base import Teacher, predict_views
from pipeline.teachers.fusion import fuse, fusion_weights, teacher_agreement

COMPONENTS = ("confidence", "boundary_certainty", "flip_agreement", "largest_component_share", "presence")
ComponentName = Literal["confidence", "boundary_certainty", "flip_agreement", "largest_component_share", "presence"]


class ScoreParams(Section):
    uncertain_band: float = Field(gt=0, lt=0.5)  # p in (band, 1 - band) counts as uncertain
    min_mask_fraction: float = Field(gt=0, le=1)  # smaller masks: "no person found"
    weights: dict[ComponentName, float]  # a component left out has weight 0

    @field_validator("weights")
    @classmethod
    def _usable_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in weights.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"weights must be finite and >= 0 (got {bad})")
        if not any(v > 0 for v in weights.values()):
            raise ValueError("at least one weight must be > 0, else every score is undefined")
        return weights


def score_components(probability: np.ndarray, flip_iou: float, settings: ScoreParams) -> dict[str, float]:
    """Quality components of one soft pseudo-mask (HxW person probabilities)."""
    from scipy import ndimage

    prob = np.asarray(probability, dtype=np.float32)
    mask = prob > 0.5
    area = int(mask.sum())
    certainty = np.abs(2.0 * prob - 1.0)
    uncertain = int(((prob > settings.uncertain_band) & (prob < 1 - settings.uncertain_band)).sum())
    labels, count = ndimage.label(mask)
    largest = int(np.bincount(labels.ravel())[1:].max()) if count else 0
    fraction = area / mask.size if mask.size else 0.0
    return {
        "confidence": float(certainty.mean()),
        "boundary_certainty": 1.0 / (1.0 + uncertain / max(area, 1)),
        "flip_agreement": float(flip_iou),
        "largest_component_share": largest / area if area else 0.0,
        "presence": float(min(1.0, fraction / settings.min_mask_fraction)),
        "uncertain_ratio": uncertain / max(area, 1),
        "components": int(count),
        "mask_fraction": float(fraction),
    }


def combine_score(components: dict[str, float], weights: dict[str, float]) -> float:
    """Weighted geometric mean of the [0, 1] components; nan components (no TTA) are left out."""
    total, weight_sum = 0.0, 0.0
    for name, weight in weights.items():
        value = components.get(name, float("nan"))
        if weight <= 0 or value is None or math.isnan(value):
            continue
        total += weight * math.log(max(float(value), 1e-6))
        weight_sum += weight
    return math.exp(total / weight_sum) if weight_sum else float("nan")


# ---------------------------------------------------------------------------- running the teachers


@dataclass
class Prediction:
    """The fused teachers' output on one image, at the image's own size."""

    probability: np.ndarray  # HxW float32 in [0, 1]: fused (and TTA-merged) person probability
    flip_iou: float  # IoU of the fused plain and the fused mirrored mask (nan without TTA)
    teacher_probabilities: dict[str, np.ndarray]  # each teacher's own TTA-merged probability

    @property
    def mask(self) -> np.ndarray:
        return self.probability > 0.5

    def teacher_masks(self) -> dict[str, np.ndarray]:
        return {name: p > 0.5 for name, p in self.teacher_probabilities.items()}


class FusedTeachers:
    """Several teachers run on the same batch and fused into one prediction per image."""

    def __init__(self, teachers: Sequence[Teacher], fusion: str, weights: dict[str, float], flip_tta: bool):
        self.teachers = list(teachers)
        self.names = [t.name for t in self.teachers]
        self.fusion = fusion
        self.weights = fusion_weights(self.names, fusion, weights)
        self.flip_tta = flip_tta

    @property
    def seen_ids(self) -> set[str]:
        return set().union(*(t.seen_ids for t in self.teachers))

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        views = [predict_views(t, images, self.flip_tta) for t in self.teachers]  # [teacher][image]
        out = []
        for i in range(len(images)):
            mine = [v[i] for v in views]
            plain = fuse([v.plain for v in mine], self.fusion, self.weights)
            mirrored = fuse([v.mirrored for v in mine], self.fusion, self.weights) if self.flip_tta else None
            out.append(with_views(plain, mirrored, {n: v.probability for n, v in zip(self.names, mine)}))
        return out


def with_views(plain: np.ndarray, mirrored: np.ndarray | None, teachers: dict[str, np.ndarray]) -> Prediction:
    """The prediction of fused views: their mean, and their IoU as the flip agreement."""
    if mirrored is None:
        return Prediction(plain.astype(np.float32), float("nan"), teachers)
    return Prediction((0.5 * (plain + mirrored)).astype(np.float32), iou(plain > 0.5, mirrored > 0.5), teachers)


def mask_features(prediction: Prediction, settings: ScoreParams) -> dict[str, float]:
    """Every per-mask feature of ``scores.csv``: the score's components plus the teachers' agreement."""
    features = score_components(prediction.probability, prediction.flip_iou, settings)
    masks = prediction.teacher_masks()
    features["teacher_agreement"] = teacher_agreement(list(masks.values()))
    features.update(probability_features(prediction.probability, prediction.teacher_probabilities,
                                         settings.uncertain_band))
    for name, mask in masks.items():
        features[f"{name}_mask_fraction"] = float(mask.mean()) if mask.size else 0.0
    return features


def teacher_disagreement(masks: Sequence[np.ndarray]) -> np.ndarray | None:
    """Where the teachers' masks are not all equal (True), for the review view; None with fewer than two."""
    if len(masks) < 2:
        return None
    first = np.asarray(masks[0], dtype=bool)
    differs = np.zeros(first.shape, dtype=bool)
    for other in masks[1:]:
        differs |= first != np.asarray(other, dtype=bool)
    return differs


def feature_columns(teacher_names: Sequence[str]) -> list[str]:
    return [*COMPONENTS, "uncertain_ratio", "components", "mask_fraction", "teacher_agreement",
            *PROBABILITY_FEATURES, *(f"{name}_mask_fraction" for name in teacher_names)]


def predict_rows(runner: FusedTeachers, root: Path, rows: pd.DataFrame, batch_size: int, desc: str,
                 progress: bool = True) -> Iterator[tuple[dict, np.ndarray | None, Prediction | None, str]]:
    """Yield (row, image, prediction, "") per readable row, (row, None, None, reason) otherwise.

    The reason names the file relative to ``root``, so skip lists are the same on every checkout.
    """
    pending: list[tuple[dict, np.ndarray]] = []
    bar = tqdm(total=len(rows), desc=desc, unit="img", disable=not progress)

    def flush():
        predictions = runner.predict([image for _, image in pending])
        for (row, image), prediction in zip(pending, predictions):
            yield row, image, prediction, ""
        bar.update(len(pending))
        pending.clear()

    for row in rows.to_dict("records"):
        try:
            image = read_rgb(root / row["image"])
        except UNREADABLE_SAMPLE as exc:
            bar.update(1)
            yield row, None, None, strip_root(str(exc), root)
            continue
        pending.append((row, image))
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()
    bar.close()
