"""The score_pool stage: evidence, out-of-fold fit, threshold, routes, queue places, outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from params_helpers import quick_section, write_params
from pipeline.quality import auto_accept as aa
from pipeline.quality.outputs import AUTO_REVIEWER, read_auto_journal, read_calibrated_scores
from pipeline.review import journal as jr
from pipeline.stages.score_pool import ScorePoolParams, labelled_evidence, main, score_pool
from pipeline.stage import StageError

FEATURES = ["confidence", "flip_agreement", "teacher_agreement", "components", "presence"]


def settings(**changes) -> ScorePoolParams:
    changes.setdefault("evidence_kinds", None)  # the drawn tables' kinds are not the profiles'
    section = quick_section("score_pool", features=FEATURES, **changes)
    return ScorePoolParams.model_validate(section)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def drawn_masks(n: int, seed: int, prefix: str, crops_per_photo: int = 1) -> pd.DataFrame:
    """Masks whose features and IoU follow a hidden quality q (one q per photo, crops vary a little)."""
    rng = np.random.default_rng(seed)
    photos = np.repeat(np.arange(n // crops_per_photo + 1), crops_per_photo)[:n]
    q = rng.normal(size=photos.max() + 1)[photos] + 0.2 * rng.normal(size=n)
    return pd.DataFrame({
        "id": [f"{prefix}/{i:05d}" for i in range(n)],
        "origin": [f"photo/{prefix}{p:05d}" for p in photos],
        "confidence": _sigmoid(1.0 + 0.5 * q + 0.5 * rng.normal(size=n)),
        "flip_agreement": _sigmoid(3.0 + 1.0 * q + 0.5 * rng.normal(size=n)),
        "teacher_agreement": _sigmoid(2.0 + 1.5 * q + 0.4 * rng.normal(size=n)),
        "components": 1 + rng.poisson(np.exp(-q)),
        "presence": np.ones(n),
        "iou": _sigmoid(2.6 + 1.6 * q + 0.3 * rng.normal(size=n)),
        "mask_sha256": [f"{(i * 7919 + seed) % 16**12:012x}".rjust(64, "0") for i in range(n)],
    })


def validation_frame(n: int, seed: int = 0, crops_per_photo: int = 2) -> pd.DataFrame:
    frame = drawn_masks(n, seed, "ccp", crops_per_photo).drop(columns="mask_sha256")
    frame["source"], frame["split"], frame["evidence"] = "ccp", "val", "portrait"
    return frame


def pool_frame(n: int, seed: int = 1) -> pd.DataFrame:
    return drawn_masks(n, seed, "pseudo")


def test_labelled_evidence_groups_by_parent_photo_and_labels_by_iou():
    validation = pd.DataFrame({"id": ["ccp_crops/1_f0", "ccp_crops/1_f1", "ccp/2"], "origin": ["ccp/1", "ccp/1", ""],
                               "iou": [0.95, 0.5, 0.9], "evidence": ["portrait", "portrait", "full_body"]})
    notes: list[str] = []
    frame = labelled_evidence(validation, settings(), notes)
    assert frame["group"].tolist() == ["ccp/1", "ccp/1", "ccp/2"]  # no origin: its own photo
    assert frame["good"].tolist() == [True, False, True]  # IoU >= 0.9 is good, the boundary included
    only = labelled_evidence(validation, settings(evidence_kinds=["full_body"]), notes)
    assert only["id"].tolist() == ["ccp/2"] and notes == []
    typo = labelled_evidence(validation, settings(evidence_kinds=["portrait", "portraits"]), notes)
    assert len(typo) == 2 and notes == ["score_pool.evidence_kinds ['portraits'] match no validation row "
                                        "(its kinds: ['full_body', 'portrait'])"]
    with pytest.raises(StageError, match="evidence"):
        labelled_evidence(validation.drop(columns="evidence"), settings(evidence_kinds=["portrait"]), notes)


def test_enough_evidence_gives_a_calibrated_score_that_finds_failures_and_a_bounded_threshold():
    validation, pool = validation_frame(3000), pool_frame(1000)
    result = score_pool(pool.drop(columns="iou"), validation, {}, settings())
    calibration = result.metrics["calibration"]
    assert calibration["failure_auc"] > 0.9
    assert calibration["expected_calibration_error"] < 0.03
    choice = result.choice
    assert choice.threshold is not None and choice.upper_bound <= 0.02
    assert choice.error_rate <= choice.upper_bound
    # On fresh masks drawn like the evidence the rule's error rate is under the target too.
    accepted = result.scores.set_index("id").loc[pool["id"], "route"].isin(["auto", "audit"]).to_numpy()
    assert accepted.mean() > 0.2
    assert (pool["iou"].to_numpy()[accepted] < 0.9).mean() <= 0.02
    routes = result.scores["route"].value_counts()
    assert routes["audit"] == pytest.approx(0.1 * accepted.sum(), abs=4 * np.sqrt(accepted.sum() * 0.09) + 1)
    assert result.metrics["pool"]["auto_accepted"] == int(accepted.sum())
    # every auto-accepted mask has its journal line, with the rule's name, threshold and evidence
    assert len(result.auto_events) == int(accepted.sum())
    line = result.auto_events[0]
    assert line.reviewer == AUTO_REVIEWER and line.decision == "accept" and line.via == "auto"
    assert line.extra["threshold"] == round(choice.threshold, 6)
    assert line.extra["evidence"]["accepted"] == choice.accepted
    assert line.extra["evidence"]["upper_bound"] == round(choice.upper_bound, 6)
    assert line.decided_at == aa.NO_HUMAN_TIME  # learned from labelled photos only
    # the sequence began at the params' start: no candidate under the top 40% was tested
    assert choice.start_coverage == 0.4 and choice.coverage >= 0.4 - 1e-9
    assert result.metrics["auto_accept"]["start_coverage"] == 0.4


def test_the_rule_tests_only_candidates_from_start_coverage_up():
    validation, pool = validation_frame(3000), pool_frame(200)
    everything = score_pool(pool.drop(columns="iou"), validation, {}, settings(auto_accept=dict(start_coverage=1.0)))
    assert everything.choice.threshold is None and "starts at the top 100%" in everything.choice.reason
    assert f"of {len(validation)} accepted" in everything.choice.reason  # the only candidate: all the evidence


def test_too_little_evidence_accepts_nothing_and_says_so():
    result = score_pool(pool_frame(50).drop(columns="iou"), validation_frame(60), {}, settings())
    assert result.choice.threshold is None and "too little evidence" in result.choice.reason
    assert set(result.scores["route"]) == {"review"} and not result.auto_events
    assert result.metrics["auto_accept"]["threshold"] is None
    assert "too little evidence" in result.metrics["auto_accept"]["reason"]
    # still a score for the queue: 60 masks are enough to fit, not to bound 2%
    assert result.scores["p_good"].notna().all()
    tiny = score_pool(pool_frame(5).drop(columns="iou"), validation_frame(4), {}, settings())
    assert tiny.model is None and tiny.scores["p_good"].isna().all()
    assert any("too little evidence to fit" in note for note in tiny.notes)


def test_a_feature_missing_or_empty_is_left_out_with_a_note():
    validation = validation_frame(400)
    validation["teacher_agreement"] = np.nan  # one teacher
    pool = pool_frame(20).drop(columns=["iou", "teacher_agreement"])
    result = score_pool(pool, validation, {}, settings())
    assert "teacher_agreement" not in result.model.features
    assert "presence" not in result.model.features  # the same value everywhere: nothing to learn
    assert any("teacher_agreement left out" in n for n in result.notes)
    assert any("presence" in n and "same value" in n for n in result.notes)


def human(sample_id, verdict, mask, at="2026-03-01T10:00:00Z"):
    return jr.make_decision(sample_id, verdict, mask, "ann", 1.0, via="key", decided_at=at)


def test_a_persons_decisions_become_evidence_but_audited_masks_stay_apart():
    pool = pool_frame(400, seed=5)
    chosen = settings(auto_accept=dict(audit_share=0.3))
    reserved = [aa.reserved_for_audit(chosen.seed, 0.3, i, h) for i, h in zip(pool["id"], pool["mask_sha256"])]
    decided = {}
    for row, is_reserved in zip(pool.to_dict("records"), reserved):
        decided[row["id"]] = human(row["id"], "accept" if row["iou"] >= 0.9 else "reject", row["mask_sha256"],
                                   at="2026-03-01T10:00:00Z" if is_reserved else "2026-03-01T09:00:00Z")
    result = score_pool(pool.drop(columns="iou"), validation_frame(200), decided, chosen)
    review = result.evidence[result.evidence["kind"] == "review"]
    assert len(review) == len(pool) - sum(reserved)
    assert not set(review["id"]) & {i for i, r in zip(pool["id"], reserved) if r}
    assert result.metrics["evidence"]["audit_decisions_kept_apart"] == sum(reserved)
    # a decided pool mask keeps its out-of-fold probability: the model never saw its own decision
    oof = review.set_index("id")["p_good"]
    scored = result.scores.set_index("id")["p_good"]
    assert np.allclose(scored.loc[oof.index], oof.round(6), atol=1e-6)
    # the auto lines are dated by the newest decision learned from (reproducible), not the clock
    if result.auto_events:
        assert result.auto_events[0].decided_at == "2026-03-01T09:00:00.000000Z"


def test_queue_places_put_likely_failures_first_audits_among_them_and_auto_last():
    result = score_pool(pool_frame(1000).drop(columns="iou"), validation_frame(3000), {}, settings())
    scores = result.scores.sort_values("review_rank")
    assert scores["review_rank"].tolist() == list(range(len(scores)))
    review = scores[scores["route"] == "review"]
    assert review["p_good"].is_monotonic_increasing  # likely failures first
    audit_places = scores.index[scores["route"] == "audit"]
    positions = [scores.index.get_loc(i) for i in audit_places]
    queue_length = int((scores["route"] != "auto").sum())
    assert max(positions) < queue_length  # audits are in the queue, ...
    assert min(positions) < queue_length / 2  # ... spread through it, not waiting at its end
    assert (scores["route"].iloc[queue_length:] == "auto").all()
    again = score_pool(pool_frame(1000).drop(columns="iou"), validation_frame(3000), {}, settings())
    assert again.scores.equals(result.scores)  # seeded: the same outputs for the same inputs


def test_disabled_rule_only_scores():
    result = score_pool(pool_frame(200).drop(columns="iou"), validation_frame(3000), {},
                        settings(auto_accept=dict(enabled=False)))
    assert result.choice.threshold is None and "enabled is false" in result.choice.reason
    assert set(result.scores["route"]) == {"review"} and result.scores["p_good"].notna().all()


def test_out_of_range_feature_is_a_clear_error():
    pool = pool_frame(20).drop(columns="iou")
    pool.loc[3, "flip_agreement"] = 1.5
    with pytest.raises(StageError, match=r"pseudo/00003: flip_agreement = 1.5"):
        score_pool(pool, validation_frame(200), {}, settings())


def test_rates_per_attribute_group():
    validation = validation_frame(3000)
    eg = validation.iloc[:6].copy()
    eg["id"] = [f"eg1800/0000{i}" for i in range(6)]
    eg["iou"] = [0.99, 0.98, 0.97, 0.5, 0.99, 0.99]
    validation = pd.concat([validation.iloc[6:], eg], ignore_index=True)
    attributes = pd.DataFrame({"image_id": [f"0000{i}" for i in range(6)], "person": 0,
                               "race": ["asian", "asian", "black", "black", "caucasian", "unknown"],
                               "gender": ["woman"] * 3 + ["man"] * 3, "age": "youth"})
    from pipeline.attributes import normalise_table

    result = score_pool(pool_frame(100).drop(columns="iou"), validation, {}, settings(),
                        attributes=normalise_table(attributes))
    race = {row["group"]: row for row in result.metrics["attributes"]["race"]}
    assert race["asian"]["images"] == 2 and race["black"]["mean_iou"] == pytest.approx(0.735)
    assert race["black"]["good_share"] == 0.5
    evidence = result.evidence.set_index("id")
    expected = np.mean(evidence.loc[["eg1800/00000", "eg1800/00001"], "p_good"] >= result.choice.threshold)
    assert race["asian"]["auto_accept_rate"] == pytest.approx(expected)


# ---------------------------------------------------------------------------- the stage on files


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with a pool (stand-in masks), its features, a validation table and a journal."""
    from review_standin import synthetic_sample, write_pool

    monkeypatch.chdir(tmp_path)
    scores = write_pool(tmp_path / "data" / "pseudo", ((f"{i:03d}", *synthetic_sample(i, size=16)) for i in range(40)))
    features = pool_frame(40).drop(columns=["id", "origin", "mask_sha256", "iou"])
    table = pd.concat([scores[["id", "origin", "score", "mask_sha256"]], features], axis=1)
    table.to_csv(tmp_path / "data" / "pseudo" / "scores.csv", index=False)
    (tmp_path / "metrics").mkdir()
    validation_frame(3000).to_csv(tmp_path / "metrics" / "pseudo_label_validation.csv", index=False)
    write_params(tmp_path / "params.yaml", {"score_pool": {"features": FEATURES, "evidence_kinds": None},
                                            "paths": {"attributes": "missing.csv"}})
    return tmp_path


def test_main_writes_scores_auto_journal_metrics_and_plots(project, capsys):
    assert main(["--params", "params.yaml", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "auto-accept: P(good) >=" in out
    quality = project / "data" / "quality"
    calibrated = read_calibrated_scores(quality)
    assert len(calibrated) == 40
    auto = read_auto_journal(quality)
    assert {e.id for e in auto} == {k for k, v in calibrated.items() if v.route in ("auto", "audit")}
    metrics = json.loads((project / "metrics" / "score_pool.json").read_text())
    assert metrics["auto_accept"]["threshold"] is not None and metrics["calibration"]["failure_auc"] > 0.9
    assert any("no attribute table" in note for note in metrics["notes"])
    curve = pd.read_csv(project / "plots" / "score_pool" / "risk_coverage.csv")
    assert curve["coverage"].is_monotonic_increasing and {"error_rate", "upper_bound"} <= set(curve.columns)
    scatter = pd.read_csv(project / "plots" / "score_pool" / "score_vs_iou.csv")
    assert len(scatter) == 3000 and scatter["p_good"].between(0, 1).all()
    first = {p.name: p.read_bytes() for p in quality.iterdir() if p.is_file()}
    assert main(["--params", "params.yaml", "--quiet"]) == 0
    assert {p.name: p.read_bytes() for p in quality.iterdir() if p.is_file()} == first  # reproducible bytes


def test_main_without_validation_table_is_one_line(project, capsys):
    (project / "metrics" / "pseudo_label_validation.csv").unlink()
    assert main(["--params", "params.yaml"]) == 2
    assert "run pseudo_label first" in capsys.readouterr().err


def test_main_refuses_a_rule_name_in_a_persons_journal(project, capsys):
    from pipeline.review.pool import read_pool

    items, _ = read_pool(project / "data" / "pseudo")
    jr.append_event(jr.journal_path(project / "reviews" / "journal", "ann"),
                    jr.make_decision(items[0].id, "accept", items[0].mask_sha256, "auto:sneaky"))
    assert main(["--params", "params.yaml"]) == 2
    assert "is a rule's name" in capsys.readouterr().err
