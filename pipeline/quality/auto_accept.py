"""Accepting a pseudo-label without a person: the threshold rule, the audit draw, the journal lines.

The rule: accept a mask when its P(good) is at least a threshold t chosen on out-of-fold
evidence (masks whose goodness is known and whose probability came from a model not fitted
on them) such that the exact (Clopper-Pearson) upper confidence bound of the error rate
among evidence masks with P(good) >= t is at most ``target``.

Choosing t by looking at the evidence is itself a test per candidate threshold, so the
bound is made to hold for the choice: the candidates are a fixed grid of ``candidates``
coverages of the evidence (the top 1/K, 2/K, ..., K/K of it by P(good); which masks those are
depends on the probabilities only, never on which masks are good), tested in that fixed
order, from the top ``start_coverage`` of the evidence up, each at the full ``confidence``; the
first candidate whose bound is over the target ends the sequence, and the rule takes the last
one that passed (fixed-sequence testing, as in "Learn then Test", Angelopoulos et al. 2021:
the family-wise error stays at ``1 - confidence`` without dividing it among the candidates, as
a Bonferroni correction over them would: at K = 20 and 95%, that needed 297 clean accepted
masks before anything could pass, this needs 149).

Where the sequence starts is fixed before the evidence is seen, and it matters: a small
candidate's bound is loose (1 bad of 202 bounds the rate at 2.33%, 5 bad of 805 at 1.30%),
so a sequence begun at the top 5% ends at the first stray failure there, before it reaches the
coverages the rule is for. On the profiles' 2,014 portrait evidence masks strictest-first
accepted nothing; started at 40% (the coverage the profiles aim at) the same rule, fitted on one
half of the photos, accepted about 40% of the other half at a held-out bound under 2%
(``benchmarks/auto_accept.py --crops``). The price: coverages under the start are never tried,
however clean they are.
Candidates with fewer accepted masks than could ever pass are left out of the sequence
before it starts (that depends on their counts only). So, with probability at least
``confidence`` over the evidence, the error rate of the chosen rule on masks like the
evidence is under the target. (Like any such bound it holds for masks drawn like the
evidence; the pool is not the evidence, which is why a share of the auto-accepted masks is
audited by a person.)

Too little evidence cannot pass: with no error at all among n accepted masks the bound is
``1 - alpha**(1/n)``, under the target only when n >= ``min_accepted(target, confidence)``. When
no candidate passes, the rule accepts nothing and says why.

The audit: a mask is *reserved for audit* when a hash of (seed, id, mask sha256) falls
below ``audit_share``; reserved masks the rule accepts still go to a person, in the queue
like any other mask. The draw depends on nothing else, so it is reproducible, the same for
a mask in every run, and independent of the mask's features. Reserved masks' review
decisions never become evidence: the audit measures the rule, so it must not shape it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.quality.outputs import AUTO_REVIEWER
from pipeline.review.journal import ReviewEvent

NO_HUMAN_TIME = "1970-01-01T00:00:00.000000Z"  # decided_at when no review decision was learned from


def clopper_pearson_upper(errors: int, n: int, level: float) -> float:
    """Exact one-sided upper bound (at ``level``) of a binomial rate with ``errors`` of ``n``."""
    from scipy.stats import beta

    if n <= 0 or errors >= n:
        return 1.0
    if errors == 0:
        return 1.0 - (1.0 - level) ** (1.0 / n)  # the closed form, exact
    return float(beta.ppf(level, errors + 1, n - errors))


def min_accepted(target: float, level: float) -> int:
    """The fewest accepted masks whose bound can be under ``target`` (no error among them)."""
    return max(1, math.ceil(math.log(1.0 - level) / math.log(1.0 - target) - 1e-12))


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float | None  # accept P(good) >= threshold; None = accept nothing
    accepted: int  # evidence masks at or above it
    errors: int  # of those, not good
    error_rate: float | None
    upper_bound: float | None  # Clopper-Pearson at `level`
    evidence: int  # evidence masks the rule was chosen on
    coverage: float  # accepted / evidence
    target: float
    confidence: float  # family-wise, over the sequence of candidates
    level: float  # of each candidate's bound (fixed-sequence testing: the confidence itself)
    candidates: int
    min_accepted: int  # the fewest accepted masks that could pass at `level`
    reason: str  # why this threshold, or why none
    start_coverage: float = 0.0  # the sequence's first candidate: the top this share of the evidence

    def as_dict(self) -> dict:
        out = asdict(self)
        for key in ("threshold", "error_rate", "upper_bound", "coverage", "level"):
            if out[key] is not None:
                out[key] = round(float(out[key]), 6)
        return out

    def journal_evidence(self, model: str) -> dict:
        """What each auto decision carries: enough to recheck the rule from the line alone."""
        return {"rule": "clopper-pearson, fixed-sequence over coverage grid", "model": model, "target": self.target,
                "confidence": self.confidence, "candidates": self.candidates,
                "start_coverage": self.start_coverage, "evidence": self.evidence,
                "accepted": self.accepted, "errors": self.errors,
                "upper_bound": None if self.upper_bound is None else round(self.upper_bound, 6)}


def nothing_accepted(reason: str, *, evidence: int, target: float, confidence: float, candidates: int,
                     start_coverage: float = 0.0) -> ThresholdChoice:
    """The rule's answer when it cannot even be tried (no model): accept nothing, and why."""
    level = confidence
    return ThresholdChoice(None, 0, 0, None, None, evidence=evidence, coverage=0.0, target=target,
                           confidence=confidence, level=level, candidates=candidates,
                           min_accepted=min_accepted(target, level), reason=reason, start_coverage=start_coverage)


def candidate_counts(m: int, candidates: int, start_coverage: float = 0.0) -> list[int]:
    """Accepted-evidence counts of the candidate coverages j/K >= start_coverage up to K/K (distinct, ascending)."""
    if not 0.0 <= start_coverage <= 1.0:
        raise ValueError(f"start_coverage must be within [0, 1], got {start_coverage}")
    first = max(1, math.ceil(start_coverage * candidates - 1e-9))  # j/K >= start, the last one (K/K) always in
    return sorted({math.ceil(j * m / candidates) for j in range(first, candidates + 1)} - {0})


def choose_threshold(probability: Sequence[float], good: Sequence[bool], *, target: float, confidence: float,
                     candidates: int, start_coverage: float = 0.0) -> ThresholdChoice:
    """The auto-accept threshold by the rule in the module docstring."""
    probability = np.asarray(probability, dtype=float)
    good = np.asarray(good, dtype=bool)
    keep = np.isfinite(probability)
    probability, good = probability[keep], good[keep]
    m = len(probability)
    level = confidence
    needed = min_accepted(target, level)
    common = dict(evidence=m, target=target, confidence=confidence, level=level, candidates=candidates,
                  min_accepted=needed, start_coverage=start_coverage)
    if m < needed:
        return ThresholdChoice(None, 0, 0, None, None, coverage=0.0, reason=(
            f"too little evidence: {m} evidence mask(s); bounding the error rate under {target:.1%} at "
            f"{confidence:.0%} confidence needs at least {needed} accepted evidence masks even with no error among "
            "them, so nothing is auto-accepted"), **common)
    order = np.argsort(-probability, kind="stable")
    sorted_p, sorted_bad = probability[order], ~good[order]
    cumulative_bad = np.cumsum(sorted_bad)
    best = None
    failed = None
    for count in candidate_counts(m, candidates, start_coverage):  # from the start up
        threshold = float(sorted_p[count - 1])
        accepted = int(np.searchsorted(-sorted_p, -threshold, side="right"))  # ties at the threshold go in
        if accepted < needed or (best is not None and accepted <= best[1]):
            continue  # could never pass (its count alone says so), or the same set as the last one tested
        errors = int(cumulative_bad[accepted - 1])
        bound = clopper_pearson_upper(errors, accepted, level)
        if bound > target:
            failed = (accepted, errors, bound)
            break  # the sequence ends at its first failure
        best = (threshold, accepted, errors, bound)
    start = f" (the sequence starts at the top {start_coverage:.0%})" if start_coverage > 0 else \
        " (the strictest with enough evidence)"
    if best is None:
        accepted, errors, bound = failed
        return ThresholdChoice(None, 0, 0, None, None, coverage=0.0, reason=(
            f"no candidate threshold keeps the error bound under {target:.1%}: the first tested{start}, "
            f"{errors} bad of {accepted} accepted, bounds it at {bound:.2%} ({confidence:.0%} confidence), so nothing "
            "is auto-accepted"), **common)
    threshold, accepted, errors, bound = best
    stop = "" if failed is None else f"; the next candidate ({failed[1]} bad of {failed[0]}) bounds at {failed[2]:.2%}"
    return ThresholdChoice(threshold, accepted, errors, errors / accepted, bound, coverage=accepted / m, reason=(
        f"P(good) >= {threshold:.6f}: {errors} bad of {accepted} evidence masks ({accepted / m:.1%} of {m}), error "
        f"bound {bound:.2%} <= {target:.1%} at {confidence:.0%} confidence (fixed sequence over {candidates} "
        f"candidates{' from the top ' + format(start_coverage, '.0%') if start_coverage > 0 else ''}{stop})"),
        **common)


def risk_coverage(probability: Sequence[float], good: Sequence[bool], level: float) -> pd.DataFrame:
    """The curve behind the rule: for each distinct threshold, the share accepted and its error.

    One row per distinct P(good) (highest first): ``coverage`` (share of evidence with P(good)
    >= threshold), ``error_rate`` among those and its pointwise Clopper-Pearson ``upper_bound``
    at ``level``.
    """
    probability = np.asarray(probability, dtype=float)
    good = np.asarray(good, dtype=bool)
    keep = np.isfinite(probability)
    probability, good = probability[keep], good[keep]
    order = np.argsort(-probability, kind="stable")
    p, bad = probability[order], ~good[order]
    cumulative = np.cumsum(bad)
    last_of_value = np.r_[p[1:] != p[:-1], True] if len(p) else np.zeros(0, bool)
    rows = []
    for index in np.flatnonzero(last_of_value):
        accepted, errors = int(index + 1), int(cumulative[index])
        rows.append({"threshold": round(float(p[index]), 6), "accepted": accepted, "errors": errors,
                     "coverage": round(accepted / len(p), 6), "error_rate": round(errors / accepted, 6),
                     "upper_bound": round(clopper_pearson_upper(errors, accepted, level), 6)})
    return pd.DataFrame(rows, columns=["threshold", "accepted", "errors", "coverage", "error_rate", "upper_bound"])


# ---------------------------------------------------------------------------- the audit draw


def audit_draw(seed: int, sample_id: str, mask_sha256: str, purpose: str = "audit") -> float:
    """A uniform number in [0, 1) fixed by (seed, purpose, id, mask): the same in every run."""
    digest = hashlib.sha256(f"{seed}\0{purpose}\0{sample_id}\0{mask_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def reserved_for_audit(seed: int, share: float, sample_id: str, mask_sha256: str) -> bool:
    return audit_draw(seed, sample_id, mask_sha256) < share


def interleaved_order(ranked: Sequence[str], audited: Iterable[tuple[str, str]], seed: int) -> list[str]:
    """``ranked`` (likely failures first) with each audited (id, mask) at a seeded random place.

    Audited masks are likely good; placed by their score they would all wait at the end of
    the queue, and a queue read part way would never audit anything. At a random place each,
    a person meets them at a steady rate and cannot tell them by position.
    """
    keys = [((position + 0.5) / max(len(ranked), 1), sample_id) for position, sample_id in enumerate(ranked)]
    keys += [(audit_draw(seed, sample_id, mask, purpose="position"), sample_id) for sample_id, mask in audited]
    return [sample_id for _, sample_id in sorted(keys)]


# ---------------------------------------------------------------------------- journal lines


def event_id(sample_id: str, mask_sha256: str, model: str) -> str:
    """Deterministic: the same rule on the same mask writes the same line (reproducible outputs)."""
    return hashlib.sha256(f"{AUTO_REVIEWER}\0{sample_id}\0{mask_sha256}\0{model}".encode()).hexdigest()[:32]


def evidence_time(events: Iterable[ReviewEvent]) -> str:
    """decided_at of auto decisions: the newest review decision learned from (reproducible), else the epoch."""
    times = [e for e in events if e.event == "decision"]
    return max(times, key=lambda e: e.time).decided_at_utc if times else NO_HUMAN_TIME


def auto_events(accepted: pd.DataFrame, choice: ThresholdChoice, model: str, decided_at: str) -> list[ReviewEvent]:
    """One accept per row of ``accepted`` (columns id, mask_sha256, p_good, audit), sorted by id."""
    if choice.threshold is None and len(accepted):
        raise ValueError("no threshold: the rule accepts nothing")
    evidence = choice.journal_evidence(model)
    events = []
    for row in accepted.sort_values("id").to_dict("records"):
        events.append(ReviewEvent(
            event="decision", event_id=event_id(row["id"], row["mask_sha256"], model), id=row["id"],
            reviewer=AUTO_REVIEWER, decided_at=decided_at, decision="accept", mask_sha256=row["mask_sha256"],
            via="auto", extra={"p_good": round(float(row["p_good"]), 6), "threshold": round(float(choice.threshold), 6),
                               "audit": bool(row["audit"]), "evidence": evidence}))
    return events


def journal_text(events: Sequence[ReviewEvent]) -> str:
    return "".join(event.to_json_line() for event in events)


def is_audit(event: ReviewEvent) -> bool:
    return bool(event.extra.get("audit", False))


def audit_outcomes(auto: Mapping[str, ReviewEvent], human: Mapping[str, ReviewEvent], level: float) -> dict:
    """The audit so far, from decisions resolved on the current masks: auto accepts reserved for a
    person, how many a person judged, how many they accepted, and the error rate's upper bound."""
    audited = [i for i, e in auto.items() if is_audit(e)]
    judged = [i for i in audited if i in human]
    agreed = sum(1 for i in judged if human[i].decision == "accept")
    return {"audited": len(audited), "audit_decided": len(judged), "audit_agreed": agreed,
            "audit_precision": round(agreed / len(judged), 6) if judged else None,
            "audit_error_upper_bound": round(clopper_pearson_upper(len(judged) - agreed, len(judged), level), 6)
            if judged else None, "audit_bound_level": level}
