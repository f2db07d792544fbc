"""Review queue cores without FiftyOne: journal, resolution, undo, queue order, export."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.quality.outputs import AUTO_REVIEWER, merge_decisions
from pipeline.review import journal as jr
from pipeline.review.dataset import SAMPLE_FIELDS, sample_fields
from pipeline.stages.export_reviews import decisions_csv_text, export_summary, main as export_main
from pipeline.review.pool import order_keys, queue_items, queue_order, read_pool
from pipeline.stage import StageError
from pipeline.tools.review import check_reviewer
from params_helpers import write_params
from review_standin import synthetic_sample, write_pool, write_quality

H1, H2 = "a" * 64, "b" * 64


def decision(sample_id, verdict, mask, at, reviewer="ann", seconds=1.0):
    return jr.make_decision(sample_id, verdict, mask, reviewer, seconds, via="key", decided_at=at)


def test_append_and_replay_keep_every_event_in_order(tmp_path):
    path = jr.journal_path(tmp_path, "ann")
    events = [decision("s/1", "accept", H1, "2026-01-01T00:00:01.000000Z"),
              decision("s/2", "reject", H2, "2026-01-01T00:00:02.000000Z", seconds=None)]
    events.append(jr.make_undo(events[1], "ann", decided_at="2026-01-01T00:00:03.000000Z"))
    for event in events:
        jr.append_event(path, event)
    read, torn = jr.read_journal(path)
    assert torn == 0
    assert [e.event_id for e in read] == [e.event_id for e in events]
    assert read[1].seconds_on_screen is None and read[0].seconds_on_screen == 1.0
    assert read[2].undoes == events[1].event_id
    assert all(json.loads(line)["reviewer"] == "ann" for line in path.read_text().splitlines())


def test_torn_last_line_is_skipped_and_next_append_starts_a_fresh_line(tmp_path):
    path = jr.journal_path(tmp_path, "ann")
    first = decision("s/1", "accept", H1, "2026-01-01T00:00:01.000000Z")
    jr.append_event(path, first)
    with open(path, "a") as fh:  # a crash in the middle of writing the second line
        fh.write('{"event":"decision","id":"s/2"')
    events, torn = jr.read_journal(path)
    assert [e.id for e in events] == ["s/1"] and torn == 1
    second = decision("s/3", "reject", H1, "2026-01-01T00:00:02.000000Z")
    jr.append_event(path, second)
    events, torn = jr.read_journal(path)
    assert [e.id for e in events] == ["s/1", "s/3"] and torn == 1


def test_corrupt_record_is_an_error_not_silently_dropped(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"event":"decision","event_id":"e","id":"s/1","reviewer":"r",'
                    '"decided_at":"t","decision":"maybe","mask_sha256":"h"}\n')
    with pytest.raises(jr.JournalError, match="accept or reject"):
        jr.read_journal(path)
    path.write_text('{"event":"decision","surprise":1}\n')
    with pytest.raises(jr.JournalError, match="unknown key"):
        jr.read_journal(path)


def test_latest_decision_on_the_current_mask_applies():
    events = [decision("s/1", "reject", H1, "2026-01-01T00:00:01.000000Z"),
              decision("s/1", "accept", H1, "2026-01-01T00:00:05.000000Z"),
              decision("s/2", "accept", H1, "2026-01-01T00:00:02.000000Z")]
    resolved = jr.resolve_decisions(events, {"s/1": H1, "s/2": H1})
    assert resolved["s/1"].decision == "accept" and resolved["s/2"].decision == "accept"


def test_changed_mask_sends_the_sample_back_and_keeps_old_decision_as_history():
    events = [decision("s/1", "accept", H1, "2026-01-01T00:00:01.000000Z")]
    now = {"s/1": H2}  # pseudo_label re-ran and wrote a different mask
    assert jr.resolve_decisions(events, now) == {}
    assert jr.stale_decisions(events, now)["s/1"].decision == "accept"
    # A decision on the new mask applies; the old one is never applied to it.
    events.append(decision("s/1", "reject", H2, "2026-01-01T00:00:09.000000Z"))
    assert jr.resolve_decisions(events, now)["s/1"].decision == "reject"
    # The mask changes back: the latest decision *on that mask* applies again.
    assert jr.resolve_decisions(events, {"s/1": H1})["s/1"].decision == "accept"


def test_ids_no_longer_in_the_pool_get_no_decision():
    events = [decision("gone/1", "accept", H1, "2026-01-01T00:00:01.000000Z")]
    assert jr.resolve_decisions(events, {"s/1": H1}) == {}


def test_undo_cancels_exactly_the_last_live_decision_of_that_reviewer():
    a1 = decision("s/1", "reject", H1, "2026-01-01T00:00:01.000000Z")
    a2 = decision("s/1", "accept", H1, "2026-01-01T00:00:02.000000Z")
    b1 = decision("s/2", "accept", H1, "2026-01-01T00:00:03.000000Z", reviewer="bob")
    events = [a1, a2, b1]
    assert jr.last_undoable(events, "ann") is a2
    events.append(jr.make_undo(a2, "ann", decided_at="2026-01-01T00:00:04.000000Z"))
    resolved = jr.resolve_decisions(events, {"s/1": H1, "s/2": H1})
    assert resolved["s/1"] is a1  # falls back to the earlier decision, not to nothing
    assert resolved["s/2"] is b1  # bob's decision is untouched
    assert jr.last_undoable(events, "ann") is a1
    events.append(jr.make_undo(a1, "ann", decided_at="2026-01-01T00:00:05.000000Z"))
    assert "s/1" not in jr.resolve_decisions(events, {"s/1": H1, "s/2": H1})
    assert jr.last_undoable(events, "ann") is None


def test_bad_seconds_on_screen_are_recorded_as_unknown():
    at = "2026-01-01T00:00:01Z"
    assert decision("s/1", "accept", H1, at, seconds=float("nan")).seconds_on_screen is None
    assert decision("s/1", "accept", H1, at, seconds=-1).seconds_on_screen is None
    assert decision("s/1", "accept", H1, at, seconds=1.23456).seconds_on_screen == 1.235
    with pytest.raises(ValueError):
        jr.make_decision("s/1", "maybe", H1, "ann")
    with pytest.raises(ValueError):
        jr.make_decision("s/1", "accept", "", "ann")


def test_progress_counts_and_median():
    events = [decision("s/1", "accept", H1, "2026-01-01T00:00:01Z", seconds=1.0),
              decision("s/2", "reject", H1, "2026-01-01T00:00:02Z", seconds=3.0),
              decision("s/3", "accept", H1, "2026-01-01T00:00:03Z", seconds=None)]
    p = jr.progress(jr.resolve_decisions(events, {f"s/{i}": H1 for i in range(1, 6)}), total=5)
    assert (p.reviewed, p.accepted, p.rejected, p.left, p.median_seconds) == (3, 2, 1, 2, 2.0)
    assert "left 2" in p.describe()


def test_queue_puts_undecided_likely_failures_first():
    scores = {"s/a": 0.9, "s/b": 0.1, "s/c": 0.5, "s/d": float("nan"), "s/e": 0.05}
    assert queue_order(scores, decided={"s/e"}) == ["s/b", "s/c", "s/a", "s/d", "s/e"]


def test_export_is_sorted_drops_superseded_and_is_byte_identical():
    events = [decision("s/2", "accept", H1, "2026-01-01T00:00:02.000000Z", seconds=1.5),
              decision("s/1", "reject", H2, "2026-01-01T00:00:01.000000Z", seconds=None),
              decision("s/3", "accept", H1, "2026-01-01T00:00:03.000000Z")]
    hashes = {"s/1": H2, "s/2": H1, "s/3": H2}  # s/3's mask changed since it was judged
    text = decisions_csv_text(jr.resolve_decisions(events, hashes))
    lines = text.splitlines()
    assert lines[0] == "id,decision,mask_sha256,reviewer,decided_at,seconds_on_screen,decided_by,audit"
    assert lines[1] == f"s/1,reject,{H2},ann,2026-01-01T00:00:01.000000Z,,human,false"
    assert lines[2] == f"s/2,accept,{H1},ann,2026-01-01T00:00:02.000000Z,1.500,human,false"
    assert len(lines) == 3
    assert decisions_csv_text(jr.resolve_decisions(list(reversed(events)), hashes)) == text
    summary = export_summary(events, hashes)
    assert (summary["exported"], summary["on_changed_masks"]) == (2, 1)


@pytest.fixture()
def pool(tmp_path):
    root = tmp_path / "pseudo"
    write_pool(root, ((f"{i:03d}", *synthetic_sample(i, size=24)) for i in range(6)), seed=1)
    return root


def test_read_pool_hashes_the_mask_files(pool):
    items, warnings = read_pool(pool)
    assert len(items) == 6 and not warnings
    assert all(len(i.mask_sha256) == 64 and not math.isnan(i.score) for i in items)
    (pool / "masks" / "pseudo" / "000.png").write_bytes((pool / "masks" / "pseudo" / "001.png").read_bytes())
    items, warnings = read_pool(pool)
    assert any("pseudo/000" in w and "decisions are tied to the file" in w for w in warnings)


def test_read_pool_without_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="pseudo_label"):
        read_pool(tmp_path / "missing")


def test_export_main_from_journal_only(pool, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project: where params.yaml is
    items, _ = read_pool(pool)
    journal_dir = tmp_path / "journal"
    for index, item in enumerate(items[:3]):
        jr.append_event(jr.journal_path(journal_dir, "ann"),
                        decision(item.id, "accept" if index else "reject", item.mask_sha256, f"2026-01-01T00:00:0{index}Z"))
    jr.append_event(jr.journal_path(journal_dir, "bob"),
                    decision(items[3].id, "accept", "c" * 64, "2026-01-01T00:00:09Z"))  # an older mask
    out = tmp_path / "reviews" / "decisions.csv"
    params = write_params(tmp_path / "params.yaml",
                          {"paths": {"pseudo": str(pool), "journal": str(journal_dir), "decisions": str(out)}})
    assert export_main(["--params", str(params), "--quiet"]) == 0
    first = out.read_bytes()
    rows = first.decode().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["reject", "accept", "accept"]
    assert [r.split(",")[6] for r in rows] == ["human"] * 3
    assert export_main(["--params", str(params)]) == 0
    assert out.read_bytes() == first
    assert not list(out.parent.glob(".*.tmp"))


def test_export_main_reports_bad_params(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", {"paths": {"pseudoo": "x"}})
    assert export_main(["--params", str(params)]) == 2
    assert "paths.pseudoo: unknown key" in capsys.readouterr().err


# ---------------------------------------------------------------- calibrated scores, auto-accept, audit


def test_auto_accepted_masks_leave_the_queue_and_audited_ones_stay_in_it(pool, tmp_path):
    items, _ = read_pool(pool)
    routes = {items[0].id: "auto", items[1].id: "audit", items[2].id: "auto"}
    write_quality(tmp_path / "quality", items, routes)
    calibrated, warnings = read_pool(pool, tmp_path / "quality")
    assert not warnings
    assert all(i.calibrated for i in calibrated) and calibrated[0].score == 0.5
    assert calibrated[0].low_part == "teacher_agreement" and calibrated[0].contributions["teacher_agreement"] == -1.25
    shown = [i.id for i in queue_items(calibrated, decided=[])]
    assert items[0].id not in shown and items[2].id not in shown and items[1].id in shown
    # a mask a person judged stays (they can see and change their decision)
    assert items[2].id in [i.id for i in queue_items(calibrated, decided=[items[2].id])]
    # the queue follows score_pool's places (there, audits sit at random places), not the raw score
    keys = order_keys(calibrated)
    assert queue_order(keys, decided=[]) == [i.id for i in calibrated]


def test_a_calibrated_row_counts_only_for_the_mask_it_scored(pool, tmp_path):
    items, _ = read_pool(pool)
    write_quality(tmp_path / "quality", items, {items[0].id: "auto"})
    (pool / "masks" / "pseudo" / "000.png").write_bytes((pool / "masks" / "pseudo" / "001.png").read_bytes())
    calibrated, warnings = read_pool(pool, tmp_path / "quality")
    changed = next(i for i in calibrated if i.id == items[0].id)
    assert not changed.calibrated and not changed.leaves_queue  # a new mask: shown to a person
    assert any("no calibrated score for the mask on disk" in w for w in warnings)
    order = queue_order(order_keys(calibrated), decided=[])
    assert order[-1] == items[0].id  # after the ranked ones


def test_an_audited_mask_is_shown_like_any_other(pool, tmp_path):
    items, _ = read_pool(pool)
    write_quality(tmp_path / "quality", items, {items[1].id: "audit"})
    calibrated, _ = read_pool(pool, tmp_path / "quality")
    audited, plain = calibrated[1], calibrated[3]
    assert audited.route == "audit" and plain.route == "review"
    shown, other = sample_fields(audited), sample_fields(plain)
    assert set(shown) == set(other) == set(SAMPLE_FIELDS)
    assert [type(shown[k]) for k in SAMPLE_FIELDS] == [type(other[k]) for k in SAMPLE_FIELDS]
    text = repr({k: v for k, v in shown.items() if k != "filepath"}).lower()  # the path holds the test's name
    assert "audit" not in text and "auto" not in text and "route" not in text
    assert shown["score_low_part"] == "teacher_agreement (-1.25 on the logit)"


def test_export_keeps_people_and_the_rule_apart_and_a_person_wins(pool, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    items, _ = read_pool(pool)
    routes = {items[0].id: "auto", items[1].id: "audit", items[2].id: "audit", items[3].id: "auto"}
    auto = write_quality(tmp_path / "quality", items, routes)
    journal_dir = tmp_path / "journal"
    for item, verdict in ((items[1], "accept"), (items[2], "reject"), (items[3], "reject"), (items[4], "accept")):
        jr.append_event(jr.journal_path(journal_dir, "ann"), decision(item.id, verdict, item.mask_sha256,
                                                                      "2026-01-01T00:00:01Z"))
    events, _ = jr.read_journals(journal_dir)
    hashes = {i.id: i.mask_sha256 for i in items}
    summary = export_summary(events, hashes, auto)
    assert summary["human"] == {"accepted": 2, "rejected": 2}
    assert summary["auto"] == {"accepted": 1, "overruled_by_a_person": 2}  # items 2 and 3 rejected by ann
    assert summary["audit"] == {"audited": 2, "decided": 2, "agreed": 1, "precision": 0.5}
    rows = [r.split(",") for r in decisions_csv_text(merge_decisions(events, auto, hashes)).splitlines()[1:]]
    by_id = {r[0]: r for r in rows}
    assert by_id[items[0].id][3] == AUTO_REVIEWER and by_id[items[0].id][6:] == ["auto", "false"]
    assert by_id[items[1].id][3] == "ann" and by_id[items[1].id][6:] == ["human", "true"]
    assert by_id[items[3].id][1] == "reject" and by_id[items[3].id][6] == "human"
    out = tmp_path / "reviews" / "decisions.csv"
    params = write_params(tmp_path / "params.yaml", {"paths": {"pseudo": str(pool), "journal": str(journal_dir),
                                                               "quality": "quality", "decisions": str(out),
                                                               "metrics": "metrics"}})
    assert export_main(["--params", str(params), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "metrics" / "reviews.json").read_text())
    assert metrics["auto"]["accepted"] == 1 and metrics["audit"]["agreed"] == 1
    assert len(out.read_text().splitlines()) == 1 + 5


def test_a_rule_name_is_refused_for_a_person_and_in_a_persons_journal(pool, tmp_path, monkeypatch, capsys):
    with pytest.raises(StageError, match="belong to the auto-accept rule"):
        check_reviewer("auto:me")
    assert check_reviewer("ann") == "ann"
    monkeypatch.chdir(tmp_path)
    items, _ = read_pool(pool)
    journal_dir = tmp_path / "journal"
    jr.append_event(jr.journal_path(journal_dir, "x"), decision(items[0].id, "accept", items[0].mask_sha256,
                                                                "2026-01-01T00:00:01Z", reviewer=AUTO_REVIEWER))
    params = write_params(tmp_path / "params.yaml", {"paths": {"pseudo": str(pool), "journal": str(journal_dir),
                                                               "quality": "quality", "metrics": "metrics",
                                                               "decisions": "reviews/decisions.csv"}})
    assert export_main(["--params", str(params)]) == 2
    assert "is a rule's name" in capsys.readouterr().err
