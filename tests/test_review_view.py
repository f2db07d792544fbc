"""The review view's server side: batches in queue / triage order, triage pages journalled whole
with one fsync, the mask-sha256 rule on what the view shows. (The browser part is
test_review_view_browser.py.)"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from review_standin import synthetic_sample, write_pool

from pipeline.images import mask_to_png_bytes
from pipeline.review import journal as jr
from pipeline.review import view as rv
from pipeline.review.pool import disagreement_path_for, read_pool


def _event(sample_id: str, decision: str = "accept") -> jr.ReviewEvent:
    return jr.make_decision(sample_id, decision, "ab" * 32, "ann", 0.5, via="triage")


def test_append_events_writes_every_line_once_with_one_fsync(tmp_path, monkeypatch):
    path = tmp_path / "ann.jsonl"
    jr.append_event(path, _event("a"))
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(jr.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    jr.append_events(path, [_event("b"), _event("c", "reject"), _event("d")])
    jr.append_events(path, [])  # nothing to write: no fsync either
    assert len(synced) == 1
    events, torn = jr.read_journal(path)
    assert [(e.id, e.decision) for e in events] == [("a", "accept"), ("b", "accept"), ("c", "reject"), ("d", "accept")]
    assert torn == 0


def test_a_page_after_a_torn_line_starts_on_a_fresh_line(tmp_path):
    path = tmp_path / "ann.jsonl"
    jr.append_event(path, _event("a"))
    with open(path, "ab") as fh:
        fh.write(b'{"event":"decision","id":"cut sh')  # a crash mid-write, never acknowledged
    jr.append_events(path, [_event("b"), _event("c")])
    events, torn = jr.read_journal(path)
    assert [e.id for e in events] == ["a", "b", "c"] and torn == 1


def test_page_request_is_checked_whole():
    sha = "cd" * 32
    good = [{"sample_id": "s1", "decision": "accept", "mask_sha256": sha, "seconds_on_screen": 0.4},
            {"sample_id": "s2", "decision": "reject", "mask_sha256": sha, "seconds_on_screen": "x"}]
    assert rv.page_request(good) == [("s1", "accept", sha, 0.4), ("s2", "reject", sha, None)]
    for bad, reason in (([], "non-empty"), (good + [good[0]], "twice"),
                        ([{**good[0], "decision": "maybe"}], "accept or reject"),
                        ([{**good[0], "mask_sha256": ""}], "mask_sha256"),
                        ([{"decision": "accept"}], "sample_id"),
                        ([{**good[0], "sample_id": f"s{i}"} for i in range(rv.MAX_PAGE + 1)], "at most")):
        with pytest.raises(rv.RequestError, match=reason):
            rv.page_request(bad)


def test_batch_request_limits_and_refuses_nonsense():
    assert rv.batch_request({"mode": "triage", "count": 500, "exclude": ["x"]}) == ("triage", rv.MAX_BATCH, ["x"])
    assert rv.batch_request({}) == ("queue", 8, [])
    for params in ({"mode": "grid"}, {"count": -1}, {"count": True}, {"exclude": "abc"}):
        with pytest.raises(rv.RequestError):
            rv.batch_request(params)


def test_score_parts_put_what_pulls_the_score_down_first():
    parts = rv.score_parts({"edge": 0.4, "agreement": -1.3, "confidence": -0.2}, {"agreement": 0.55, "area": 0.3})
    assert [p["name"] for p in parts] == ["agreement", "confidence", "edge", "area"]
    assert parts[0] == {"name": "agreement", "push": -1.3, "value": 0.55}
    assert parts[-1]["push"] is None
    assert rv.score_parts({"nan": float("nan")}, None) == [{"name": "nan", "push": None, "value": None}]


def test_disagreement_map_sits_beside_the_mask(tmp_path):
    assert disagreement_path_for(tmp_path, "masks/pseudo/k.png") == tmp_path / "disagreement" / "pseudo" / "k.png"
    write_pool(tmp_path / "pool", ((f"{i:03d}", *synthetic_sample(i, size=24)) for i in range(2)), seed=1)
    target = disagreement_path_for(tmp_path / "pool", "masks/pseudo/001.png")
    target.parent.mkdir(parents=True)
    target.write_bytes(mask_to_png_bytes(np.zeros((32, 24), bool)))
    items, _ = read_pool(tmp_path / "pool")
    assert [bool(i.disagreement_path) for i in items] == [False, True]
    assert items[1].disagreement_path == str(target.resolve())


# ------------------------------------------------------------------ through FiftyOne

@pytest.fixture()
def queue(tmp_path):
    fo = pytest.importorskip("fiftyone")
    from pipeline.review import dataset as rd

    pool = tmp_path / "pseudo"
    write_pool(pool, ((f"{i:03d}", *synthetic_sample(i, size=24)) for i in range(8)), seed=3)
    name = f"pc-test-review-view-{uuid.uuid4().hex[:8]}"
    items, _ = read_pool(pool)
    dataset, view, _ = rd.sync_dataset(name, items, [])
    yield dataset, view, tmp_path / "journal", items
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def test_view_batch_hands_out_undecided_masks_in_queue_or_triage_order(queue):
    from pipeline.review import dataset as rd

    dataset, view, journal_dir, items = queue
    batch = rd.view_batch(dataset, "queue", 3)
    assert [b["pc_id"] for b in batch] == view.values("pc_id")[:3]  # likely failures first
    first = batch[0]
    assert first["mask_sha256"] == view.first()["mask_sha256"] and os.path.isfile(first["mask_path"])
    rd.record_decision(dataset, first["sample_id"], "accept", "ann", journal_dir)
    again = rd.view_batch(dataset, "queue", 3, exclude_ids=[batch[1]["sample_id"]])
    assert [b["pc_id"] for b in again] == view.values("pc_id")[2:5]  # decided and held ones skipped

    scores = sorted((i.score for i in items), reverse=True)
    triage = rd.view_batch(dataset, "triage", 10, min_score=scores[2])
    assert [b["score"] for b in triage] == [round(s, 4) for s in scores[:3]]  # confident ones, highest first
    with pytest.raises(rd.ReviewError, match="mode"):
        rd.view_batch(dataset, "grid", 1)


def test_page_is_journalled_whole_or_not_at_all(queue):
    from pipeline.review import dataset as rd

    dataset, view, journal_dir, _ = queue
    samples = list(view.limit(3))
    page = [(s.id, "reject" if n == 1 else "accept", s["mask_sha256"], 0.3) for n, s in enumerate(samples)]
    timings = {}
    events, progress = rd.record_decisions(dataset, page, "ann", journal_dir, via="triage",
                                           extra={"page_size": 3}, timings=timings)
    assert [(e.id, e.decision) for e in events] == [(s["pc_id"], d) for s, (_, d, _, _) in zip(samples, page)]
    assert progress.reviewed == 3 and dataset[samples[1].id]["review_decision"] == "reject"
    assert set(timings) == {"checked_ms", "journal_ms", "mirrored_ms"}
    logged, _ = jr.read_journal(jr.journal_path(journal_dir, "ann"))
    assert [e.extra for e in logged] == [{"page_size": 3}] * 3

    # one mask on the next page is not the one the view showed: nothing of the page is written
    others = list(view.skip(3).limit(2))
    bad_page = [(others[0].id, "accept", others[0]["mask_sha256"], 0.3), (others[1].id, "accept", "ef" * 32, 0.3)]
    with pytest.raises(rd.ReviewError, match="not the queue's"):
        rd.record_decisions(dataset, bad_page, "ann", journal_dir)
    assert len(jr.read_journal(jr.journal_path(journal_dir, "ann"))[0]) == 3
    assert dataset[others[0].id]["review_decision"] is None

    # a mask changed on disk is refused too, and without_progress skips the count
    with open(others[1]["pseudo_mask"].mask_path, "wb") as fh:
        fh.write(mask_to_png_bytes(np.ones((32, 24), bool)))
    with pytest.raises(rd.ReviewError, match="changed on disk"):
        rd.record_decisions(dataset, [(others[1].id, "accept", None, None)], "ann", journal_dir)
    event, progress = rd.record_decision(dataset, others[0].id, "reject", "ann", journal_dir,
                                         expected_sha256=others[0]["mask_sha256"], with_progress=False)
    assert progress is None and event.decision == "reject"


def test_view_operators_through_fiftyone(queue, monkeypatch):
    import fiftyone as fo
    import fiftyone.operators as foo

    from pipeline.review.config import (
        ENV_JOURNAL_DIR,
        ENV_REVIEWER,
        INFO_VIEW_SETTINGS,
        PLUGIN_NAME,
        PLUGINS_DIR,
    )

    dataset, _, journal_dir, _ = queue
    dataset.info[INFO_VIEW_SETTINGS] = {"prefetch": 5, "triage_min_score": 0.0, "triage_tile_px": 300,
                                        "min_seen_ms": 100, "unknown_later_key": 1}
    dataset.save()
    monkeypatch.setattr(fo.config, "plugins_dir", str(PLUGINS_DIR))
    monkeypatch.setenv(ENV_JOURNAL_DIR, str(journal_dir))
    monkeypatch.setenv(ENV_REVIEWER, "dora")

    def run(operator, params):
        return foo.execute_operator(f"{PLUGIN_NAME}/{operator}", ctx={"dataset": dataset, "params": params}).result

    batch = run("view_batch", {"mode": "triage", "count": 2})
    assert batch["ok"] and len(batch["items"]) == 2 and batch["settings"]["triage_tile_px"] == 300
    page = [{"sample_id": i["sample_id"], "decision": "accept", "mask_sha256": i["mask_sha256"]} for i in batch["items"]]
    result = run("decide_page", {"decisions": page, "progress": False})
    assert result["ok"] and "progress" not in result and result["timings"]["journal_ms"] >= 0
    result = run("undo_decision", {"quiet": True, "count": 2})
    assert result["ok"] and sorted(result["ids"]) == sorted(i["pc_id"] for i in batch["items"])
    events, _ = jr.read_journal(jr.journal_path(journal_dir, "dora"))
    assert [e.event for e in events] == ["decision", "decision", "undo", "undo"]
    assert not run("decide_page", {"decisions": page + page})["ok"]  # twice on one page
    assert not run("view_batch", {"mode": "nonsense"})["ok"]
