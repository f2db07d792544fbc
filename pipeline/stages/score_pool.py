"""Stage ``score_pool``: a learned, calibrated P(mask is good) for every pool mask; auto-accept with audit.

Why: pseudo_label's features each say something about a mask (do the teachers agree, is
the flipped prediction the same, is the mask one piece), but a hand-weighted mean of them
is not a probability and finds failures poorly. This stage learns P(good) from evidence,
orders the review queue by it (likely failures first) and accepts, without a person, the
masks whose P(good) is so high that an evidence-backed bound keeps the error rate among
them under a target; a random share of those still goes to a person, blind, as an audit.

Evidence (good := IoU >= ``good_iou`` with the truth, or a person's accept):
- pseudo_label's validation table (``<paths.metrics>/pseudo_label_validation.csv``): the
  same features on labelled photos no teacher trained on, with their IoU;
- with ``use_review_decisions``, people's decisions on pool masks (``paths.journal``;
  accept = good, reject = bad), except masks reserved for the audit.
Rows are grouped by parent photo (column ``origin``, else ``id``) and every evidence row
gets an out-of-fold P(good) (``pipeline.quality.calibration``); the reliability, Brier
score, failure ROC AUC and the auto-accept threshold (``pipeline.quality.auto_accept``)
are computed on those. The pool is scored by a model fitted on all the evidence (a pool
mask that is itself evidence keeps its out-of-fold probability).

Reads ``paths.pseudo`` (``scores.csv`` features, masks hashed as on disk), the validation
table, ``paths.journal`` and, where it exists, ``paths.attributes``. Writes
``paths.quality`` (``pipeline.quality.outputs``: scores.csv, auto.jsonl, evidence.csv,
model.json), ``<paths.metrics>/score_pool.json`` and ``<paths.plots>/score_pool/``
(risk_coverage.csv, score_vs_iou.csv, reliability.csv).

"Key presses per accepted label" in the metrics is an expectation, not a measurement: one
press per mask a person is shown, and P(good) of each shown mask counted as an expected
accept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from pipeline.atomic import atomic_dir, write_csv, write_json
from pipeline.attributes import read_table
from pipeline.params import Section, load_params, parse_section
from pipeline.paths import ProjectPaths, is_within
from pipeline.quality import auto_accept as aa
from pipeline.quality.calibration import LogisticModel, calibration_summary, cross_fit, fit_model, low_part, \
    reliability_table
from pipeline.quality.features import check_ranges, complete_rows, constant_features, usable_features
from pipeline.quality.groups import attribute_rates
from pipeline.quality.outputs import (AUTO_JOURNAL_NAME, CONTRIBUTION_PREFIX, EVIDENCE_NAME, METRICS_NAME, MODEL_NAME,
                                      PLOTS_FOLDER, SCORES_NAME, VALIDATION_NAME, check_people)
from pipeline.review import journal as jr
from pipeline.review.pool import current_hashes, read_pool
from pipeline.stage import StageError, make_parser, run_main

_FEATURE = r"^[A-Za-z][A-Za-z0-9_]*$"


class AutoAcceptParams(Section):
    enabled: bool  # false: score and order the queue only
    target_error: float = Field(gt=0, lt=1)  # the bound of the error rate among auto-accepted masks stays under this
    confidence: float = Field(gt=0, lt=1)  # of that bound, over all candidate thresholds together
    candidates: int = Field(ge=1, le=1000)  # candidate thresholds: the top 1/K, 2/K, ... K/K of the evidence
    start_coverage: float = Field(ge=0, le=1)  # the candidates tested: from the top this share of the evidence up
    audit_share: float = Field(ge=0, le=1)  # of auto-accepted masks, drawn at random, still shown to a person


class ScorePoolParams(Section):
    good_iou: float = Field(gt=0, le=1)  # a mask is good when its IoU with the truth is at least this
    features: list[str] = Field(min_length=1)  # columns of scores.csv the model reads (absent/empty ones left out)
    evidence_kinds: list[str] | None = Field(min_length=1)  # validation rows by column `evidence`; null = all
    use_review_decisions: bool  # people's accept/reject on pool masks are evidence too
    folds: int = Field(ge=2, le=50)  # cross-fitting folds, grouped by parent photo
    l2: float = Field(gt=0)  # ridge penalty on the standardised features' weights
    reliability_bins: int = Field(ge=2, le=100)
    seed: int  # folds and the audit draw
    attributes_source: str = Field(min_length=1)  # the source whose photos paths.attributes describes
    auto_accept: AutoAcceptParams

    @field_validator("features")
    @classmethod
    def _names(cls, features: list[str]) -> list[str]:
        import re

        bad = [f for f in features if not re.match(_FEATURE, f)]
        if bad:
            raise ValueError(f"feature names are column names (letters, digits, _), got {bad}")
        if len(set(features)) != len(features):
            raise ValueError(f"a feature is named twice: {features}")
        return features


def output_folder(paths: ProjectPaths) -> Path:
    """``paths.quality``, checked: it overlaps no folder it must not replace."""
    folder = paths.quality
    quality = os.path.abspath(folder)
    for key in ("metrics", "plots", "journal", "pseudo"):
        other = os.path.abspath(getattr(paths, key))
        if is_within(other, quality) or is_within(quality, other):
            raise StageError(f"paths.{key} {getattr(paths, key)!r} and paths.quality {str(folder)!r} overlap; "
                             "score_pool replaces paths.quality as a whole")
    return folder


# ---------------------------------------------------------------------------- evidence


def labelled_evidence(validation: pd.DataFrame, settings: ScorePoolParams, notes: list[str],
                      where: str = VALIDATION_NAME) -> pd.DataFrame:
    """Validation rows as evidence: kind "labelled", group = parent photo, good = IoU >= good_iou."""
    if "id" not in validation.columns or "iou" not in validation.columns:
        raise StageError(f"{where}: needs columns id and iou (has {', '.join(validation.columns) or 'none'})")
    frame = validation.copy()
    if settings.evidence_kinds is not None:
        if "evidence" not in frame.columns:
            raise StageError(f"{where}: score_pool.evidence_kinds selects rows by column 'evidence', which it lacks; "
                             "set evidence_kinds: null to use every row")
        kinds = frame["evidence"].astype(str)
        unmatched = [kind for kind in settings.evidence_kinds if kind not in set(kinds)]
        if unmatched:
            notes.append(f"score_pool.evidence_kinds {unmatched} match no validation row "
                         f"(its kinds: {sorted(set(kinds))})")
        frame = frame[kinds.isin(settings.evidence_kinds)]
    frame["iou"] = pd.to_numeric(frame["iou"], errors="coerce")
    unknown = frame["iou"].isna() | ~frame["iou"].between(0, 1)
    if unknown.any():
        notes.append(f"{int(unknown.sum())} validation row(s) without an IoU in [0, 1] left out")
        frame = frame[~unknown]
    frame["id"] = frame["id"].astype(str)
    origin = frame["origin"].astype(str).str.strip() if "origin" in frame.columns else pd.Series("", index=frame.index)
    frame["group"] = np.where(origin.isin(["", "nan"]), frame["id"], origin)
    frame["kind"] = "labelled"
    frame["good"] = frame["iou"] >= settings.good_iou
    for column in ("source", "split"):
        if column not in frame.columns:
            frame[column] = frame["id"].str.split("/", n=1).str[0] if column == "source" else ""
    return frame.reset_index(drop=True)


def review_evidence(pool: pd.DataFrame, human: dict[str, jr.ReviewEvent], reserved: pd.Series) -> pd.DataFrame:
    """People's decisions on current pool masks as evidence (accept = good), audit-reserved masks left out.

    ``reserved`` is aligned with ``pool``'s rows.
    """
    frame = pool[pool["id"].isin(list(human)).to_numpy() & ~reserved.to_numpy(dtype=bool)].copy()
    frame["kind"] = "review"
    origin = frame["origin"].astype(str).str.strip()
    frame["group"] = np.where(origin == "", frame["id"], origin)
    frame["good"] = [human[i].decision == "accept" for i in frame["id"]]
    frame["iou"] = np.nan
    frame["source"] = frame["id"].str.split("/", n=1).str[0]
    frame["split"] = "pool"
    return frame.reset_index(drop=True)


# ---------------------------------------------------------------------------- the core


@dataclass
class ScoredPool:
    scores: pd.DataFrame  # one row per pool mask
    evidence: pd.DataFrame  # with out-of-fold p_good
    model: LogisticModel | None
    choice: aa.ThresholdChoice
    auto_events: list[jr.ReviewEvent]
    curve: pd.DataFrame
    reliability: pd.DataFrame
    metrics: dict
    notes: list[str] = field(default_factory=list)


def score_pool(pool: pd.DataFrame, validation: pd.DataFrame, human: dict[str, jr.ReviewEvent],
               settings: ScorePoolParams, *, human_events: list[jr.ReviewEvent] | None = None,
               attributes: pd.DataFrame | None = None) -> ScoredPool:
    """Fit, score, choose the threshold, route every pool mask. ``pool``: id, origin, mask_sha256 and
    the features; ``human``: a person's decision per current mask (resolved); no files are read."""
    notes: list[str] = []
    rule = settings.auto_accept
    pool = pool.reset_index(drop=True).copy()
    pool["id"] = pool["id"].astype(str)
    pool["origin"] = pool.get("origin", pd.Series("", index=pool.index)).fillna("").astype(str)
    reserved = pd.Series([aa.reserved_for_audit(settings.seed, rule.audit_share, i, h)
                          for i, h in zip(pool["id"], pool["mask_sha256"])], index=pool.index, dtype=bool)

    labelled = labelled_evidence(validation, settings, notes)
    review = review_evidence(pool, human, reserved) if settings.use_review_decisions else pool.iloc[:0].assign(
        kind="review", group="", good=False, iou=np.nan, source="", split="")
    left_for_audit = int(sum(1 for i, r in zip(pool["id"], reserved) if r and i in human))
    evidence = pd.concat([labelled, review], ignore_index=True)

    wanted = list(settings.features)
    features, feature_notes = usable_features(wanted, {"evidence": evidence, "pool": pool})
    notes += feature_notes
    check_ranges(evidence, features, "evidence")
    check_ranges(pool, features, "paths.pseudo/scores.csv")
    complete = complete_rows(evidence, features)
    if (~complete).any():
        notes.append(f"{int((~complete).sum())} evidence row(s) with a missing feature value left out")
        evidence = evidence[complete].reset_index(drop=True)
    flat = constant_features(evidence, features)
    if flat:
        notes.append(f"feature(s) {', '.join(flat)} left out: the same value on every evidence mask")
        features = [f for f in features if f not in flat]

    good = evidence["good"].to_numpy(dtype=bool)
    n_good, n_bad, n_groups = int(good.sum()), int((~good).sum()), int(evidence["group"].nunique())
    evidence["fold"] = -1
    evidence["p_good"] = np.nan
    model = None
    cannot_fit = None
    if not features:
        cannot_fit = "no usable feature"
    elif min(n_good, n_bad) < settings.folds or n_groups < settings.folds:
        cannot_fit = (f"too little evidence to fit the score: {n_good} good and {n_bad} bad mask(s) from {n_groups} "
                      f"photo(s); {settings.folds}-fold cross-fitting needs at least {settings.folds} of each")
    if cannot_fit is None:
        fit = cross_fit(evidence, good, evidence["group"], features, folds=settings.folds, l2=settings.l2,
                        seed=settings.seed)
        evidence["fold"], evidence["p_good"] = fit.fold, fit.probability
        model = fit_model(evidence, good, features, settings.l2)
        choice = aa.choose_threshold(evidence["p_good"], good, target=rule.target_error, confidence=rule.confidence,
                                     candidates=rule.candidates, start_coverage=rule.start_coverage)
        if not rule.enabled:
            choice = aa.nothing_accepted("auto_accept.enabled is false: nothing is auto-accepted",
                                         evidence=choice.evidence, target=rule.target_error,
                                         confidence=rule.confidence, candidates=rule.candidates,
                                         start_coverage=rule.start_coverage)
    else:
        notes.append(cannot_fit + "; the queue keeps pseudo_label's score and nothing is auto-accepted")
        choice = aa.nothing_accepted(cannot_fit + ", so nothing is auto-accepted", evidence=len(evidence),
                                     target=rule.target_error, confidence=rule.confidence,
                                     candidates=rule.candidates, start_coverage=rule.start_coverage)

    # ---- the pool
    if model is not None:
        p_good = model.predict(pool)
        out_of_fold = dict(zip(evidence.loc[evidence["kind"] == "review", "id"],
                               evidence.loc[evidence["kind"] == "review", "p_good"]))
        p_good = np.array([out_of_fold.get(i, p) for i, p in zip(pool["id"], p_good)])
        contributions = model.contributions(pool)
        lows = low_part(contributions)
    else:
        p_good = np.full(len(pool), np.nan)
        contributions = pd.DataFrame(index=pool.index)
        lows = pd.Series([""] * len(pool), index=pool.index)
    auto = np.isfinite(p_good) & (p_good >= choice.threshold) if choice.threshold is not None else \
        np.zeros(len(pool), dtype=bool)
    audit = auto & reserved.to_numpy(dtype=bool)
    route = np.where(audit, "audit", np.where(auto, "auto", "review"))
    scores = pd.DataFrame({"id": pool["id"], "origin": pool["origin"], "mask_sha256": pool["mask_sha256"],
                           "p_good": np.round(p_good, 6), "low_part": lows.to_numpy(), "route": route})
    for feature in contributions.columns:
        scores[CONTRIBUTION_PREFIX + feature] = np.round(contributions[feature].to_numpy(dtype=float), 4)
    scores["review_rank"] = _review_ranks(scores, settings.seed)
    scores = scores.sort_values(["review_rank", "id"], kind="stable").reset_index(drop=True)

    model_name = model.fingerprint() if model is not None else "none"
    accepted = scores[scores["route"].isin(["auto", "audit"])].assign(audit=lambda f: f["route"] == "audit")
    decided_at = aa.evidence_time([human[i] for i in review["id"]] if len(review) else [])
    events = aa.auto_events(accepted, choice, model_name, decided_at) if len(accepted) else []

    curve = aa.risk_coverage(evidence["p_good"], good, choice.level) if model is not None else \
        aa.risk_coverage([], [], choice.level)
    reliability = reliability_table(evidence["p_good"].to_numpy(), good, settings.reliability_bins) \
        if model is not None else reliability_table(np.zeros(0), np.zeros(0, bool), settings.reliability_bins)
    metrics = _metrics(pool, scores, evidence, model, choice, human, settings, notes, left_for_audit, attributes)
    return ScoredPool(scores, evidence, model, choice, events, curve, reliability, metrics, notes)


def _review_ranks(scores: pd.DataFrame, seed: int) -> np.ndarray:
    """Queue places: masks for a person by P(good), lowest first (unscored last), audited masks at
    seeded random places among them, then the auto-accepted masks that left the queue."""
    review = scores[scores["route"] == "review"]
    ranked = review.assign(_missing=review["p_good"].isna()).sort_values(["_missing", "p_good", "id"],
                                                                         kind="stable")["id"].tolist()
    audited = list(zip(scores.loc[scores["route"] == "audit", "id"], scores.loc[scores["route"] == "audit",
                                                                                "mask_sha256"]))
    order = aa.interleaved_order(ranked, audited, seed)
    order += scores[scores["route"] == "auto"].sort_values(["p_good", "id"], kind="stable")["id"].tolist()
    rank = {sample_id: position for position, sample_id in enumerate(order)}
    return scores["id"].map(rank).to_numpy(dtype=int)


def _metrics(pool, scores, evidence, model, choice, human, settings, notes, left_for_audit, attributes) -> dict:
    good = evidence["good"].to_numpy(dtype=bool)
    fitted = model is not None
    calibration = calibration_summary(evidence["p_good"], good, settings.reliability_bins) if fitted else None
    by_kind = {}
    if fitted:
        for kind, part in evidence.groupby("kind"):
            summary = calibration_summary(part["p_good"], part["good"], settings.reliability_bins)
            summary.pop("reliability")
            by_kind[str(kind)] = summary
        by_source = {}
        for source, part in evidence.groupby("source"):
            summary = calibration_summary(part["p_good"], part["good"], settings.reliability_bins)
            summary.pop("reliability")
            by_source[str(source)] = summary
    route = scores["route"]
    decided = scores["id"].isin(list(human)).to_numpy()
    shown = (route != "auto").to_numpy() | decided
    p = scores["p_good"].to_numpy(dtype=float)
    left_queue = int(((route == "auto").to_numpy() & ~decided).sum())
    auto_accepted = int(route.isin(["auto", "audit"]).sum())
    n = len(scores)
    expected_accepts = float(np.nansum(p[shown])) + left_queue
    expected_accepts_without = float(np.nansum(p))
    audit_human = {i: human[i] for i in scores.loc[route == "audit", "id"] if i in human}
    agreed = sum(1 for e in audit_human.values() if e.decision == "accept")
    level = choice.level
    metrics = {
        "evidence": {
            "masks": int(len(evidence)), "labelled": int((evidence["kind"] == "labelled").sum()),
            "review_decisions": int((evidence["kind"] == "review").sum()),
            "photos": int(evidence["group"].nunique()), "good": int(good.sum()), "bad": int((~good).sum()),
            "good_iou": settings.good_iou, "audit_decisions_kept_apart": left_for_audit,
            "by_source": {str(k): int(v) for k, v in evidence["source"].value_counts().sort_index().items()},
        },
        "model": None if not fitted else {
            "features": list(model.features), "intercept": model.intercept,
            "coefficients": dict(zip(model.features, model.coefficients)), "l2": model.l2, "folds": settings.folds,
            "fingerprint": model.fingerprint()},
        "calibration": calibration, "calibration_by_kind": by_kind if fitted else None,
        "calibration_by_source": by_source if fitted else None,
        "auto_accept": {"enabled": settings.auto_accept.enabled, "audit_share": settings.auto_accept.audit_share,
                        **choice.as_dict()},
        "pool": {
            "masks": n, "scored": int(np.isfinite(p).sum()), "auto_accepted": auto_accepted,
            "auto_accepted_share": round(auto_accepted / n, 6) if n else None,
            "audit": int((route == "audit").sum()), "left_the_queue": left_queue,
            "queue": int(shown.sum()), "decided_by_a_person": int(decided.sum()),
            "never_shown_share": round(left_queue / n, 6) if n else None,
            "expected_key_presses_per_accepted_label": round(float(shown.sum()) / expected_accepts, 6)
            if expected_accepts > 0 else None,
            "expected_key_presses_per_accepted_label_without_auto_accept": round(n / expected_accepts_without, 6)
            if expected_accepts_without > 0 else None,
        },
        "audit": {"audited": int((route == "audit").sum()), "audit_decided": len(audit_human), "audit_agreed": agreed,
                  "audit_precision": round(agreed / len(audit_human), 6) if audit_human else None,
                  "audit_error_upper_bound": round(aa.clopper_pearson_upper(len(audit_human) - agreed,
                                                                            len(audit_human), level), 6)
                  if audit_human else None, "bound_level": round(level, 6)},
        "notes": notes,
    }
    if attributes is not None and fitted:
        metrics["attributes"] = {"source": settings.attributes_source, "threshold": choice.threshold,
                                 **attribute_rates(evidence[evidence["kind"] == "labelled"], attributes,
                                                   settings.attributes_source, choice.threshold)}
    return metrics


# ---------------------------------------------------------------------------- stage


def read_validation(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise StageError(f"{path} does not exist: run pseudo_label first (it writes the labelled evidence)")
    try:
        return pd.read_csv(path, dtype={"id": str, "origin": str, "evidence": str, "source": str, "split": str},
                           keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=["id", "iou"])
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise StageError(f"{path}: not a readable CSV ({exc})") from None


def pool_frame(items) -> pd.DataFrame:
    return pd.DataFrame([{"id": i.id, "origin": i.origin, "mask_sha256": i.mask_sha256, **i.components}
                         for i in items])


def _body(args) -> int:
    raw = load_params(args.params)
    paths = parse_section(ProjectPaths, raw, "paths", args.params)
    settings = parse_section(ScorePoolParams, raw, "score_pool", args.params)
    quality = output_folder(paths)
    items, warnings = read_pool(paths.pseudo)
    for warning in warnings[:10]:
        print(f"warning: {warning}")
    if not items:
        raise StageError(f"{paths.pseudo}: the pool has no pseudo-labelled masks to score")
    validation = read_validation(paths.metrics_file(VALIDATION_NAME))
    events, torn = jr.read_journals(paths.journal)
    check_people(events, str(paths.journal))
    hashes = current_hashes(items)
    human = jr.resolve_decisions(events, hashes)
    attributes = None
    if Path(paths.attributes).is_file():
        attributes = read_table(paths.attributes)
    result = score_pool(pool_frame(items), validation, human, settings, attributes=attributes)
    if attributes is None:
        result.metrics["notes"].append(f"no attribute table at paths.attributes ({paths.attributes}): no per-group "
                                       "rates")
    if torn:
        result.metrics["notes"].append(f"skipped {torn} torn journal line(s)")

    with atomic_dir(quality) as tmp:
        write_csv(tmp / SCORES_NAME, result.scores)
        (tmp / AUTO_JOURNAL_NAME).write_text(aa.journal_text(result.auto_events), encoding="utf-8")
        columns = ["id", "kind", "source", "split", "group", "fold", "good", "iou", "p_good",
                   *[f for f in settings.features if f in result.evidence.columns]]
        write_csv(tmp / EVIDENCE_NAME, result.evidence[columns].round(6))
        model = None if result.model is None else result.model.as_dict()
        (tmp / MODEL_NAME).write_text(json.dumps(model, indent=2) + "\n", encoding="utf-8")
    write_json(paths.metrics_file(METRICS_NAME), result.metrics)
    plots = Path(paths.plots) / PLOTS_FOLDER
    write_csv(plots / "risk_coverage.csv", result.curve)
    labelled = result.evidence[result.evidence["kind"] == "labelled"]
    write_csv(plots / "score_vs_iou.csv", labelled[["id", "source", "p_good", "iou"]].round(6))
    write_csv(plots / "reliability.csv", result.reliability.round(6))

    pool = result.metrics["pool"]
    calibration = result.metrics["calibration"] or {}
    print(f"score_pool: {pool['masks']} pool masks; evidence {result.metrics['evidence']['masks']} masks "
          f"({result.metrics['evidence']['bad']} bad); out-of-fold failure ROC AUC "
          f"{calibration.get('failure_auc')}, Brier {calibration.get('brier')}")
    print(f"auto-accept: {result.choice.reason}")
    print(f"auto-accepted {pool['auto_accepted']} ({pool['audit']} of them audited, blind), "
          f"{pool['queue']} masks for a person -> {quality}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def main(argv=None) -> int:
    parser = make_parser("score-pool", __doc__.split("\n\n")[0])
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
