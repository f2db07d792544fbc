"""Stage ``compare``: the trained architectures side by side, like the ExtremeC3Net paper's Table 2.

Joins, per architecture, the complexity figures (``<paths.metrics>/complexity.json`` from
the ``complexity`` stage: parameters, GFLOPs counting every operation, GMACs by the
ESPNetV2 convention, CPU latency) with the accuracy (``<paths.metrics>/eval/<arch>.json``
from ``evaluate``: mIoU in percent) and the parameter count the paper gives. Writes
``<paths.reports>/compare/`` (``table.csv``, ``table.md`` and ``accuracy_vs_params.png``:
mIoU against parameters on a log axis, the paper's Figure 1, so the accuracy/size
trade-off is read at a glance) and the DVC metrics ``<paths.metrics>/compare.json``.

Peers (``compare.peers``): pretrained segmenters a user could pick instead (MediaPipe's
selfie segmenter), evaluated by ``evaluate --peer`` on the same test images
(``<paths.metrics>/eval/peer_<name>.json``, which also holds the figures of its PyTorch port:
parameters, FLOPs at its own input size, latency). They are rows of their own, marked
``peer``, drawn apart in the plot, and never the "best" of our models. Their latency is the
port's in PyTorch, timed in ``evaluate``, not interleaved with ours: read it as a rough figure.
Where an evaluation carries a bootstrap interval (``miou_low``/``miou_high``), the table shows it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pandas as pd
from pydantic import Field, field_validator

from pipeline.atomic import atomic_path, write_csv, write_json, write_text
from pipeline.models.registry import Architecture
from pipeline.params import Section, load_section
from pipeline.paths import ProjectPaths
from pipeline.stage import StageError, make_parser, run_main

COMPLEXITY_KEYS = ("params", "flops_all_ops", "flops_espnetv2", "latency_ms")
COLUMNS = ["arch", "kind", "label", "params", "paper_params", "gflops_all_ops", "gmacs_espnetv2", "latency_ms",
           "miou", "miou_low", "miou_high", "boundary_f1"]
_PEER_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class CompareParams(Section):
    architectures: list[Architecture] = Field(min_length=1)
    peers: list[str]  # evaluate.peers: shown as peer rows (evaluate --peer NAME)

    @field_validator("architectures", "peers")
    @classmethod
    def _listed_once(cls, value: list[str]) -> list[str]:
        twice = sorted({a for a in value if value.count(a) > 1})
        if twice:
            raise ValueError(f"listed more than once: {twice}")
        return value

    @field_validator("peers")
    @classmethod
    def _peer_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _PEER_NAME.match(name):
                raise ValueError(f"{name!r} is not a peer name (lower-case letters, digits, '_')")
        return value


# ---------------------------------------------------------------- pure core


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StageError(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def _optional_number(figures: dict, key: str, what: str):
    return _number(figures[key], f"{what}.{key}") if figures.get(key) is not None else float("nan")


def _accuracy(figures: dict, what: str) -> dict:
    return {"miou": _number(figures["miou"], f"{what}.miou"),
            **{key: _optional_number(figures, key, what) for key in ("miou_low", "miou_high", "boundary_f1")}}


def _whole_positive(value, what: str) -> int:
    number = _number(value, what)
    if number != int(number) or number <= 0:
        raise StageError(f"{what}: expected a positive whole number, got {value!r}")
    return int(number)


def peer_rows(peers: dict[str, dict]) -> list[dict]:
    """Rows for pretrained peers from their ``evaluate --peer`` metrics (accuracy and the port's cost)."""
    rows = []
    for name, figures in peers.items():
        what = f"eval peer_{name}"
        missing = [k for k in ("miou", *COMPLEXITY_KEYS) if k not in figures]
        if missing:
            raise StageError(f"{what} lacks {missing}: rerun `portrait-curation evaluate --peer {name}`")
        rows.append({"arch": name, "kind": "peer", "label": str(figures.get("label") or name),
                     "params": _whole_positive(figures["params"], f"{what}.params"), "paper_params": pd.NA,
                     "gflops_all_ops": _number(figures["flops_all_ops"], f"{what}.flops_all_ops"),
                     "gmacs_espnetv2": _number(figures["flops_espnetv2"], f"{what}.flops_espnetv2"),
                     "latency_ms": _number(figures["latency_ms"], f"{what}.latency_ms"), **_accuracy(figures, what)})
    return rows


def build_table(architectures: list[str], complexity: dict, evals: dict[str, dict],
                paper_params: dict[str, int | None] | None = None, peers: dict[str, dict] | None = None
                ) -> pd.DataFrame:
    """One row per architecture, in the order given, then one per peer; refuses missing or malformed inputs."""
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
        paper = paper_params.get(arch)
        rows.append({
            "arch": arch,
            "kind": "trained",
            "label": arch,
            "params": _whole_positive(figures["params"], f"{arch}.params"),
            "paper_params": int(paper) if paper else pd.NA,
            "gflops_all_ops": _number(figures["flops_all_ops"], f"{arch}.flops_all_ops"),
            "gmacs_espnetv2": _number(figures["flops_espnetv2"], f"{arch}.flops_espnetv2"),
            "latency_ms": _number(figures["latency_ms"], f"{arch}.latency_ms"),
            **_accuracy(evals[arch], f"eval {arch}"),
        })
    clash = sorted(set(architectures) & set(peers or {}))
    if clash:
        raise StageError(f"named both as an architecture and as a peer: {clash}")
    table = pd.DataFrame(rows + peer_rows(peers or {}), columns=COLUMNS)
    table["paper_params"] = table["paper_params"].astype("Int64")
    return table


def _params_text(n) -> str:
    if n is pd.NA or n is None:
        return "–"
    n = int(n)
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}K"


def _maybe(value: float, digits: int = 2) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def to_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown, with the paper's units (K/M parameters, G, ms, mIoU %); peers marked."""
    header = ["Model", "Params", "Params (paper)", "GFLOPs (all ops)", "GMACs (ESPNetV2)", "CPU latency (ms)", "mIoU (%)",
              "mIoU interval", "Boundary F1 (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    for row in table.itertuples(index=False):
        peer = row.kind == "peer"
        name = f"{row.label} — peer, pretrained, not trained here" if peer else row.arch
        interval = "–" if pd.isna(row.miou_low) else f"{row.miou_low:.2f}–{row.miou_high:.2f}"
        cells = [name, _params_text(row.params), _params_text(row.paper_params), f"{row.gflops_all_ops:.3f}",
                 f"{row.gmacs_espnetv2:.3f}", f"{row.latency_ms:.1f}" + (" (port)" if peer else ""), f"{row.miou:.2f}",
                 interval, _maybe(row.boundary_f1)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if (table["kind"] == "peer").any():
        notes.append("Peers are pretrained segmenters a user could pick instead, evaluated on the same images; their "
                     "FLOPs are at their own input size and their latency is their PyTorch port's (\"(port)\"), timed "
                     "apart from ours, not MediaPipe's own runtime.")
    if table["miou_low"].notna().any():
        notes.append("mIoU interval: percentile bootstrap over the test images (level in metrics/eval/*.json).")
    return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)


def summary_metrics(table: pd.DataFrame) -> dict:
    """DVC metrics: per architecture its size, cost and accuracy; plus which is most accurate."""
    def figures(row) -> dict:
        out = {"params": int(row.params), "gflops_all_ops": round(row.gflops_all_ops, 6),
               "gmacs_espnetv2": round(row.gmacs_espnetv2, 6), "latency_ms": round(row.latency_ms, 3),
               "miou": round(row.miou, 4)}
        out.update({k: round(getattr(row, k), 4) for k in ("miou_low", "miou_high") if not pd.isna(getattr(row, k))})
        return out

    trained = table[table["kind"] == "trained"]
    per_arch = {row.arch: figures(row) for row in trained.itertuples(index=False)}
    best = trained.loc[trained["miou"].idxmax()]
    metrics = {"architectures": per_arch, "best_miou": {"arch": best["arch"], "miou": round(float(best["miou"]), 4)}}
    peers = {row.arch: figures(row) for row in table[table["kind"] == "peer"].itertuples(index=False)}
    if peers:
        metrics["peers"] = peers
    return metrics


def plot_accuracy_vs_params(table: pd.DataFrame, path: str | Path) -> None:
    """mIoU against parameters on a log axis (the paper's Figure 1), one labelled point per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    trained, peers = table[table["kind"] == "trained"], table[table["kind"] == "peer"]
    ax.scatter(trained["params"], trained["miou"], s=36, color="tab:blue", zorder=3, label="trained here")
    if not peers.empty:
        ax.scatter(peers["params"], peers["miou"], s=80, marker="*", color="tab:orange", zorder=4,
                   label="peer (pretrained, not trained here)")
        ax.legend(loc="lower right", fontsize=8)
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
        text = f"{row.arch} (peer)" if row.kind == "peer" else row.arch
        width = char_px * len(text)
        candidates = [(5, 4), (5, -4 - height_px), (-5 - width, 4), (-5 - width, -4 - height_px),
                      (5, 6 + height_px), (5, -6 - 2 * height_px)]
        for dx, dy in candidates:
            box = (x + dx, y + dy, x + dx + width, y + dy + height_px)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        points_per_px = 72 / ax.figure.dpi
        ax.annotate(text, (row.params, row.miou), textcoords="offset points", fontsize=8,
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
    peers = {peer: _read_json(paths.metrics_file("eval", f"peer_{peer}.json"),
                              f"run `portrait-curation evaluate --peer {peer}`")
             for peer in params.peers}
    paper = {arch: get_spec(arch).paper_params for arch in params.architectures}
    table = build_table(params.architectures, complexity, evals, paper, peers)
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
