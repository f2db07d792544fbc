"""Stage ``compare``: the trained architectures side by side, like the ExtremeC3Net paper's Table 2.

Joins, per architecture, the complexity figures (``<paths.metrics>/complexity.json`` from
the ``complexity`` stage: parameters, GFLOPs counting every operation, GMACs by the
ESPNetV2 convention, CPU latency) with the accuracy (``<paths.metrics>/eval/<arch>.json``
from ``evaluate``: mIoU in percent) and the parameter count the paper gives. Writes
``<paths.reports>/compare/`` (``table.csv``, ``table.md`` and ``accuracy_vs_params.png``:
mIoU against parameters on a log axis, the paper's Figure 1, so the accuracy/size
trade-off is read at a glance) and the DVC metrics ``<paths.metrics>/compare.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
from pydantic import Field, field_validator

from pipeline.atomic import atomic_path, write_csv, write_json, write_text
from pipeline.models.registry import Architecture
from pipeline.params import Section, load_section
from pipeline.paths import ProjectPaths
from pipeline.stage import StageError, make_parser, run_main

COMPLEXITY_KEYS = ("params", "flops_all_ops", "flops_espnetv2", "latency_ms")
COLUMNS = ["arch", "params", "paper_params", "gflops_all_ops", "gmacs_espnetv2", "latency_ms", "miou"]


class CompareParams(Section):
    architectures: list[Architecture] = Field(min_length=1)

    @field_validator("architectures")
    @classmethod
    def _listed_once(cls, value: list[str]) -> list[str]:
        twice = sorted({a for a in value if value.count(a) > 1})
        if twice:
            raise ValueError(f"architectures listed more than once: {twice}")
        return value


# ---------------------------------------------------------------- pure core


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StageError(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def build_table(architectures: list[str], complexity: dict, evals: dict[str, dict],
                paper_params: dict[str, int | None] | None = None) -> pd.DataFrame:
    """One row per architecture, in the order given; refuses missing or malformed inputs."""
    if len(set(architectures)) != len(architectures):
        raise StageError(f"architectures listed twice: {sorted({a for a in architectures if architectures.count(a) > 1})}")
    paper_params = paper_params or {}
    rows = []
    for arch in architectures:
        figures = complexity.get(arch)
        if not isinstance(figures, dict):
            raise StageError(f"complexity figures lack {arch!r}: run the complexity stage "
                             f"(`portrait-curation complexity`) with it listed")
        missing = [k for k in COMPLEXITY_KEYS if k not in figures]
        if missing:
            raise StageError(f"complexity figures of {arch!r} lack {missing}: rerun the complexity stage")
        if arch not in evals:
            raise StageError(f"no evaluation of {arch!r}: run `portrait-curation evaluate --arch {arch}` "
                             f"(after training it)")
        if "miou" not in evals[arch]:
            raise StageError(f"evaluation of {arch!r} has no 'miou': rerun the evaluate stage")
        params = _number(figures["params"], f"{arch}.params")
        if params != int(params) or params <= 0:
            raise StageError(f"{arch}.params: expected a positive whole number, got {figures['params']!r}")
        paper = paper_params.get(arch)
        rows.append({
            "arch": arch,
            "params": int(params),
            "paper_params": int(paper) if paper else pd.NA,
            "gflops_all_ops": _number(figures["flops_all_ops"], f"{arch}.flops_all_ops"),
            "gmacs_espnetv2": _number(figures["flops_espnetv2"], f"{arch}.flops_espnetv2"),
            "latency_ms": _number(figures["latency_ms"], f"{arch}.latency_ms"),
            "miou": _number(evals[arch]["miou"], f"eval {arch}.miou"),
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["paper_params"] = table["paper_params"].astype("Int64")
    return table


def _params_text(n) -> str:
    if n is pd.NA or n is None:
        return "–"
    n = int(n)
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}K"


def to_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown, with the paper's units (K/M parameters, G, ms, mIoU %)."""
    header = ["Model", "Params", "Params (paper)", "GFLOPs (all ops)", "GMACs (ESPNetV2)", "CPU latency (ms)", "mIoU (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    for row in table.itertuples(index=False):
        cells = [row.arch, _params_text(row.params), _params_text(row.paper_params), f"{row.gflops_all_ops:.3f}",
                 f"{row.gmacs_espnetv2:.3f}", f"{row.latency_ms:.1f}", f"{row.miou:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_metrics(table: pd.DataFrame) -> dict:
    """DVC metrics: per architecture its size, cost and accuracy; plus which is most accurate."""
    per_arch = {
        row.arch: {"params": int(row.params), "gflops_all_ops": round(row.gflops_all_ops, 6),
                   "gmacs_espnetv2": round(row.gmacs_espnetv2, 6), "latency_ms": round(row.latency_ms, 3),
                   "miou": round(row.miou, 4)}
        for row in table.itertuples(index=False)
    }
    best = table.loc[table["miou"].idxmax()]
    return {"architectures": per_arch, "best_miou": {"arch": best["arch"], "miou": round(float(best["miou"]), 4)}}


def plot_accuracy_vs_params(table: pd.DataFrame, path: str | Path) -> None:
    """mIoU against parameters on a log axis (the paper's Figure 1), one labelled point per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(table["params"], table["miou"], s=36, color="tab:blue", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("mIoU (%) on EG1800 test")
    ax.set_title("Accuracy against model size")
    ax.grid(True, which="both", alpha=0.3)
    low, high = table["params"].min(), table["params"].max()
    ax.set_xlim(low / 2, high * 3)
    fig.tight_layout()
    _place_labels(ax, table)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _place_labels(ax, table: pd.DataFrame) -> None:
    """Label each point at the first nearby spot whose text box overlaps no earlier label."""
    char_px, height_px = 5.2 * ax.figure.dpi / 100, 11 * ax.figure.dpi / 100
    placed: list[tuple[float, float, float, float]] = []
    for row in table.sort_values("params").itertuples(index=False):
        x, y = ax.transData.transform((row.params, row.miou))
        width = char_px * len(row.arch)
        candidates = [(5, 4), (5, -4 - height_px), (-5 - width, 4), (-5 - width, -4 - height_px),
                      (5, 6 + height_px), (5, -6 - 2 * height_px)]
        for dx, dy in candidates:
            box = (x + dx, y + dy, x + dx + width, y + dy + height_px)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        points_per_px = 72 / ax.figure.dpi
        ax.annotate(row.arch, (row.params, row.miou), textcoords="offset points", fontsize=8,
                    xytext=(dx * points_per_px, dy * points_per_px))


# ---------------------------------------------------------------- stage


def _read_json(path: Path, stage_hint: str) -> dict:
    if not path.is_file():
        raise StageError(f"{path}: not found ({stage_hint})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}: not valid JSON ({exc}); {stage_hint}") from None
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def run(params: CompareParams, paths: ProjectPaths) -> pd.DataFrame:
    """Read the complexity and evaluation metrics, write the table, the plot and compare.json."""
    from pipeline.models import get_spec

    complexity = _read_json(paths.metrics_file("complexity.json"),
                            "run the complexity stage: `portrait-curation complexity`")
    evals = {arch: _read_json(paths.metrics_file("eval", f"{arch}.json"),
                              f"run `portrait-curation evaluate --arch {arch}` after training it")
             for arch in params.architectures}
    paper = {arch: get_spec(arch).paper_params for arch in params.architectures}
    table = build_table(params.architectures, complexity, evals, paper)
    out = Path(paths.reports) / "compare"
    write_csv(out / "table.csv", table)
    write_text(out / "table.md", to_markdown(table))
    plot_accuracy_vs_params(table, out / "accuracy_vs_params.png")
    write_json(paths.metrics_file("compare.json"), summary_metrics(table))
    return table


def _body(args: argparse.Namespace) -> int:
    paths = load_section(ProjectPaths, "paths", args.params)
    table = run(load_section(CompareParams, "compare", args.params), paths)
    print(to_markdown(table), end="")
    return 0


def main(argv=None) -> int:
    return run_main(_body, make_parser("compare", __doc__.split("\n\n")[0]), argv)


if __name__ == "__main__":
    raise SystemExit(main())
