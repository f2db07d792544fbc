"""Stage ``bias_report``: accuracy per race, gender, age and intersectional group.

Why: a mean IoU over the whole test set hides who the model fails. The ExtremeC3Net
paper reports mIoU per group (its Table 5: seniors worst, the age disparity falling from
1.82 to 1.12 mIoU with the generated data) and the dataset's imbalance (Table 7,
Figure 5). This stage does the same for each trained architecture, with the numbers
needed to read it honestly: group sizes, a bootstrap interval per group (with 6 seniors
an interval matters more than a decimal) and small groups flagged.

How groups are formed: the attribute table has one row per (image, person). For each
attribute, an image belongs to every distinct value its people have, and its IoU counts
once in each of those groups (an image with a woman and a man counts once for ``woman``
and once for ``man``; two women count once for ``woman``). ``unknown`` is reported as its
own row and never enters a disparity. Groups with no image are listed (count 0, blank
mIoU); groups below ``min_group_size`` are flagged and left out of the disparity.

Disparity per attribute: max minus min of the group mIoU (x100) and the ratio min/max,
over the known groups with at least ``min_group_size`` images.

Interval: percentile bootstrap over the group's images (``bootstrap_resamples`` draws,
level ``confidence_level``, a fixed seed per group so one group's interval does not move
when another group changes). The grouping itself is fairlearn's ``MetricFrame``;
fairlearn's own bootstrap (``n_boot``) is not used because it resamples rows of the
expanded table, so an image in two groups would be drawn independently twice and
every resample would recompute every group; resampling a group's own images is the
interval the table reports.

Outputs per architecture: ``reports/bias/<arch>/report.md`` (tables, disparity, the
18-class histogram, the plots), ``groups.png``, ``histogram.png``, ``groups.csv`` and
``metrics/bias/<arch>.json`` (flat keys, for ``dvc metrics diff``).
"""

from __future__ import annotations

import math
import os
import re
import string
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import pandas as pd
from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.attributes import ATTRIBUTES, CLASSES, UNKNOWN, read_table, with_classes
from pipeline.params import InputPath, OutputPath, Section, load_section
from pipeline.stage import StageError, make_parser, run_main

GROUPINGS = ("race", "gender", "age", "class")
NO_CLASS = "no class (an attribute unknown)"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # an architecture becomes a folder and a file name


def check_arch_template(template: str, what: str) -> str:
    """A path in which ``{arch}`` is the only placeholder (``str.format`` would run anything else)."""
    if any(placeholder != ("arch", "", None) for placeholder in _placeholders(template, what)):
        raise ValueError(f"{what} {template!r}: the only placeholder allowed is a plain {{arch}}")
    return template


def _placeholders(template: str, what: str = "path") -> list[tuple[str, str, str | None]]:
    try:
        return [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                if name is not None]
    except ValueError as exc:
        raise ValueError(f"{what} {template!r}: {exc} (write {{arch}} for the architecture, {{{{ for a brace)") from None


class BiasReportParams(Section):
    architectures: list[str] = Field(min_length=1)
    per_image: InputPath = Field("models/{arch}/per_image.csv", description="per-image IoU table; {arch} is replaced")
    attributes_csv: InputPath = "../shared/datasets/eg1800_test_attributes.csv"
    source: str = Field("eg1800", pattern=_NAME.pattern,
                        description="dataset source the attribute table's image ids belong to")
    manifest: str = Field("data/prepared", description="manifest giving each image's split; '' = one split")
    default_split: Literal["train", "val", "test", "unlabelled"] = Field(
        "test", description="split name for images the manifest does not list")
    min_group_size: int = Field(5, ge=1, description="groups with fewer images are flagged, not compared")
    bootstrap_resamples: int = Field(2000, ge=100)
    confidence_level: float = Field(0.9, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)  # numpy refuses negative seeds
    # Output templates are checked as paths with "{arch}" as one folder or file name; an
    # architecture name is one plain component (no "/", no leading "."), so the check holds
    # for every substitution.
    report_dir: OutputPath = "reports/bias/{arch}"
    metrics: OutputPath = "metrics/bias/{arch}.json"

    @field_validator("architectures")
    @classmethod
    def _architecture_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _NAME.match(name):
                raise ValueError(f"{name!r} is not an architecture name (letters, digits, '_', '-', '.')")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"named more than once: {', '.join(repeated)}")
        return names

    @field_validator("per_image", "report_dir", "metrics")
    @classmethod
    def _arch_templates(cls, template: str, info: ValidationInfo) -> str:
        check_arch_template(template, info.field_name)
        if len(info.data.get("architectures") or []) > 1 and not _placeholders(template):
            raise ValueError(f"{template!r} has no {{arch}}: every architecture would use the same file")
        return template

    @model_validator(mode="after")
    def _metrics_outside_the_report(self):
        for arch in self.architectures:
            report_dir, metrics = self.report_dir.format(arch=arch), self.metrics.format(arch=arch)
            folder = os.path.abspath(report_dir)
            if os.path.commonpath([folder, os.path.abspath(metrics)]) == folder:
                raise ValueError(f"metrics {metrics!r} lies inside report_dir {report_dir!r}, which is replaced "
                                 "as a whole")
        return self


# --- inputs ----------------------------------------------------------------------------


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


def read_per_image(path: str | Path, source: str) -> tuple[pd.Series, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: per-image IoU table not found (has `evaluate` run for this architecture?)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: not a readable CSV ({exc})") from None
    return per_image_iou(frame, source, str(path))


# --- the core --------------------------------------------------------------------------


def group_order(grouping: str) -> list[str]:
    if grouping == "class":
        return [c.label for c in CLASSES] + [NO_CLASS]
    return [*ATTRIBUTES[grouping], UNKNOWN]


def memberships(attributes: pd.DataFrame, grouping: str) -> pd.DataFrame:
    """Distinct (image_id, group) pairs: an image is in each group one of its people is in."""
    if grouping == "class":
        numbered = with_classes(attributes)
        labels = {c.number: c.label for c in CLASSES}
        groups = [NO_CLASS if pd.isna(n) else labels[int(n)] for n in numbered["class_number"]]
    else:
        groups = list(attributes[grouping])
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
    numbered = with_classes(attributes)
    labels = {c.number: c.label for c in CLASSES}
    frame = pd.DataFrame({
        "class": [NO_CLASS if pd.isna(n) else labels[int(n)] for n in numbered["class_number"]],
        "split": [split_of.get(i, default_split) for i in numbered["image_id"]],
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
    notes: list[str] = field(default_factory=list)


def build_report(arch: str, iou: pd.Series, attributes: pd.DataFrame, split_of: Mapping[str, str], *,
                 default_split: str = "test", min_group_size: int = 10, resamples: int = 2000,
                 level: float = 0.9, seed: int = 0, other_sources: list[str] | None = None) -> BiasReport:
    """Everything the report shows, from the per-image IoU and the attribute table."""
    annotated = set(attributes["image_id"])
    measured = set(iou.index)
    summaries = {}
    disparities = {}
    for grouping in GROUPINGS:
        summary = summarise_groups(iou, memberships(attributes, grouping), grouping, min_group_size=min_group_size,
                                   resamples=resamples, level=level, seed=seed)
        summaries[grouping] = summary
        found = disparity(summary, min_group_size)
        found.gap_low, found.gap_high = gap_interval(
            iou, memberships(attributes, grouping), found.compared, resamples=resamples, level=level,
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


# --- outputs ---------------------------------------------------------------------------


def _fmt(value: float, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _examples(ids: list[str], limit: int = 8) -> str:
    if not ids:
        return ""
    more = f", ... ({len(ids) - limit} more)" if len(ids) > limit else ""
    return ": " + ", ".join(ids[:limit]) + more


def render_markdown(report: BiasReport, groups_png: str = "groups.png", histogram_png: str = "histogram.png") -> str:
    percent = f"{report.level * 100:g}%"
    lines = [
        f"# Bias report: {report.arch}",
        "",
        f"mIoU (x100) over the {report.images_compared} test images that have both an IoU and attributes: "
        f"**{_fmt(report.overall_miou)}**.",
        "",
        f"- IoU without attributes: {len(report.iou_without_attributes)} image(s)"
        f"{_examples(report.iou_without_attributes)}",
        f"- attributes without IoU: {len(report.attributes_without_iou)} image(s)"
        f"{_examples(report.attributes_without_iou)}",
        "",
        "An image counts once in every group one of its people belongs to; `unknown` is shown, never "
        f"guessed, and never compared. Intervals: {percent} percentile bootstrap over the group's images. "
        f"Groups with fewer than {report.min_group_size} images are flagged and left out of the disparity.",
        "",
        f"![mIoU per group]({groups_png})",
        "",
        "## Disparity",
        "",
        f"| attribute | groups compared | max - min mIoU | {percent} interval | min / max | best | worst | "
        "left out (small) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for grouping, d in report.disparities.items():
        interval = f"{_fmt(d.gap_low)} - {_fmt(d.gap_high)}" if not math.isnan(d.gap_low) else ""
        lines.append(f"| {grouping} | {len(d.compared)} | {_fmt(d.gap)} | {interval} | {_fmt(d.ratio, 4)} | "
                     f"{d.best} | {d.worst} | {', '.join(d.left_out)} |")
    lines += ["", "The disparity's interval resamples all images jointly; the resampled max - min is biased "
              "upwards when groups are close, so read it as the spread."]
    for grouping, summary in report.summaries.items():
        title = "intersectional class (race/gender/age)" if grouping == "class" else grouping
        lines += ["", f"## Per {title}", "",
                  f"| group | images | mIoU | {percent} interval | flag |", "| --- | ---: | ---: | --- | --- |"]
        for row in summary.to_dict("records"):
            interval = f"{_fmt(row['ci_low'])} - {_fmt(row['ci_high'])}" if row["images"] else ""
            lines.append(f"| {row['group']} | {row['images']} | {_fmt(row['miou'])} | {interval} | {row['flag']} |")
    hist = report.histogram
    lines += ["", "## Dataset histogram of the 18 classes (persons per split)", "",
              "Splits come from the prepared manifest; images it does not list count in the default split.", "",
              "| class | " + " | ".join(hist.columns) + " | total |",
              "| --- | " + " | ".join("---:" for _ in hist.columns) + " | ---: |"]
    for label, row in hist.iterrows():
        lines.append(f"| {label} | " + " | ".join(str(int(v)) for v in row) + f" | {int(row.sum())} |")
    lines += ["", f"![18-class histogram]({histogram_png})", ""]
    return "\n".join(lines)


def flat_metrics(report: BiasReport) -> dict:
    """Flat keys for ``dvc metrics diff``: per-group mIoU, interval, count; disparities."""
    metrics: dict[str, float | int] = {"overall.miou": _round(report.overall_miou),
                                       "overall.images": report.images_compared,
                                       "coverage.iou_without_attributes": len(report.iou_without_attributes),
                                       "coverage.attributes_without_iou": len(report.attributes_without_iou)}
    for grouping, summary in report.summaries.items():
        for row in summary.to_dict("records"):
            key = f"{grouping}.{_metric_name(row['group'])}"
            metrics[f"{key}.images"] = int(row["images"])
            if row["images"]:
                metrics[f"{key}.miou"] = _round(row["miou"])
                metrics[f"{key}.ci_low"] = _round(row["ci_low"])
                metrics[f"{key}.ci_high"] = _round(row["ci_high"])
        d = report.disparities[grouping]
        if not math.isnan(d.gap):
            metrics[f"{grouping}.disparity"] = _round(d.gap)
            metrics[f"{grouping}.ratio"] = _round(d.ratio, 6)
            if not math.isnan(d.gap_low):
                metrics[f"{grouping}.disparity_ci_low"] = _round(d.gap_low)
                metrics[f"{grouping}.disparity_ci_high"] = _round(d.gap_high)
    return metrics


def _metric_name(group: str) -> str:
    if group == NO_CLASS:
        return "no_class"
    return group.replace(" ", "_").replace("/", "_")


def _round(value: float, digits: int = 4):
    return None if math.isnan(value) else round(float(value), digits)


def plot_groups(report: BiasReport, path: str | Path) -> None:
    """mIoU per group with interval bars: race, gender, age on top, the 18 classes below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(13, 9), constrained_layout=True)
    grid = figure.add_gridspec(2, 3, height_ratios=[1, 1.3])
    axes = [figure.add_subplot(grid[0, i]) for i in range(3)] + [figure.add_subplot(grid[1, :])]
    for ax, grouping in zip(axes, GROUPINGS):
        summary = report.summaries[grouping]
        x = np.arange(len(summary))
        present = summary["images"].to_numpy() > 0
        miou = summary["miou"].to_numpy(dtype=float)
        low = np.where(present, miou - summary["ci_low"].to_numpy(dtype=float), 0)
        high = np.where(present, summary["ci_high"].to_numpy(dtype=float) - miou, 0)
        flags = summary["flag"].to_numpy()
        colours = np.where(flags == "", "tab:blue",
                           np.where(np.char.startswith(flags.astype(str), "small"), "tab:orange", "lightgray"))
        ax.bar(x[present], miou[present], color=colours[present], alpha=0.8)
        ax.errorbar(x[present], miou[present], yerr=[low[present], high[present]], fmt="none", ecolor="black",
                    capsize=3, linewidth=1)
        labels = [f"{g}\n(n={n})" for g, n in zip(summary["group"], summary["images"])]
        if grouping == "class":
            labels = [f"{g.split(' ')[0] if g != NO_CLASS else 'none'} {g.split(' ', 1)[-1] if g != NO_CLASS else ''}"
                      f" (n={n})" for g, n in zip(summary["group"], summary["images"])]
        ax.set_xticks(x, labels, rotation=60 if grouping == "class" else 0, ha="right" if grouping == "class" else
                      "center", fontsize=7 if grouping == "class" else 8)
        finite_low = summary.loc[present, "ci_low"].min() if present.any() else 0.0
        ax.set_ylim(max(0.0, float(finite_low) - 5.0) if present.any() else 0.0, 100.0)
        ax.set_ylabel("mIoU (x100)")
        title = "intersectional class" if grouping == "class" else grouping
        ax.set_title(f"{title}; disparity {_fmt(report.disparities[grouping].gap)}")
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{report.arch}: mIoU per group, {report.level * 100:g}% bootstrap intervals "
                    f"(orange: n < {report.min_group_size}, gray: unknown; neither is compared)")
    _save_figure(figure, path)


def plot_histogram(histogram: pd.DataFrame, path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(12, 5), constrained_layout=True)
    x = np.arange(len(histogram))
    width = 0.8 / max(1, len(histogram.columns))
    for i, split in enumerate(histogram.columns):
        counts = histogram[split].to_numpy()
        bars = ax.bar(x + (i - (len(histogram.columns) - 1) / 2) * width, counts, width, label=split)
        ax.bar_label(bars, fontsize=7)
    labels = ["none" if g == NO_CLASS else g for g in histogram.index]
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("persons")
    ax.set_title(title or "Persons per race/gender/age class ('none': an attribute unknown)")
    ax.legend(title="split")
    ax.grid(axis="y", alpha=0.3)
    _save_figure(figure, path)


def _save_figure(figure, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    from pipeline.atomic import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def write_report(report: BiasReport, report_dir: str | Path, metrics_path: str | Path) -> None:
    """All outputs of one architecture; the folder is swapped in whole."""
    from pipeline.atomic import atomic_dir, write_csv, write_json, write_text

    with atomic_dir(report_dir) as tmp:
        plot_groups(report, tmp / "groups.png")
        plot_histogram(report.histogram, tmp / "histogram.png")
        table = pd.concat([s.assign(attribute=g) for g, s in report.summaries.items()], ignore_index=True)
        write_csv(tmp / "groups.csv", table[["attribute", *table.columns[:-1]]])
        write_text(tmp / "report.md", render_markdown(report))
    write_json(metrics_path, flat_metrics(report))


# --- the stage -------------------------------------------------------------------------


def split_lookup(manifest: str, source: str) -> dict[str, str]:
    """Image key -> split from the prepared manifest ({} when it is not configured)."""
    if not manifest:
        return {}
    from pipeline.manifest import read_manifest

    try:
        frame = read_manifest(manifest)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    frame = frame[frame["source"] == source]
    return {i.split("/", 1)[1]: s for i, s in zip(frame["id"], frame["split"])}


def _parser():
    parser = make_parser("bias-report", __doc__)
    parser.add_argument("--arch", action="append", help="only this architecture (repeatable; default: all in params)")
    return parser


def _body(args) -> int:
    params = load_section(BiasReportParams, "bias_report", args.params)
    archs = args.arch or params.architectures
    unknown = [a for a in archs if a not in params.architectures]
    if unknown:
        raise StageError(f"architecture(s) {', '.join(unknown)} not in bias_report.architectures")
    attributes = read_table(params.attributes_csv)
    if attributes.empty:
        raise StageError(f"{params.attributes_csv}: no person rows")
    split_of = split_lookup(params.manifest, params.source)
    for arch in archs:
        iou, other = read_per_image(params.per_image.format(arch=arch), params.source)
        report = build_report(arch, iou, attributes, split_of, default_split=params.default_split,
                              min_group_size=params.min_group_size, resamples=params.bootstrap_resamples,
                              level=params.confidence_level, seed=params.seed, other_sources=other)
        if report.images_compared == 0:
            raise StageError(f"{arch}: no image has both an IoU and attributes (check bias_report.source and the "
                             "image ids)")
        report_dir = params.report_dir.format(arch=arch)
        write_report(report, report_dir, params.metrics.format(arch=arch))
        gaps = ", ".join(f"{g} {_fmt(d.gap)}" for g, d in report.disparities.items())
        print(f"{arch}: mIoU {_fmt(report.overall_miou)} on {report.images_compared} images; disparity {gaps}; "
              f"wrote {report_dir}/report.md")
    return 0


def main(argv=None) -> int:
    return run_main(_body, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
