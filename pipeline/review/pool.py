"""The pseudo-labelled pool as the review queue sees it, and the order it is reviewed in.

The pool is pseudo_label's canonical folder (``manifest.csv`` + images + masks) with its
``scores.csv`` (features; low score = likely failure). Where the ``score_pool`` stage has
run (``paths.quality``), each mask's score is its calibrated P(good) instead, with the part
that pulls it down, its route (auto-accepted masks that are not audited leave the queue)
and its place in the queue (audited masks at random places, so they look like any other).
A calibrated row counts only for the mask it scored.

The hash a decision is tied to is the sha256 of the mask file's bytes *as found on disk
now* (what the reviewer is shown and what assemble checks), not a value copied from a
table that could be out of date.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from pipeline.hashing import sha256_file
from pipeline.manifest import read_manifest
from pipeline.quality.outputs import CalibratedScore, read_calibrated_scores
from pipeline.stage import StageError

SCORES_NAME = "scores.csv"
_NOT_COMPONENTS = {"id", "origin", "score", "mask_sha256"}


@dataclass(frozen=True)
class PoolItem:
    id: str
    image_path: str  # absolute
    mask_path: str  # absolute
    mask_sha256: str
    score: float  # calibrated P(good) where score_pool scored this mask, else pseudo_label's; nan: none (last)
    source: str = ""
    origin: str = ""
    notes: str = ""
    components: dict = field(default_factory=dict)  # pseudo_label's features
    calibrated: bool = False  # score is score_pool's P(good) for this very mask
    low_part: str = ""  # the feature pulling P(good) down most
    contributions: dict = field(default_factory=dict)  # each feature's push on the logit of P(good)
    route: str = "review"  # score_pool's: auto (accepted, leaves the queue), audit (accepted, shown), review
    review_rank: float = math.nan  # score_pool's place in the queue (nan: order by score)
    disagreement_path: str = ""  # absolute; where the teachers disagree (white), if pseudo_label wrote it

    @property
    def leaves_queue(self) -> bool:
        """Auto-accepted and not drawn for the audit: no person needs to see it."""
        return self.route == "auto"


def read_pool(pseudo_dir: str | os.PathLike, quality_dir: str | os.PathLike | None = None
              ) -> tuple[list[PoolItem], list[str]]:
    """Items of the pool and warnings (score table disagreeing with the files, missing scores).

    With ``quality_dir`` (``paths.quality``), score_pool's calibrated scores and routes apply
    to the masks they were computed for.
    """
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
        disagreement = disagreement_path_for(root, row["mask"])
        items.append(PoolItem(id=row["id"], image_path=str(image_path), mask_path=str(mask_path),
                              mask_sha256=digest, score=score, source=str(row.get("source", "")),
                              origin=str(row.get("origin", "")), notes=str(row.get("notes", "")),
                              components=components,
                              disagreement_path=str(disagreement.resolve()) if disagreement.is_file() else ""))
    unscored = sum(1 for i in items if math.isnan(i.score))
    if unscored and scores:
        warnings.append(f"{unscored} pool sample(s) have no score in {SCORES_NAME}: reviewed after the scored ones")
    if quality_dir is not None:
        items = with_calibrated_scores(items, read_calibrated_scores(quality_dir), warnings)
    return items, warnings


DISAGREEMENT_DIR = "disagreement"


def disagreement_path_for(pool_root: str | os.PathLike, mask_rel: str) -> Path:
    """Where a mask's teacher-disagreement map lives: ``masks/<source>/<key>.png`` ->
    ``disagreement/<source>/<key>.png`` in the same pool (a 0/255 PNG, white where the
    teachers' masks differ). Optional: pseudo_label with one teacher has none."""
    parts = Path(mask_rel).parts
    rest = parts[1:] if parts and parts[0] == "masks" else parts
    return Path(pool_root) / DISAGREEMENT_DIR / Path(*rest)


def with_calibrated_scores(items: list[PoolItem], calibrated: Mapping[str, CalibratedScore],
                           warnings: list[str]) -> list[PoolItem]:
    """Items with score_pool's P(good), route and queue place where they were computed for this mask."""
    if not calibrated:
        return items
    out, changed = [], 0
    for item in items:
        row = calibrated.get(item.id)
        if row is None or row.mask_sha256 != item.mask_sha256:
            changed += 1
            out.append(item)
            continue
        scored = not math.isnan(row.p_good)
        out.append(replace(item, score=row.p_good if scored else item.score, calibrated=scored, low_part=row.low_part,
                           contributions=dict(row.contributions), route=row.route, review_rank=row.review_rank))
    if changed:
        warnings.append(f"{changed} pool mask(s) have no calibrated score for the mask on disk (pseudo_label re-ran "
                        "after score_pool?): shown to a person, after the scored ones; re-run score_pool")
    return out


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
    failure) first, unscored last, ties by id so the order is reproducible.

    ``scores`` may be any "lower first" key: pseudo_label's score, or score_pool's queue place.
    """
    decided = set(decided)

    def key(sample_id: str) -> tuple:
        score = scores[sample_id]
        missing = score is None or math.isnan(score)
        return (sample_id in decided, missing, 0.0 if missing else score, sample_id)

    return sorted(scores, key=key)


def queue_items(items: Iterable[PoolItem], decided: Iterable[str]) -> list[PoolItem]:
    """The masks a person is shown: all but the auto-accepted, non-audited ones nobody has judged yet
    (a mask a person judged stays, so they can see and change their decision)."""
    decided = set(decided)
    return [item for item in items if not item.leaves_queue or item.id in decided]


def order_keys(items: Iterable[PoolItem]) -> dict[str, float]:
    """The "lower first" key of each item: score_pool's queue place when every calibrated item has one,
    else the score. Items without a calibrated row (a mask changed since) sort after the ranked ones."""
    items = list(items)
    ranked = [i for i in items if i.calibrated and not math.isnan(i.review_rank)]
    if not ranked:
        return {i.id: i.score for i in items}
    top = max(i.review_rank for i in ranked) + 1.0
    return {i.id: (i.review_rank if i.calibrated and not math.isnan(i.review_rank) else top + _unit(i.score))
            for i in items}


def _unit(score: float) -> float:
    return 1.0 if score is None or math.isnan(score) else min(max(float(score), 0.0), 1.0) * 0.999
