"""Stage ``bias_report``: accuracy per race, gender, age and intersectional group.

Why: a mean IoU over the whole test set hides who the model fails. The ExtremeC3Net
paper reports mIoU per group (its Table 5: seniors worst, the age disparity falling from
1.82 to 1.12 mIoU with the generated data) and the dataset's imbalance (Table 7,
Figure 5). This stage does the same for each trained architecture, with the numbers
needed to read it honestly: group sizes, a bootstrap interval per group (with 6 seniors
an interval matters more than a decimal) and small groups flagged. How groups, intervals
and disparities are computed: ``pipeline.bias.groups``.

Reads, per architecture: ``<paths.models>/<arch>/per_image.csv`` (from ``evaluate``), the
attribute table ``paths.attributes`` and the splits of ``paths.prepared``'s manifest (for
the class histogram). Writes ``<paths.reports>/bias/<arch>/`` (``report.md``,
``groups.csv``, ``groups.png``, ``histogram.png``; the folder is replaced whole) and
``<paths.metrics>/bias/<arch>.json`` (flat keys, for ``dvc metrics diff``).

Peers (``bias_report.peers``, ``--peer NAME``): pretrained segmenters evaluated by
``evaluate --peer`` (per-image table ``<paths.models>/peers/<name>/per_image.csv``). Each gets
a report of its own, marked as a peer, in ``<paths.reports>/bias/peer_<name>/`` and
``<paths.metrics>/bias/peer_<name>.json``, and every architecture's report.md shows the peers'
group mIoU and disparities beside its own ("Against the peers"), so a reader sees whether a
gap is the model's or the data's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator

from pipeline.atomic import atomic_dir, write_csv, write_json, write_text
from pipeline.attributes import read_table
from pipeline.bias.groups import BiasReport, build_report, per_image_iou
from pipeline.bias.render import (
    GROUPS_CSV,
    GROUPS_PNG,
    HISTOGRAM_PNG,
    REPORT_MD,
    flat_metrics,
    fmt,
    groups_table,
    plot_groups,
    plot_histogram,
    render_markdown,
)
from pipeline.params import Section, load_section
from pipeline.paths import ProjectPaths
from pipeline.stage import StageError, make_parser, run_main

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # an architecture becomes a folder and a file name


class BiasReportParams(Section):
    architectures: list[str] = Field(min_length=1)
    peers: list[str] = Field(description="evaluate.peers shown beside every architecture, each with its own report")
    source: str = Field(pattern=_NAME.pattern, description="dataset source the attribute table's image ids belong to")
    default_split: Literal["train", "val", "test", "unlabelled"] = Field(
        description="split name for images the manifest does not list")
    min_group_size: int = Field(ge=1, description="groups with fewer images are flagged, not compared")
    bootstrap_resamples: int = Field(ge=100)
    confidence_level: float = Field(gt=0.0, lt=1.0)
    seed: int = Field(ge=0)  # numpy refuses negative seeds

    @field_validator("architectures", "peers")
    @classmethod
    def _architecture_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _NAME.match(name):
                raise ValueError(f"{name!r} is not an architecture name (letters, digits, '_', '-', '.')")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"named more than once: {', '.join(repeated)}")
        return names


# --- where one architecture's files are ------------------------------------------------


def per_image_path(paths: ProjectPaths, arch: str) -> Path:
    return paths.model_dir(arch) / "per_image.csv"


def report_dir(paths: ProjectPaths, arch: str) -> Path:
    return Path(paths.reports) / "bias" / arch


def metrics_path(paths: ProjectPaths, arch: str) -> Path:
    return paths.metrics_file("bias", f"{arch}.json")


def peer_per_image_path(paths: ProjectPaths, peer: str) -> Path:
    """Where ``evaluate --peer`` writes a peer's per-image table."""
    return Path(paths.models) / "peers" / peer / "per_image.csv"


def peer_report_name(peer: str) -> str:
    """A peer's report folder and metrics file name: ``peer_<name>``, apart from any architecture's."""
    return f"peer_{peer}"


def check_outputs_apart(folder: Path, metrics: Path) -> None:
    """The metrics file must not lie in the report folder, which is replaced as a whole."""
    inside = os.path.abspath(folder)
    if os.path.commonpath([inside, os.path.abspath(metrics)]) == inside:
        raise StageError(f"metrics file {metrics} lies inside the report folder {folder}, which is replaced as a "
                         "whole: give paths.metrics and paths.reports folders apart")


# --- inputs ----------------------------------------------------------------------------


def read_per_image(path: str | Path, source: str) -> tuple[pd.Series, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: per-image IoU table not found (has `evaluate` run for this architecture "
                                "or `evaluate --peer` for this peer?)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: not a readable CSV ({exc})") from None
    return per_image_iou(frame, source, str(path))


def split_lookup(manifest: str | Path, source: str) -> dict[str, str]:
    """Image key -> split of ``source`` in the prepared manifest."""
    from pipeline.manifest import read_manifest

    try:
        frame = read_manifest(manifest)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    frame = frame[frame["source"] == source]
    return {i.split("/", 1)[1]: s for i, s in zip(frame["id"], frame["split"])}


# --- outputs ---------------------------------------------------------------------------


def write_report(report: BiasReport, folder: str | Path, metrics: str | Path,
                 peers: dict[str, BiasReport] | None = None) -> None:
    """All outputs of one architecture (or peer); the folder is swapped in whole."""
    with atomic_dir(folder) as tmp:
        plot_groups(report, tmp / GROUPS_PNG)
        plot_histogram(report.histogram, tmp / HISTOGRAM_PNG)
        write_csv(tmp / GROUPS_CSV, groups_table(report))
        write_text(tmp / REPORT_MD, render_markdown(report, peers=peers))
    write_json(metrics, flat_metrics(report))


# --- the stage -------------------------------------------------------------------------


def _parser():
    parser = make_parser("bias-report", __doc__)
    parser.add_argument("--arch", action="append", help="only this architecture (repeatable; default: all in params)")
    parser.add_argument("--peer", action="append",
                        help="only this peer's own report (repeatable; default with no --arch: all in params)")
    return parser


def _body(args) -> int:
    paths = load_section(ProjectPaths, "paths", args.params)
    params = load_section(BiasReportParams, "bias_report", args.params)
    archs = args.arch or ([] if args.peer else params.architectures)
    peers_asked = args.peer or ([] if args.arch else params.peers)
    unknown = [a for a in archs if a not in params.architectures]
    if unknown:
        raise StageError(f"architecture(s) {', '.join(unknown)} not in bias_report.architectures")
    unknown = [p for p in peers_asked if p not in params.peers]
    if unknown:
        raise StageError(f"peer(s) {', '.join(unknown)} not in bias_report.peers ({', '.join(params.peers) or 'none'})")
    names = archs + [peer_report_name(p) for p in peers_asked]
    for name in names:
        check_outputs_apart(report_dir(paths, name), metrics_path(paths, name))
    attributes = read_table(paths.attributes)
    if attributes.empty:
        raise StageError(f"{paths.attributes}: no person rows")
    split_of = split_lookup(paths.prepared, params.source)

    def report_of(name: str, table: Path, peer: bool) -> BiasReport:
        iou, other = read_per_image(table, params.source)
        report = build_report(name, iou, attributes, split_of, default_split=params.default_split,
                              min_group_size=params.min_group_size, resamples=params.bootstrap_resamples,
                              level=params.confidence_level, seed=params.seed, other_sources=other)
        if report.images_compared == 0:
            raise StageError(f"{name}: no image has both an IoU and attributes (check bias_report.source and the "
                             "image ids)")
        report.peer = peer
        return report

    # every architecture's report shows all peers; a peer's own report is written only when asked for
    peers = {p: report_of(p, peer_per_image_path(paths, p), True)
             for p in (params.peers if archs else peers_asked)}
    written = [(arch, report_of(arch, per_image_path(paths, arch), False), peers) for arch in archs]
    written += [(peer_report_name(p), peers[p], None) for p in peers_asked]
    for name, report, shown in written:
        folder = report_dir(paths, name)
        write_report(report, folder, metrics_path(paths, name), peers=shown)
        gaps = ", ".join(f"{g} {fmt(d.gap)}" for g, d in report.disparities.items())
        label = f"{report.arch} (peer)" if report.peer else report.arch
        print(f"{label}: mIoU {fmt(report.overall_miou)} on {report.images_compared} images; disparity {gaps}; "
              f"wrote {folder.as_posix()}/{REPORT_MD}")
    return 0


def main(argv=None) -> int:
    return run_main(_body, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
