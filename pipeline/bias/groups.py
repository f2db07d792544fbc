"""Accuracy per race, gender, age and intersectional class: the bias report's statistics.

Pure functions of the per-image IoU (a Series indexed by image key, values in 0..1) and
the attribute table (``pipeline.attributes``, one row per person); no files are read here.

How groups are formed: for each attribute, an image belongs to every distinct value its
people have, and its IoU counts once in each of those groups (an image with a woman and a
man counts once for ``woman`` and once for ``man``; two women count once for ``woman``).
``unknown`` is reported as its own row and never enters a disparity. Groups with no image
are listed (count 0, blank mIoU); groups below ``min_group_size`` are flagged and left out
of the disparity.

Disparity per attribute: max minus min of the group mIoU (x100) and the ratio min/max,
over the known groups with at least ``min_group_size`` images.

Interval: percentile bootstrap over the group's images (``resamples`` draws, level
``level``, a fixed seed per group so one group's interval does not move when another group
changes). The grouping itself is fairlearn's ``MetricFrame``; fairlearn's own bootstrap
(``n_boot``) is not used because it resamples rows of the expanded table, so an image in
two groups would be drawn independently twice and every resample would recompute every
group; resampling a group's own images is the interval the report shows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from pipeline.attributes import ATTRIBUTES, CLASSES, UNKNOWN, with_classes
from pipeline.errors import StageError

GROUPINGS = ("race", "gender", "age", "class")
NO_CLASS = "no class (an attribute unknown)"


# --- the per-image IoU -----------------------------------------------------------------


def per_image_iou(frame: pd.DataFrame, source: str, name: str = "per-image table") -> tuple[pd.Series, list[str]]:
    """IoU per image key of ``source`` (0..1), and the ids of other sources (unmatched).

    Keys come from ``id`` ("<source>/<key>") when present, else from ``image_key``.
    """
    if "iou" not in frame.columns or not ({"id", "image_key"} & set(frame.columns)):
        raise StageError(f"{name}: needs columns 'iou' and 'id' or 'image_key' (has {', '.join(frame.columns)})")
    other_sources: list[str] = []
    keys = []
    for position, row in enumerate(frame.to_dict("records"), start=1):
        if "id" in frame.columns and str(row["id"]).strip():
            src, _, key = str(row["id"]).strip().partition("/")
            if not key:
                raise StageError(f"{name}: row {position}, column 'id': {row['id']!r} is not '<source>/<key>'")
            if src != source:
                other_sources.append(str(row["id"]))
                key = None
        elif str(row.get("image_key", "")).strip():
            key = str(row["image_key"]).strip()
        else:
            raise StageError(f"{name}: row {position}: no 'id' and no 'image_key'")
        try:
            iou = float(row["iou"])
        except (TypeError, ValueError):
            iou = float("nan")
        if key is not None and not 0.0 <= iou <= 1.0:
            raise StageError(f"{name}: row {position}, column 'iou': {row['iou']!r} is not a number in 0..1")
        keys.append((key, iou))
    pairs = [(k, v) for k, v in keys if k is not None]
    series = pd.Series([v for _, v in pairs], index=pd.Index([k for k, _ in pairs], name="image_id"),
                       name="iou", dtype=float)
    if series.index.duplicated().any():
        raise StageError(f"{name}: image {series.index[series.index.duplicated()][0]!r} appears twice")
    return series, other_sources


# --- groups, intervals, disparity ------------------------------------------------------


def group_order(grouping: str) -> list[str]:
    """Rows of a grouping in report order: the scheme's values, then ``unknown`` / no class."""
    if grouping == "class":
        return [c.label for c in CLASSES] + [NO_CLASS]
    return [*ATTRIBUTES[grouping], UNKNOWN]


def class_labels(attributes: pd.DataFrame) -> list[str]:
    """Each person's intersectional class label, ``NO_CLASS`` when an attribute is unknown."""
    labels = {c.number: c.label for c in CLASSES}
    return [NO_CLASS if pd.isna(n) else labels[int(n)] for n in with_classes(attributes)["class_number"]]


def memberships(attributes: pd.DataFrame, grouping: str) -> pd.DataFrame:
    """Distinct (image_id, group) pairs: an image is in each group one of its people is in."""
    groups = class_labels(attributes) if grouping == "class" else list(attributes[grouping])
    pairs = pd.DataFrame({"image_id": list(attributes["image_id"]), "group": groups})
    return pairs.drop_duplicates().reset_index(drop=True)


def bootstrap_interval(values: np.ndarray, resamples: int, level: float, rng: np.random.Generator
                       ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``; NaNs when empty."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    chunk = max(1, 4_000_000 // values.size)  # bounds memory at a few tens of MB for large groups
    means = np.concatenate([values[rng.integers(0, values.size, size=(min(chunk, resamples - start), values.size))]
                            .mean(axis=1) for start in range(0, resamples, chunk)])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def group_rng(seed: int, grouping: str, group: str) -> np.random.Generator:
    """A generator per (grouping, group): one group's interval does not move when another changes."""
    return np.random.default_rng([seed, zlib.crc32(f"{grouping}:{group}".encode())])


def summarise_groups(iou: pd.Series, members: pd.DataFrame, grouping: str, *, min_group_size: int,
                     resamples: int, level: float, seed: int) -> pd.DataFrame:
    """One row per group of ``grouping`` (all of them, empty ones included):
    images, mIoU (x100), interval (x100) and a flag."""
    from fairlearn.metrics import MetricFrame

    joined = members.merge(iou.rename("iou"), left_on="image_id", right_index=True, how="inner")
    order = group_order(grouping)
    if len(joined):
        frame = MetricFrame(metrics={"miou": _mean_x100, "images": _count}, y_true=joined["iou"].to_numpy(),
                            y_pred=joined["iou"].to_numpy(),
                            sensitive_features=pd.Series(joined["group"].to_numpy(), name=grouping))
        by_group = frame.by_group.reindex(order)
    else:
        by_group = pd.DataFrame({"miou": np.nan, "images": np.nan}, index=pd.Index(order, name=grouping))
    rows = []
    for group in order:
        values = joined.loc[joined["group"] == group, "iou"].to_numpy()
        count = int(values.size)
        low, high = bootstrap_interval(values * 100.0, resamples, level, group_rng(seed, grouping, group))
        miou = float(by_group.at[group, "miou"]) if count else float("nan")
        rows.append({"group": group, "images": count, "miou": miou, "ci_low": low, "ci_high": high,
                     "flag": _flag(group, count, min_group_size)})
    return pd.DataFrame(rows, columns=["group", "images", "miou", "ci_low", "ci_high", "flag"])


def _mean_x100(y_true, y_pred) -> float:
    return float(np.mean(y_true)) * 100.0


def _count(y_true, y_pred) -> int:
    return len(y_true)


def _flag(group: str, count: int, min_group_size: int) -> str:
    if group in (UNKNOWN, NO_CLASS):
        return "unknown: not compared"
    if count == 0:
        return "empty"
    if count < min_group_size:
        return f"small (n < {min_group_size}): not compared"
    return ""


@dataclass
class Disparity:
    gap: float  # max - min of group mIoU (x100)
    ratio: float  # min / max
    best: str
    worst: str
    compared: list[str]
    left_out: list[str]  # known groups with at least one image but fewer than min_group_size
    gap_low: float = float("nan")  # bootstrap interval of the gap (images resampled jointly)
    gap_high: float = float("nan")


def disparity(summary: pd.DataFrame, min_group_size: int) -> Disparity:
    """Max minus min and min/max of mIoU over known groups with ``min_group_size`` images."""
    known = summary[~summary["group"].isin([UNKNOWN, NO_CLASS])]
    eligible = known[known["images"] >= min_group_size]
    left_out = list(known.loc[(known["images"] > 0) & (known["images"] < min_group_size), "group"])
    if len(eligible) < 2:
        return Disparity(float("nan"), float("nan"), "", "", list(eligible["group"]), left_out)
    best = eligible.loc[eligible["miou"].idxmax()]
    worst = eligible.loc[eligible["miou"].idxmin()]
    ratio = worst["miou"] / best["miou"] if best["miou"] > 0 else float("nan")
    return Disparity(float(best["miou"] - worst["miou"]), float(ratio), str(best["group"]), str(worst["group"]),
                     list(eligible["group"]), left_out)


def gap_interval(iou: pd.Series, members: pd.DataFrame, groups: list[str], *, resamples: int, level: float,
                 rng: np.random.Generator, chunk: int = 250) -> tuple[float, float]:
    """Percentile interval of max-min group mIoU (x100), resampling all images jointly.

    One draw of the images keeps the groups' shared images together, so the interval
    reflects the gap's own variability. The resampled gap is biased upwards when groups
    are close (a max of noisy means): read it as the spread, not as a corrected value.
    """
    joined = members[members["group"].isin(groups)].merge(iou.rename("iou"), left_on="image_id", right_index=True)
    if len(groups) < 2 or joined.empty:
        return float("nan"), float("nan")
    images = sorted(joined["image_id"].unique())
    position = {image: i for i, image in enumerate(images)}
    member = np.zeros((len(images), len(groups)))
    for image, group in zip(joined["image_id"], joined["group"]):
        member[position[image], groups.index(group)] = 1.0
    values = iou.loc[images].to_numpy(dtype=float) * 100.0
    weighted = member * values[:, None]
    n = len(images)
    chunk = max(1, min(chunk, 4_000_000 // n))
    gaps = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        # How often each image is drawn in each resample (n draws with replacement).
        draws = rng.integers(0, n, size=(size, n)) + np.arange(size)[:, None] * n
        counts = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(float)
        totals, sizes = counts @ weighted, counts @ member
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(sizes > 0, totals / sizes, np.nan)
        enough = np.sum(~np.isnan(means), axis=1) >= 2
        gaps.append(np.nanmax(means[enough], axis=1) - np.nanmin(means[enough], axis=1))
    gaps = np.concatenate(gaps)
    if gaps.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(gaps, [tail, 1.0 - tail])
    return float(low), float(high)


def class_histogram(attributes: pd.DataFrame, split_of: Mapping[str, str], default_split: str) -> pd.DataFrame:
    """Persons per intersectional class (rows, plus one for 'no class') and split (columns)."""
    frame = pd.DataFrame({
        "class": class_labels(attributes),
        "split": [split_of.get(i, default_split) for i in attributes["image_id"]],
    })
    table = pd.crosstab(frame["class"], frame["split"]).reindex(group_order("class"), fill_value=0)
    table.columns.name = None
    table.index.name = "class"
    return table.astype(int)


@dataclass
class BiasReport:
    arch: str
    summaries: dict[str, pd.DataFrame]
    disparities: dict[str, Disparity]
    histogram: pd.DataFrame
    overall_miou: float
    images_compared: int
    iou_without_attributes: list[str]
    attributes_without_iou: list[str]
    level: float
    min_group_size: int
    peer: bool = False  # a pretrained segmenter shown for comparison, not one of our trained models


def build_report(arch: str, iou: pd.Series, attributes: pd.DataFrame, split_of: Mapping[str, str], *,
                 default_split: str, min_group_size: int, resamples: int, level: float, seed: int,
                 other_sources: list[str] | None = None) -> BiasReport:
    """Everything the report shows, from the per-image IoU and the attribute table.

    ``split_of`` maps image key -> split (images it lacks count in ``default_split``);
    ``other_sources`` are per-image ids of other sources, listed as unmatched.
    """
    annotated = set(attributes["image_id"])
    measured = set(iou.index)
    summaries = {}
    disparities = {}
    for grouping in GROUPINGS:
        members = memberships(attributes, grouping)
        summary = summarise_groups(iou, members, grouping, min_group_size=min_group_size,
                                   resamples=resamples, level=level, seed=seed)
        summaries[grouping] = summary
        found = disparity(summary, min_group_size)
        found.gap_low, found.gap_high = gap_interval(
            iou, members, found.compared, resamples=resamples, level=level,
            rng=group_rng(seed, "disparity", grouping))
        disparities[grouping] = found
    common = sorted(annotated & measured)
    overall = float(iou.loc[common].mean() * 100.0) if common else float("nan")
    return BiasReport(
        arch=arch, summaries=summaries, disparities=disparities,
        histogram=class_histogram(attributes, split_of, default_split), overall_miou=overall,
        images_compared=len(common),
        iou_without_attributes=sorted(measured - annotated) + sorted(other_sources or []),
        attributes_without_iou=sorted(annotated - measured), level=level, min_group_size=min_group_size,
    )
