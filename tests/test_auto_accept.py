"""The auto-accept rule on cases computed by hand, the seeded blind audit, the journal lines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.quality import auto_accept as aa
from pipeline.quality.outputs import AUTO_REVIEWER, MergedDecisions, merge_decisions
from pipeline.review import journal as jr


def test_clopper_pearson_bound_by_hand():
    # no error among n: the exact bound is 1 - alpha^(1/n)
    assert aa.clopper_pearson_upper(0, 149, 0.95) == pytest.approx(1 - 0.05 ** (1 / 149))
    assert aa.clopper_pearson_upper(0, 149, 0.95) <= 0.02 < aa.clopper_pearson_upper(0, 148, 0.95)
    assert aa.min_accepted(0.02, 0.95) == 149  # ln(0.05) / ln(0.98) = 148.3
    assert aa.min_accepted(0.02, 1 - 0.05 / 20) == 297  # ln(0.0025) / ln(0.98) = 296.6
    # 1 error in 10: the table value of the one-sided 95% bound
    assert aa.clopper_pearson_upper(1, 10, 0.95) == pytest.approx(0.3942, abs=1e-4)
    assert aa.clopper_pearson_upper(0, 0, 0.95) == 1.0 and aa.clopper_pearson_upper(5, 5, 0.95) == 1.0


def ranked(p_bad_pairs):
    probability = np.array([p for p, _ in p_bad_pairs])
    good = np.array([not bad for _, bad in p_bad_pairs])
    return probability, good


def test_threshold_rule_on_a_case_computed_by_hand():
    # 40 masks, P(good) 0.999, 0.998, ...; candidates = top 20 and top 40, each bound at the full
    # 90%. No error: 22 accepted are the fewest that could pass (1 - 0.1^(1/n) <= 0.1 from n = 22:
    # ln 0.1 / ln 0.9 = 21.9), so top 20 is left out; top 40 bounds at 1 - 0.1^(1/40) = 5.6%.
    probability = 0.999 - 0.001 * np.arange(40)
    good = np.ones(40, dtype=bool)
    choice = aa.choose_threshold(probability, good, target=0.10, confidence=0.90, candidates=2)
    assert choice.level == pytest.approx(0.90) and choice.min_accepted == 22
    assert choice.threshold == pytest.approx(probability[39]) and choice.accepted == 40 and choice.errors == 0
    assert choice.upper_bound == pytest.approx(1 - 0.1 ** (1 / 40)) and choice.coverage == 1.0
    # Three bad masks at the bottom: 3 of 40 bounds at 15.9% > 10%, the only candidate tested:
    # nothing passes, nothing is accepted, and the reason says so.
    good[[37, 38, 39]] = False
    choice = aa.choose_threshold(probability, good, target=0.10, confidence=0.90, candidates=2)
    assert choice.threshold is None and choice.accepted == 0
    assert "no candidate threshold" in choice.reason and "3 bad of 40" in choice.reason
    # 60 masks, 3 candidates (20, 40, 60): 20 < 22 is left out; top 40 clean bounds at
    # 1 - 0.1^(1/40) = 5.6% <= 10%; all 60 with 3 bad at 10.8% fails and ends the sequence.
    probability = 0.999 - 0.001 * np.arange(60)
    good = np.ones(60, dtype=bool)
    good[[45, 50, 55]] = False
    choice = aa.choose_threshold(probability, good, target=0.10, confidence=0.90, candidates=3)
    assert choice.accepted == 40 and choice.threshold == pytest.approx(probability[39])
    assert choice.upper_bound == pytest.approx(1 - 0.1 ** (1 / 40))
    assert "3 bad of 60" in choice.reason


def test_the_sequence_ends_at_its_first_failure_even_when_a_later_candidate_would_pass():
    # 4 candidates of 100 masks (25, 50, 75, 100), target 10% at 90%. Top 25 clean: 8.8%, passes.
    # Masks 26-30 bad: top 50 has 5 of 50, bound 17.8%, fails. Top 100 (5 of 100, 9.1%) would
    # pass on its own, but testing it after a failure would spend error the rule does not have.
    probability = 0.999 - 0.001 * np.arange(100)
    good = np.ones(100, dtype=bool)
    good[25:30] = False
    assert aa.clopper_pearson_upper(5, 100, 0.90) <= 0.10 < aa.clopper_pearson_upper(5, 50, 0.90)
    choice = aa.choose_threshold(probability, good, target=0.10, confidence=0.90, candidates=4)
    assert choice.accepted == 25 and choice.errors == 0
    assert choice.upper_bound == pytest.approx(1 - 0.1 ** (1 / 25))


def test_the_sequence_starts_where_start_coverage_says_and_a_start_that_fails_ends_it():
    # 100 masks, 4 candidates (25, 50, 75, 100), target 10% at 90%; the two masks ranked highest
    # are bad. From the strictest: 2 of 25 bounds at 14.7% and ends the sequence. From the top
    # 50%: 2 of 50 bounds at 10.3%, over 10%, and that first test ends it too. From the top 75%:
    # 2 of 75 (6.9%) passes, then 2 of 100 (5.2%): all 100 are accepted.
    probability = 0.999 - 0.001 * np.arange(100)
    good = np.ones(100, dtype=bool)
    good[[0, 1]] = False
    assert aa.clopper_pearson_upper(2, 50, 0.90) > 0.10 >= aa.clopper_pearson_upper(2, 75, 0.90)
    kwargs = dict(target=0.10, confidence=0.90, candidates=4)
    strictest = aa.choose_threshold(probability, good, **kwargs)
    assert strictest.threshold is None and "2 bad of 25" in strictest.reason and "strictest" in strictest.reason
    half = aa.choose_threshold(probability, good, start_coverage=0.5, **kwargs)
    assert half.threshold is None and "2 bad of 50" in half.reason and "starts at the top 50%" in half.reason
    late = aa.choose_threshold(probability, good, start_coverage=0.75, **kwargs)
    assert late.accepted == 100 and late.errors == 2 and late.threshold == pytest.approx(probability[99])
    assert late.upper_bound == pytest.approx(aa.clopper_pearson_upper(2, 100, 0.90))
    assert late.start_coverage == 0.75 and late.as_dict()["start_coverage"] == 0.75
    # the start is a point of the grid j/K: 0.7 starts at 3/4, as 0.75 does; 1.0 tests all the evidence only
    assert aa.candidate_counts(100, 4, 0.7) == aa.candidate_counts(100, 4, 0.75) == [75, 100]
    assert aa.candidate_counts(100, 4, 1.0) == [100] and aa.candidate_counts(100, 4, 0.0) == [25, 50, 75, 100]
    with pytest.raises(ValueError, match="start_coverage"):
        aa.candidate_counts(100, 4, 1.5)


@pytest.mark.parametrize("start_coverage", [0.0, 0.5])
def test_the_rule_accepts_no_more_often_than_its_confidence_allows_when_the_target_is_not_met(start_coverage):
    # Evidence whose true error rate equals the target (10%) everywhere: any acceptance is a
    # false one, and at 80% confidence the rule may accept in at most 20% of seeded draws. Testing
    # each of the 10 candidates at 80% and taking any that passes (no sequence) accepts in
    # about 39% of these draws: the assertion tells the two apart.
    rng = np.random.default_rng(0)
    runs = 400
    accepted_runs = 0
    for _ in range(runs):
        probability = rng.random(400)
        good = rng.random(400) >= 0.10
        choice = aa.choose_threshold(probability, good, target=0.10, confidence=0.80, candidates=10,
                                     start_coverage=start_coverage)
        accepted_runs += choice.threshold is not None
    assert accepted_runs / runs <= 0.20 + 3 * math.sqrt(0.2 * 0.8 / runs)


def test_too_little_evidence_accepts_nothing_and_says_how_much_is_needed():
    choice = aa.choose_threshold(np.full(45, 0.99), np.ones(45, bool), target=0.02, confidence=0.95, candidates=20)
    assert choice.threshold is None and choice.accepted == 0
    assert choice.reason.startswith("too little evidence") and "at least 149" in choice.reason
    assert choice.as_dict()["threshold"] is None and choice.min_accepted == 149


def test_masks_tied_at_the_threshold_are_all_accepted():
    probability = np.array([0.9] * 3 + [0.8] * 3)
    choice = aa.choose_threshold(probability, np.ones(6, bool), target=0.5, confidence=0.9, candidates=6)
    assert choice.accepted == 6
    curve = aa.risk_coverage(probability, np.array([True] * 5 + [False]), level=0.9)
    assert curve["accepted"].tolist() == [3, 6] and curve["errors"].tolist() == [0, 1]
    assert curve["coverage"].tolist() == [0.5, 1.0]
    assert curve["upper_bound"].iloc[0] == pytest.approx(1 - 0.1 ** (1 / 3), abs=1e-6)


def test_the_audit_draw_is_seeded_reproducible_and_takes_its_share():
    ids = [(f"pseudo/{i:05d}", f"{i:064x}") for i in range(20000)]
    chosen = [aa.reserved_for_audit(0, 0.1, i, h) for i, h in ids]
    assert abs(np.mean(chosen) - 0.1) < 0.007  # 4.7 standard errors
    assert chosen == [aa.reserved_for_audit(0, 0.1, i, h) for i, h in ids]  # the same every run
    assert chosen != [aa.reserved_for_audit(1, 0.1, i, h) for i, h in ids]  # the seed matters
    # a new mask for the same id is a new draw (the audit judges masks, not ids)
    assert [aa.audit_draw(0, "pseudo/1", "a" * 64)] != [aa.audit_draw(0, "pseudo/1", "b" * 64)]
    assert not any(aa.reserved_for_audit(0, 0.0, i, h) for i, h in ids[:100])
    assert all(aa.reserved_for_audit(0, 1.0, i, h) for i, h in ids[:100])


def test_audited_masks_are_placed_among_the_queue_not_after_it():
    queue = [f"q{i:03d}" for i in range(200)]
    audited = [(f"a{i:02d}", f"{i:064x}") for i in range(20)]
    order = aa.interleaved_order(queue, audited, seed=0)
    assert [i for i in order if i.startswith("q")] == queue  # the queue's own order is kept
    places = [order.index(a) for a, _ in audited]
    assert min(places) < 60 and max(places) > 140  # spread through it
    assert order == aa.interleaved_order(queue, audited, seed=0)


def choice_for_tests() -> aa.ThresholdChoice:
    probability = np.linspace(0.999, 0.9, 400)
    return aa.choose_threshold(probability, np.ones(400, bool), target=0.02, confidence=0.95, candidates=4)


def test_auto_decisions_are_journalled_with_reviewer_threshold_and_evidence():
    choice = choice_for_tests()
    accepted = pd.DataFrame({"id": ["p/2", "p/1"], "mask_sha256": ["b" * 64, "a" * 64], "p_good": [0.995, 0.999],
                             "audit": [False, True]})
    events = aa.auto_events(accepted, choice, model="m0", decided_at=aa.NO_HUMAN_TIME)
    text = aa.journal_text(events)
    read = jr.parse_journal(text.encode(), where="auto.jsonl")
    assert not read.problems and read.torn == 0
    first, second = read.events
    assert [first.id, second.id] == ["p/1", "p/2"]  # sorted: the same bytes for the same decisions
    assert first.reviewer == AUTO_REVIEWER and first.decision == "accept" and first.via == "auto"
    assert first.extra["threshold"] == round(choice.threshold, 6) and first.extra["p_good"] == 0.999
    assert first.extra["audit"] is True and second.extra["audit"] is False
    evidence = first.extra["evidence"]
    assert evidence == {"rule": "clopper-pearson, fixed-sequence over coverage grid", "model": "m0", "target": 0.02,
                        "confidence": 0.95, "candidates": 4, "start_coverage": 0.0, "evidence": 400,
                        "accepted": choice.accepted,
                        "errors": 0, "upper_bound": round(choice.upper_bound, 6)}
    again = aa.auto_events(accepted, choice, model="m0", decided_at=aa.NO_HUMAN_TIME)
    assert aa.journal_text(again) == text  # deterministic ids and times
    assert aa.auto_events(accepted, choice, model="m1", decided_at=aa.NO_HUMAN_TIME)[0].event_id != first.event_id


def test_no_threshold_writes_no_accept():
    nothing = aa.nothing_accepted("why", evidence=3, target=0.02, confidence=0.95, candidates=20)
    with pytest.raises(ValueError):
        aa.auto_events(pd.DataFrame({"id": ["p/1"], "mask_sha256": ["a" * 64], "p_good": [0.9], "audit": [False]}),
                       nothing, model="m", decided_at=aa.NO_HUMAN_TIME)


def test_a_person_always_wins_over_the_rule_and_the_audit_is_counted():
    choice = choice_for_tests()
    accepted = pd.DataFrame({"id": ["p/1", "p/2", "p/3"], "mask_sha256": ["a" * 64] * 3,
                             "p_good": [0.99] * 3, "audit": [True, True, False]})
    auto = aa.auto_events(accepted, choice, model="m", decided_at="2026-09-01T00:00:00Z")
    # a person rejects p/1 *before* the rule's (newer) line: the person still wins
    people = [jr.make_decision("p/1", "reject", "a" * 64, "ann", decided_at="2026-01-01T00:00:00Z"),
              jr.make_decision("p/2", "accept", "a" * 64, "ann", decided_at="2026-01-01T00:00:00Z")]
    hashes = {"p/1": "a" * 64, "p/2": "a" * 64, "p/3": "a" * 64}
    merged = merge_decisions(people, auto, hashes)
    assert isinstance(merged, MergedDecisions)
    assert merged.applied["p/1"].decision == "reject" and merged.applied["p/1"].reviewer == "ann"
    assert merged.applied["p/3"].reviewer == AUTO_REVIEWER
    outcome = aa.audit_outcomes(merged.auto, merged.human, level=0.95)
    assert outcome["audited"] == 2 and outcome["audit_decided"] == 2 and outcome["audit_agreed"] == 1
    assert outcome["audit_precision"] == 0.5
    assert outcome["audit_error_upper_bound"] == pytest.approx(aa.clopper_pearson_upper(1, 2, 0.95))
    # a rule's line on a mask that changed since does not apply
    assert "p/3" not in merge_decisions(people, auto, {**hashes, "p/3": "c" * 64}).applied


def test_the_risk_coverage_curve_is_ordered_from_safest_to_broadest():
    rng = np.random.default_rng(0)
    probability = rng.random(500)
    good = rng.random(500) < probability
    curve = aa.risk_coverage(probability, good, level=0.95)
    assert curve["coverage"].is_monotonic_increasing and curve["threshold"].is_monotonic_decreasing
    assert (curve["upper_bound"] >= curve["error_rate"]).all()
    assert math.isclose(curve["coverage"].iloc[-1], 1.0)
