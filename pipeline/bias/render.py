"""The bias report as people and DVC read it: Markdown, flat metrics, two plots.

Everything here is a function of a ``BiasReport`` (``pipeline.bias.groups``); the plots are
written through ``atomic_path``, so a reader never sees half a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_path
from pipeline.bias.groups import GROUPINGS, NO_CLASS, BiasReport


def fmt(value: float, digits: int = 2) -> str:
    """A number as the report prints it; blank for a missing one (NaN)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _examples(ids: list[str], limit: int = 8) -> str:
    if not ids:
        return ""
    more = f", ... ({len(ids) - limit} more)" if len(ids) > limit else ""
    return ": " + ", ".join(ids[:limit]) + more


# File names inside a report folder; report.md links the plots by these names.
REPORT_MD, GROUPS_CSV, GROUPS_PNG, HISTOGRAM_PNG = "report.md", "groups.csv", "groups.png", "histogram.png"


PEER_NOTE = "peer: a pretrained segmenter a user could pick instead, not trained here"


def report_title(report: BiasReport) -> str:
    return f"{report.arch} ({PEER_NOTE})" if report.peer else report.arch


def render_markdown(report: BiasReport, groups_png: str = GROUPS_PNG, histogram_png: str = HISTOGRAM_PNG,
                    peers: dict[str, BiasReport] | None = None) -> str:
    """report.md: coverage, disparity per attribute, one table per grouping, the peers beside it, the histogram."""
    percent = f"{report.level * 100:g}%"
    lines = [
        f"# Bias report: {report_title(report)}",
        "",
        f"mIoU (x100) over the {report.images_compared} test images that have both an IoU and attributes: "
        f"**{fmt(report.overall_miou)}**.",
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
        interval = f"{fmt(d.gap_low)} - {fmt(d.gap_high)}" if not math.isnan(d.gap_low) else ""
        lines.append(f"| {grouping} | {len(d.compared)} | {fmt(d.gap)} | {interval} | {fmt(d.ratio, 4)} | "
                     f"{d.best} | {d.worst} | {', '.join(d.left_out)} |")
    lines += ["", "The disparity's interval resamples all images jointly; the resampled max - min is biased "
              "upwards when groups are close, so read it as the spread."]
    for grouping, summary in report.summaries.items():
        title = "intersectional class (race/gender/age)" if grouping == "class" else grouping
        lines += ["", f"## Per {title}", "",
                  f"| group | images | mIoU | {percent} interval | flag |", "| --- | ---: | ---: | --- | --- |"]
        for row in summary.to_dict("records"):
            interval = f"{fmt(row['ci_low'])} - {fmt(row['ci_high'])}" if row["images"] else ""
            lines.append(f"| {row['group']} | {row['images']} | {fmt(row['miou'])} | {interval} | {row['flag']} |")
    if peers:
        lines += peer_comparison(report, peers)
    hist = report.histogram
    lines += ["", "## Dataset histogram of the 18 classes (persons per split)", "",
              "Splits come from the prepared manifest; images it does not list count in the default split.", "",
              "| class | " + " | ".join(hist.columns) + " | total |",
              "| --- | " + " | ".join("---:" for _ in hist.columns) + " | ---: |"]
    for label, row in hist.iterrows():
        lines.append(f"| {label} | " + " | ".join(str(int(v)) for v in row) + f" | {int(row.sum())} |")
    lines += ["", f"![18-class histogram]({histogram_png})", ""]
    return "\n".join(lines)


def peer_comparison(report: BiasReport, peers: dict[str, BiasReport]) -> list[str]:
    """Markdown lines: this model's group mIoU and disparities beside each peer's, on the same images."""
    percent = f"{report.level * 100:g}%"
    names = list(peers)
    about = (f"Peers ({', '.join(names)}) are pretrained segmenters a user could pick instead, evaluated on the same "
             f"test images by `evaluate --peer`; each has its own report (`bias/peer_<name>/` in the reports folder). "
             f"Cells: mIoU ({percent} interval); groups flagged above are shown but not compared.")
    lines = ["", "## Against the peers", "", about, "",
             f"| attribute | group | images | {report.arch} | " + " | ".join(f"{n} (peer)" for n in names) + " |",
             "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " |"]
    lines.append(f"| all | all | {report.images_compared} | {fmt(report.overall_miou)} | "
                 + " | ".join(fmt(peers[n].overall_miou) for n in names) + " |")
    for grouping in ("race", "gender", "age"):
        ours = report.summaries[grouping].set_index("group")
        theirs = {n: peers[n].summaries[grouping].set_index("group") for n in names}
        for group, row in ours.iterrows():
            if not row["images"]:
                continue
            cells = [_cell(row)] + [_cell(theirs[n].loc[group]) if group in theirs[n].index else "" for n in names]
            lines.append(f"| {grouping} | {group} | {int(row['images'])} | " + " | ".join(cells) + " |")
        lines.append(f"| {grouping} | disparity (max - min) | | {fmt(report.disparities[grouping].gap)} | "
                     + " | ".join(fmt(peers[n].disparities[grouping].gap) for n in names) + " |")
    return lines


def _cell(row) -> str:
    if not row["images"]:
        return ""
    return f"{fmt(row['miou'])} ({fmt(row['ci_low'])} - {fmt(row['ci_high'])})"


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
        ax.set_title(f"{title}; disparity {fmt(report.disparities[grouping].gap)}")
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{report.arch}{' (peer, not trained here)' if report.peer else ''}: mIoU per group, {report.level * 100:g}% bootstrap intervals "
                    f"(orange: n < {report.min_group_size}, gray: unknown; neither is compared)")
    _save_figure(figure, path)


def plot_histogram(histogram: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Persons per intersectional class, one bar per split."""
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

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def groups_table(report: BiasReport) -> pd.DataFrame:
    """groups.csv: every grouping's summary in one table, the grouping in the first column."""
    table = pd.concat([s.assign(attribute=g) for g, s in report.summaries.items()], ignore_index=True)
    return table[["attribute", *table.columns[:-1]]]
