"""Stage ``assemble``: the training set = EG1800's train split + the enabled generated data.

The paper's claim is that cheaply generated data (portrait crops around detected faces in
full-body photos, and teacher pseudo-labels a person accepted) improves a tiny network.
This stage joins those sources into one canonical manifest that points at the files where
they already are (no copies), so the with/without ablation is one param and its cost is a
CSV file.

A pseudo-label counts only if its review decision is ``accept`` *and* was taken on the mask
that is on disk now (``mask_sha256`` equals the sha256 of the mask file's bytes): a mask
regenerated after review has not been reviewed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from pipeline.atomic import atomic_dir, write_csv, write_json
from pipeline.hashing import sha256_file
from pipeline.manifest import MANIFEST_NAME, ManifestRow, read_manifest
from pipeline.params import Section, load_section
from pipeline.stage import StageError, make_parser, run_main

INPUT_BASE, INPUT_CROPS, INPUT_PSEUDO = "base", "crops", "pseudo"
OUTPUT_COLUMNS = ManifestRow.columns() + ["input", "origin_split"]
DECISIONS = ("accept", "reject")


class AssembleParams(Section):
    prepared_dir: str = "data/prepared"
    crops_dir: str = "data/crops"
    pseudo_dir: str = "data/pseudo"
    decisions: str = "reviews/decisions.csv"
    output_dir: str = "data/train_set"
    summary: str = "metrics/assemble.json"
    base_source: str = "eg1800"
    base_split: str = "train"
    generated_data: bool = True  # the paper's ablation: False = base source only
    include_crops: bool = True
    include_pseudo: bool = True


def rebase_paths(frame: pd.DataFrame, source_root: str | os.PathLike, output_root: str | os.PathLike) -> pd.DataFrame:
    """Rewrite ``image``/``mask`` (relative to ``source_root``) relative to ``output_root``."""
    frame = frame.copy()
    for column in ("image", "mask"):
        frame[column] = [
            Path(os.path.relpath(Path(source_root) / p, output_root)).as_posix() if p else ""
            for p in frame[column]
        ]
    return frame


def latest_decisions(decisions: pd.DataFrame, where: str = "decisions") -> pd.DataFrame:
    """Validated decisions, one per id (the last one written wins), indexed by id."""
    missing = [c for c in ("id", "decision", "mask_sha256") if c not in decisions.columns]
    if missing:
        raise StageError(f"{where}: missing column(s) {missing}; expected at least id, decision, mask_sha256")
    decisions = decisions.copy()
    decisions["decision"] = decisions["decision"].astype(str).str.strip().str.lower()
    bad = decisions[~decisions["decision"].isin(DECISIONS)]
    if len(bad):
        first = bad.iloc[0]
        raise StageError(f"{where}: decision {first['decision']!r} for {first['id']!r} is neither accept nor reject")
    decisions["mask_sha256"] = decisions["mask_sha256"].astype(str).str.strip().str.lower()
    return decisions.drop_duplicates("id", keep="last").set_index("id")


def accepted_pseudo_labels(pseudo: pd.DataFrame, decisions: pd.DataFrame,
                           mask_sha256: Callable[[str], str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows of ``pseudo`` accepted on their current mask, and counts of why the others were not.

    ``mask_sha256(relative_mask_path)`` hashes a mask file (injected so tests need no files).
    """
    labelled = pseudo[pseudo["mask"] != ""]
    latest = latest_decisions(decisions)
    counts = {"candidates": len(labelled), "accepted": 0, "rejected": 0, "unreviewed": 0, "stale_decision": 0}
    keep = []
    for index, row in labelled.iterrows():
        if row["id"] not in latest.index:
            counts["unreviewed"] += 1
            continue
        decision = latest.loc[row["id"]]
        if decision["mask_sha256"] != mask_sha256(row["mask"]):
            counts["stale_decision"] += 1
        elif decision["decision"] == "accept":
            counts["accepted"] += 1
            keep.append(index)
        else:
            counts["rejected"] += 1
    return labelled.loc[keep], counts


def _tag(frame: pd.DataFrame, input_name: str) -> pd.DataFrame:
    frame = frame.copy()
    frame["input"] = input_name
    frame["origin_split"] = frame["split"]
    frame["split"] = "train"
    for column in OUTPUT_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    return frame[OUTPUT_COLUMNS]


def assemble_training_set(base: pd.DataFrame, *, base_source: str = "eg1800", base_split: str = "train",
                          crops: pd.DataFrame | None = None, pseudo: pd.DataFrame | None = None,
                          decisions: pd.DataFrame | None = None,
                          mask_sha256: Callable[[str], str] | None = None) -> tuple[pd.DataFrame, dict]:
    """The training manifest (paths still as given) and a summary of what went in.

    Every row gets split ``train`` (its former split is kept in ``origin_split``); the
    trainer holds out its own validation part. ``crops`` / ``pseudo`` are None when switched off.
    """
    chosen = base[(base["source"] == base_source) & (base["split"] == base_split) & (base["mask"] != "")]
    if chosen.empty:
        raise StageError(f"no labelled rows of source {base_source!r}, split {base_split!r} in the prepared data")
    parts = [_tag(chosen, INPUT_BASE)]
    summary: dict = {}
    if crops is not None:
        parts.append(_tag(crops[crops["mask"] != ""], INPUT_CROPS))
    if pseudo is not None:
        if decisions is None or mask_sha256 is None:
            raise ValueError("pseudo-labels need decisions and a mask hasher")
        accepted, summary["pseudo"] = accepted_pseudo_labels(pseudo, decisions, mask_sha256)
        parts.append(_tag(accepted, INPUT_PSEUDO))
    frame = pd.concat(parts, ignore_index=True)
    duplicated = frame["id"].duplicated(keep=False)
    if duplicated.any():
        dup = frame.loc[duplicated].iloc[0]
        inputs = sorted(set(frame.loc[frame["id"] == dup["id"], "input"]))
        raise StageError(f"id {dup['id']!r} appears more than once (inputs: {', '.join(inputs)}); ids must be unique")
    summary = {
        "total": len(frame),
        "by_input": {name: int((frame["input"] == name).sum()) for name in (INPUT_BASE, INPUT_CROPS, INPUT_PSEUDO)},
        "by_source": {str(k): int(v) for k, v in frame["source"].value_counts().sort_index().items()},
        **summary,
    }
    return frame, summary


def missing_files(frame: pd.DataFrame, root: str | os.PathLike) -> list[str]:
    """Paths that name no file; resolved lexically, since ``root`` may not exist yet."""
    return [p for column in ("image", "mask") for p in frame[column]
            if p and not os.path.isfile(os.path.normpath(os.path.join(root, p)))]


def _optional_manifest(enabled: bool, directory: str, what: str) -> pd.DataFrame | None:
    if not enabled:
        return None
    if not (Path(directory) / MANIFEST_NAME).is_file():
        raise StageError(f"{what} are switched on but {Path(directory) / MANIFEST_NAME} does not exist; "
                         f"run the stage that writes it or switch them off in params (assemble)")
    try:
        return read_manifest(directory)
    except ValueError as exc:
        raise StageError(str(exc)) from None


def _body(args: argparse.Namespace) -> int:
    params = load_section(AssembleParams, "assemble", args.params)
    out = params.output_dir
    try:
        base = read_manifest(params.prepared_dir)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    crops = _optional_manifest(params.generated_data and params.include_crops, params.crops_dir, "face-detected crops")
    pseudo = _optional_manifest(params.generated_data and params.include_pseudo, params.pseudo_dir, "pseudo-labels")
    decisions = None
    if pseudo is not None:
        if not Path(params.decisions).is_file():
            raise StageError(f"pseudo-labels are switched on but {params.decisions} does not exist; "
                             "export the review decisions (portrait-curation export-reviews) or switch them off")
        decisions = pd.read_csv(params.decisions, dtype=str, keep_default_na=False)
        latest_decisions(decisions, params.decisions)  # fails early, naming the file
    frame, summary = assemble_training_set(
        base, base_source=params.base_source, base_split=params.base_split, crops=crops, pseudo=pseudo,
        decisions=decisions, mask_sha256=lambda rel: sha256_file(Path(params.pseudo_dir) / rel))
    roots = {INPUT_BASE: params.prepared_dir, INPUT_CROPS: params.crops_dir, INPUT_PSEUDO: params.pseudo_dir}
    frame = pd.concat([rebase_paths(frame[frame["input"] == name], root, out) for name, root in roots.items()],
                      ignore_index=True)
    lost = missing_files(frame, out)
    if lost:
        raise StageError(f"{len(lost)} file(s) named by the input manifests do not exist, e.g. "
                         f"{', '.join(lost[:3])} (relative to {out})")
    with atomic_dir(out) as tmp:
        write_csv(Path(tmp) / MANIFEST_NAME, frame)
    write_json(params.summary, summary)
    parts = ", ".join(f"{k} {v}" for k, v in summary["by_input"].items())
    print(f"assemble: {summary['total']} training samples ({parts}) -> {Path(out) / MANIFEST_NAME}")
    return 0


def main(argv=None) -> int:
    parser = make_parser("assemble", __doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true", help="accepted like the other stages (no progress bars here)")
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
