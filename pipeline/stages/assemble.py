"""Stage ``assemble``: the training set = EG1800's train split + the enabled generated data.

The paper's claim is that cheaply generated data (portrait crops around detected faces in
full-body photos, and teacher pseudo-labels a person accepted) improves a tiny network.
This stage joins those sources into one canonical manifest that points at the files where
they already are (no copies), so the with/without ablation is one param and its cost is a
CSV file.

A pseudo-label counts only if its review decision is ``accept`` *and* was taken on the mask
that is on disk now (``mask_sha256`` equals the sha256 of the mask file's bytes): a mask
regenerated after review has not been reviewed. A decision is a person's or the auto-accept
rule's (column ``decided_by`` of the decisions file; a file without it holds people's
only); the summary counts them apart, and the audit (masks the rule accepted and a person
judged again) with its agreement.

Reads ``paths.prepared``, ``paths.crops``, ``paths.pseudo`` and ``paths.decisions``; writes
``paths.train_set`` (``manifest.csv``) and ``<paths.metrics>/assemble.json``.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Callable, Literal, Sequence

import pandas as pd
from pydantic import Field

from pipeline.atomic import atomic_dir, write_csv, write_json
from pipeline.hashing import sha256_file
from pipeline.manifest import MANIFEST_NAME, ManifestRow, read_manifest
from pipeline.paths import ProjectPaths, portable_relpath
from pipeline.params import Section, load_params, parse_section, path_rules
from pipeline.review.journal import DECISIONS
from pipeline.stage import StageError, make_parser, run_main

INPUT_BASE, INPUT_CROPS, INPUT_PSEUDO = "base", "crops", "pseudo"
OUTPUT_COLUMNS = ManifestRow.columns() + ["input", "origin_split"]


SplitName = Literal["train", "val", "test", "unlabelled"]  # manifest.SPLITS
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DECIDED_BY = ("human", "auto")


SUMMARY_NAME = "assemble.json"  # in paths.metrics


class AssembleParams(Section):
    base_source: str = Field(min_length=1)
    base_split: SplitName
    generated_data: bool  # the paper's ablation: False = base source only
    include_crops: bool
    include_pseudo: bool


def rebase_paths(frame: pd.DataFrame, source_root: str | os.PathLike, output_root: str | os.PathLike,
                 anchors: Sequence[str | os.PathLike] | None = None) -> pd.DataFrame:
    """Rewrite ``image``/``mask`` (relative to ``source_root``) relative to ``output_root``.

    With ``anchors``, a path that would leave them (an absolute or climbing manifest entry)
    is a StageError naming the row.
    """
    frame = frame.copy()
    for column in ("image", "mask"):
        rebased = []
        for index, p in frame[column].items():
            if not p:
                rebased.append("")
            elif anchors is None:
                rebased.append(Path(os.path.relpath(Path(source_root) / p, output_root)).as_posix())
            else:
                try:
                    rebased.append(portable_relpath(Path(source_root) / p, output_root, anchors))
                except ValueError as exc:
                    raise StageError(f"{frame.at[index, 'id']}: {column} {p!r}: {exc}") from None
        frame[column] = rebased
    return frame


def latest_decisions(decisions: pd.DataFrame, where: str = "decisions") -> pd.DataFrame:
    """Validated decisions, one per id, indexed by id.

    export-reviews writes one row per id, so a repeated id (a hand edit, two exports pasted
    together) is refused rather than resolved by row order; columns beyond those read here
    (reviewer, decided_at, ...) are allowed. ``decided_by`` (human / auto) and ``audit``
    (true / false) may be absent (a file written before auto-accept: people's decisions, no
    audit); present, they are checked. The rule only ever accepts.
    """
    missing = [c for c in ("id", "decision", "mask_sha256") if c not in decisions.columns]
    if missing:
        raise StageError(f"{where}: missing column(s) {missing}; expected at least id, decision, mask_sha256")
    decisions = decisions.copy()
    decisions["id"] = decisions["id"].astype(str).str.strip()
    decisions["decision"] = decisions["decision"].astype(str).str.strip().str.lower()
    decisions["mask_sha256"] = decisions["mask_sha256"].astype(str).str.strip().str.lower()
    decided_by = decisions["decided_by"] if "decided_by" in decisions.columns else pd.Series("human", index=decisions.index)
    decisions["decided_by"] = decided_by.astype(str).str.strip().str.lower().replace("", "human")
    audit = decisions["audit"] if "audit" in decisions.columns else pd.Series("false", index=decisions.index)
    audit = audit.astype(str).str.strip().str.lower().replace("", "false")
    for position, (value, by) in enumerate(zip(audit, decisions["decided_by"]), start=1):
        if value not in ("true", "false"):
            raise StageError(f"{where}: row {position}: audit {value!r} is neither true nor false")
        if by not in DECIDED_BY:
            raise StageError(f"{where}: row {position}: decided_by {by!r} is neither human nor auto")
    decisions["audit"] = audit == "true"
    for position, row in enumerate(decisions.to_dict("records"), start=1):
        if not row["id"]:
            raise StageError(f"{where}: row {position}: blank id")
        if row["decision"] not in DECISIONS:
            raise StageError(f"{where}: row {position}: decision {row['decision']!r} for {row['id']!r} is neither "
                             "accept nor reject")
        if not _SHA256.match(row["mask_sha256"]):
            raise StageError(f"{where}: row {position}: mask_sha256 {row['mask_sha256']!r} for {row['id']!r} is not "
                             "a sha256 (64 hex digits)")
        if row["decided_by"] == "auto" and row["decision"] != "accept":
            raise StageError(f"{where}: row {position}: {row['id']!r} is an auto {row['decision']}; the auto-accept "
                             "rule only accepts")
    repeated = decisions["id"].duplicated(keep=False)
    if repeated.any():
        sample_id = decisions.loc[repeated, "id"].iloc[0]
        rows = [str(i + 1) for i in decisions.index[decisions["id"] == sample_id]]
        raise StageError(f"{where}: id {sample_id!r} has more than one decision (rows {', '.join(rows)}); "
                         "export-reviews writes one per id")
    return decisions.set_index("id")


def accepted_pseudo_labels(pseudo: pd.DataFrame, decisions: pd.DataFrame,
                           mask_sha256: Callable[[str], str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows of ``pseudo`` accepted on their current mask, and counts of why the others were not.

    ``mask_sha256(relative_mask_path)`` hashes a mask file (injected so tests need no files).
    """
    labelled = pseudo[pseudo["mask"] != ""]
    latest = latest_decisions(decisions)
    counts = {"candidates": len(labelled), "accepted": 0, "rejected": 0, "unreviewed": 0, "stale_decision": 0,
              "decisions_for_other_ids": int((~latest.index.isin(labelled["id"])).sum()),
              "accepted_by_a_person": 0, "rejected_by_a_person": 0, "accepted_by_auto": 0,
              "audited": 0, "audit_judged": 0, "audit_agreed": 0}
    keep = []
    for index, row in labelled.iterrows():
        if row["id"] not in latest.index:
            counts["unreviewed"] += 1
            continue
        decision = latest.loc[row["id"]]
        if decision["mask_sha256"] != mask_sha256(row["mask"]):
            counts["stale_decision"] += 1
            continue
        by_auto = decision["decided_by"] == "auto"
        if decision["audit"]:
            counts["audited"] += 1
            if not by_auto:
                counts["audit_judged"] += 1
                counts["audit_agreed"] += int(decision["decision"] == "accept")
        if decision["decision"] == "accept":
            counts["accepted"] += 1
            counts["accepted_by_auto" if by_auto else "accepted_by_a_person"] += 1
            keep.append(index)
        else:
            counts["rejected"] += 1
            counts["rejected_by_a_person"] += 1
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


def assemble_training_set(base: pd.DataFrame, *, base_source: str, base_split: str,
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


def read_decisions(path: str | os.PathLike) -> pd.DataFrame:
    """The exported decisions file, validated now so that a bad one fails naming the file."""
    if not Path(path).is_file():
        raise StageError(f"pseudo-labels are switched on but {path} does not exist; "
                         "export the review decisions (portrait-curation export-reviews) or switch them off")
    try:
        decisions = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: not a readable CSV ({exc})") from None
    latest_decisions(decisions, str(path))
    return decisions


def _body(args: argparse.Namespace) -> int:
    raw = load_params(args.params)
    paths = parse_section(ProjectPaths, raw, "paths", args.params)
    params = parse_section(AssembleParams, raw, "assemble", args.params)
    rules = path_rules(raw, args.params)
    anchors = (rules.root, *rules.allowed_outside)
    out = paths.train_set
    try:
        base = read_manifest(paths.prepared)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    crops = _optional_manifest(params.generated_data and params.include_crops, paths.crops, "face-detected crops")
    pseudo = _optional_manifest(params.generated_data and params.include_pseudo, paths.pseudo, "pseudo-labels")
    roots = {INPUT_BASE: ("prepared", paths.prepared), INPUT_CROPS: ("crops", paths.crops),
             INPUT_PSEUDO: ("pseudo", paths.pseudo)}
    for name, frame in ((INPUT_BASE, base), (INPUT_CROPS, crops), (INPUT_PSEUDO, pseudo)):
        key, root = roots[name]
        if frame is not None:
            try:
                portable_relpath(root, out, anchors)
            except ValueError as exc:
                raise StageError(f"paths.{key} {root!r}: the manifest in {out} would point into it with paths "
                                 f"that differ between checkouts ({exc}); keep inputs and output in the project "
                                 "(a symlink inside it works)") from None
    decisions = read_decisions(paths.decisions) if pseudo is not None else None
    frame, summary = assemble_training_set(
        base, base_source=params.base_source, base_split=params.base_split, crops=crops, pseudo=pseudo,
        decisions=decisions, mask_sha256=lambda rel: sha256_file(Path(paths.pseudo) / rel))
    frame = pd.concat([rebase_paths(frame[frame["input"] == name], root, out, anchors)
                       for name, (_, root) in roots.items()], ignore_index=True)
    lost = missing_files(frame, out)
    if lost:
        raise StageError(f"{len(lost)} file(s) named by the input manifests do not exist, e.g. "
                         f"{', '.join(lost[:3])} (relative to {out})")
    with atomic_dir(out) as tmp:
        write_csv(Path(tmp) / MANIFEST_NAME, frame)
    write_json(paths.metrics_file(SUMMARY_NAME), summary)
    parts = ", ".join(f"{k} {v}" for k, v in summary["by_input"].items())
    print(f"assemble: {summary['total']} training samples ({parts}) -> {Path(out) / MANIFEST_NAME}")
    return 0


def main(argv=None) -> int:
    parser = make_parser("assemble", __doc__.split("\n\n")[0])
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
