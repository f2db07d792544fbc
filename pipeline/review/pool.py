"""The pseudo-labelled pool as the review queue sees it, and the order it is reviewed in.

The pool is pseudo_label's canonical folder (``manifest.csv`` + images + masks) with its
``scores.csv`` (low score = likely failure). The hash a decision is tied to is the sha256 of
the mask file's bytes *as found on disk now* (what the reviewer is shown and what assemble
checks), not a value copied from a table that could be out of date.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from pipeline.hashing import sha256_file
from pipeline.manifest import read_manifest
from pipeline.stage import StageError

SCORES_NAME = "scores.csv"
_NOT_COMPONENTS = {"id", "origin", "score", "mask_sha256"}


@dataclass(frozen=True)
class PoolItem:
    id: str
    image_path: str  # absolute
    mask_path: str  # absolute
    mask_sha256: str
    score: float  # nan when the pool has no score for it (reviewed last)
    source: str = ""
    origin: str = ""
    notes: str = ""
    components: dict = field(default_factory=dict)


def read_pool(pseudo_dir: str | os.PathLike) -> tuple[list[PoolItem], list[str]]:
    """Items of the pool and warnings (score table disagreeing with the files, missing scores)."""
    root = Path(pseudo_dir)
    try:
        manifest = read_manifest(root)
    except FileNotFoundError as exc:
        raise StageError(f"{exc} (run pseudo_label first)") from None
    except ValueError as exc:
        raise StageError(str(exc)) from None
    scores = _read_scores(root)
    warnings: list[str] = []
    items: list[PoolItem] = []
    for row in manifest.to_dict("records"):
        if not row["mask"]:
            warnings.append(f"{row['id']}: no mask in the manifest, not reviewable")
            continue
        image_path = (root / row["image"]).resolve()
        mask_path = (root / row["mask"]).resolve()
        for path in (image_path, mask_path):
            if not path.is_file():
                raise StageError(f"{root / 'manifest.csv'}: {row['id']}: file not found: {path}")
        digest = sha256_file(mask_path)
        score_row = scores.get(row["id"], {})
        listed = str(score_row.get("mask_sha256", "") or "")
        if listed and listed != digest:
            warnings.append(f"{row['id']}: {SCORES_NAME} names mask {listed[:12]}, the file on disk is "
                            f"{digest[:12]}; decisions are tied to the file")
        score = _as_float(score_row.get("score"))
        components = {k: v for k, v in ((k, _as_float(v)) for k, v in score_row.items() if k not in _NOT_COMPONENTS)
                      if not math.isnan(v)}
        items.append(PoolItem(id=row["id"], image_path=str(image_path), mask_path=str(mask_path),
                              mask_sha256=digest, score=score, source=str(row.get("source", "")),
                              origin=str(row.get("origin", "")), notes=str(row.get("notes", "")),
                              components=components))
    unscored = sum(1 for i in items if math.isnan(i.score))
    if unscored and scores:
        warnings.append(f"{unscored} pool sample(s) have no score in {SCORES_NAME}: reviewed after the scored ones")
    return items, warnings


def _read_scores(root: Path) -> dict[str, dict]:
    path = root / SCORES_NAME
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, dtype={"id": str, "mask_sha256": str, "origin": str}, keep_default_na=False)
    if "id" not in frame.columns or "score" not in frame.columns:
        raise StageError(f"{path}: needs columns id and score, has {list(frame.columns)}")
    return {r["id"]: r for r in frame.to_dict("records")}


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def current_hashes(items: Iterable[PoolItem]) -> dict[str, str]:
    return {item.id: item.mask_sha256 for item in items}


def queue_order(scores: Mapping[str, float], decided: Iterable[str]) -> list[str]:
    """Ids in review order: undecided before decided; within each, lowest score (likely
    failure) first, unscored last, ties by id so the order is reproducible."""
    decided = set(decided)

    def key(sample_id: str) -> tuple:
        score = scores[sample_id]
        missing = score is None or math.isnan(score)
        return (sample_id in decided, missing, 0.0 if missing else score, sample_id)

    return sorted(scores, key=key)
