"""What the ``score_pool`` stage writes into ``paths.quality``, and the readers of it.

    <paths.quality>/scores.csv    one row per pool mask: calibrated P(good), the part that
                                  pulls it down, the route (auto / audit / review), its
                                  place in the review queue
    <paths.quality>/auto.jsonl    the auto-accept rule's decisions, a journal of their own
                                  (reviewer "auto:...", threshold and evidence in each line)
    <paths.quality>/evidence.csv  the evidence with its out-of-fold P(good)
    <paths.quality>/model.json    the fitted model (features, scaling, weights)

The people's journals (``paths.journal``) are never written by a stage: the rule's
decisions live in ``auto.jsonl``, rewritten whole (atomically) on every run, and a
person's decision on the same mask always wins over the rule's (``merge_decisions``).
A row or line tied to a mask that has since changed is ignored, as in the journals.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from pipeline.errors import StageError
from pipeline.review import journal as jr

SCORES_NAME = "scores.csv"
AUTO_JOURNAL_NAME = "auto.jsonl"
EVIDENCE_NAME = "evidence.csv"
MODEL_NAME = "model.json"
METRICS_NAME = "score_pool.json"  # in paths.metrics
PLOTS_FOLDER = "score_pool"  # in paths.plots: risk_coverage.csv, score_vs_iou.csv, reliability.csv
VALIDATION_NAME = "pseudo_label_validation.csv"  # pseudo_label's labelled evidence, in paths.metrics

AUTO_REVIEWER = "auto:calibrated-v1"  # the rule's name in the journal; a new meaning gets a new name
AUTO_PREFIX = "auto:"  # reviewer names of rules, never of people

ROUTES = ("auto", "audit", "review")  # auto: accepted, leaves the queue; audit: accepted, still shown
CONTRIBUTION_PREFIX = "contribution_"


@dataclass(frozen=True)
class CalibratedScore:
    id: str
    mask_sha256: str
    p_good: float  # nan when the model could not score it
    low_part: str  # the feature pulling P(good) down most ("" when none does)
    route: str
    review_rank: float  # place in the queue (lower first); nan for masks that left it
    contributions: dict = field(default_factory=dict)

    @property
    def auto_accepted(self) -> bool:
        return self.route in ("auto", "audit")


def read_calibrated_scores(quality_dir: str | os.PathLike) -> dict[str, CalibratedScore]:
    """id -> its row of ``scores.csv``; empty when score_pool has not run."""
    path = Path(quality_dir) / SCORES_NAME
    if not path.is_file():
        return {}
    try:
        frame = pd.read_csv(path, dtype={"id": str, "mask_sha256": str, "low_part": str, "route": str},
                            keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("id", "mask_sha256", "p_good", "route", "review_rank") if c not in frame.columns]
    if missing:
        raise StageError(f"{path}: missing column(s) {missing} (re-run score_pool)")
    out = {}
    for position, row in enumerate(frame.to_dict("records"), start=1):
        if row["route"] not in ROUTES:
            raise StageError(f"{path}: row {position}: route {row['route']!r} is not one of {', '.join(ROUTES)}")
        contributions = {k[len(CONTRIBUTION_PREFIX):]: _number(v) for k, v in row.items()
                         if k.startswith(CONTRIBUTION_PREFIX) and not math.isnan(_number(v))}
        out[row["id"]] = CalibratedScore(id=row["id"], mask_sha256=row["mask_sha256"], p_good=_number(row["p_good"]),
                                         low_part=str(row.get("low_part", "") or ""), route=row["route"],
                                         review_rank=_number(row["review_rank"]), contributions=contributions)
    return out


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def read_auto_journal(quality_dir: str | os.PathLike) -> list[jr.ReviewEvent]:
    """The rule's decisions (none when score_pool has not run); a person's name in it is an error."""
    path = Path(quality_dir) / AUTO_JOURNAL_NAME
    events, _ = jr.read_journal(path)
    for event in events:
        if not event.reviewer.startswith(AUTO_PREFIX):
            raise StageError(f"{path}: {event.id}: reviewer {event.reviewer!r} is not a rule ({AUTO_PREFIX}...); "
                             "this file holds the auto-accept rule's decisions only")
    return events


def check_people(events: Iterable[jr.ReviewEvent], where: str) -> None:
    """The people's journals hold people's decisions: a rule's name there would be counted wrongly."""
    for event in events:
        if event.reviewer.startswith(AUTO_PREFIX):
            raise StageError(f"{where}: {event.id}: reviewer {event.reviewer!r} is a rule's name ({AUTO_PREFIX}...); "
                             f"the rule's decisions live in paths.quality/{AUTO_JOURNAL_NAME}, not in a person's "
                             "journal")


@dataclass(frozen=True)
class MergedDecisions:
    """The decision that applies to each current mask, and who took it."""

    human: dict[str, jr.ReviewEvent]  # a person's decision on the current mask
    auto: dict[str, jr.ReviewEvent]  # the rule's decision on the current mask (applies where no person decided)

    @property
    def applied(self) -> dict[str, jr.ReviewEvent]:
        return {**self.auto, **self.human}


def merge_decisions(human_events: Iterable[jr.ReviewEvent], auto_events: Iterable[jr.ReviewEvent],
                    hashes: Mapping[str, str]) -> MergedDecisions:
    """People first: the rule's accept applies only to a current mask no person has judged.

    "Latest wins" would let a re-run of score_pool (whose lines carry a newer time) overrule
    a person; here a person's decision always stands.
    """
    return MergedDecisions(human=jr.resolve_decisions(human_events, hashes),
                           auto=jr.resolve_decisions(auto_events, hashes))
