"""FiftyOne round trip of the review queue: build, decide, undo, lose the database, reload."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from pipeline.images import mask_to_png_bytes
from pipeline.review import journal as jr
from pipeline.review.pool import read_pool
from params_helpers import write_params
from review_standin import synthetic_sample, write_pool

fo = pytest.importorskip("fiftyone")

from pipeline.review import dataset as rd  # noqa: E402  (imports fiftyone lazily anyway)


@pytest.fixture()
def queue(tmp_path):
    pool = tmp_path / "pseudo"
    write_pool(pool, ((f"{i:03d}", *synthetic_sample(i, size=24)) for i in range(6)), seed=3)
    name = f"pc-test-review-{uuid.uuid4().hex[:8]}"
    yield pool, tmp_path / "journal", name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def _sync(pool, journal_dir, name):
    items, _ = read_pool(pool)
    events, _ = jr.read_journals(journal_dir)
    return rd.sync_dataset(name, items, events)


def test_round_trip_decide_undo_and_rebuild_from_journal(queue):
    pool, journal_dir, name = queue
    dataset, view, summary = _sync(pool, journal_dir, name)
    assert summary["samples"] == 6 and len(dataset) == 6
    scores = view.values("score")
    assert scores == sorted(scores)  # likely failures first
    first = view.first()
    assert os.path.isfile(first[rd.MASK_FIELD].mask_path)

    event, progress = rd.record_decision(dataset, first.id, "reject", "ann", journal_dir, 1.25, via="key")
    assert (progress.rejected, progress.left, progress.median_seconds) == (1, 5, 1.25)
    assert fo.load_dataset(name)[first.id]["review_decision"] == "reject"
    logged, _ = jr.read_journal(jr.journal_path(journal_dir, "ann"))
    assert [e.event_id for e in logged] == [event.event_id]
    assert logged[0].mask_sha256 == first["mask_sha256"]

    second = view.skip(1).first()
    rd.record_decision(dataset, second.id, "accept", "ann", journal_dir, 0.8)
    undo, undone_sample, progress = rd.undo_last(dataset, "ann", journal_dir)
    assert undo.undoes != event.event_id and undone_sample == second.id
    assert dataset[second.id]["review_decision"] is None and progress.reviewed == 1

    # The database is lost: a fresh dataset rebuilt from the journal has the same decisions,
    # and the decided sample has moved behind the undecided ones.
    fo.delete_dataset(name)
    dataset, view, summary = _sync(pool, journal_dir, name)
    assert summary["decided"] == 1 and summary["added"] == 6
    assert view.values("pc_id")[-1] == first["pc_id"]
    rebuilt = dataset.match(fo.ViewField("pc_id") == first["pc_id"]).first()
    assert rebuilt["review_decision"] == "reject" and rebuilt["review_seconds"] == 1.25
    assert rd.dataset_progress(dataset).reviewed == 1


def test_changed_mask_is_refused_then_requeued_with_history(queue):
    pool, journal_dir, name = queue
    dataset, view, _ = _sync(pool, journal_dir, name)
    sample = view.first()
    rd.record_decision(dataset, sample.id, "accept", "ann", journal_dir, 2.0)
    # pseudo_label re-runs and writes a different mask for that sample
    with open(sample[rd.MASK_FIELD].mask_path, "wb") as fh:
        fh.write(mask_to_png_bytes(np.ones((32, 24), bool)))
    with pytest.raises(rd.ReviewError, match="changed on disk"):
        rd.record_decision(dataset, sample.id, "reject", "ann", journal_dir, 2.0)
    dataset, view, summary = _sync(pool, journal_dir, name)
    assert summary["stale"] == 1 and summary["decided"] == 0
    reloaded = dataset.match(fo.ViewField("pc_id") == sample["pc_id"]).first()
    assert reloaded["review_decision"] is None
    assert "older mask" in reloaded["review_stale"]
    assert view.first()["pc_id"] == sample["pc_id"]  # undecided again, still the lowest score


def test_pool_changes_add_and_remove_samples(queue, tmp_path):
    pool, journal_dir, name = queue
    _sync(pool, journal_dir, name)
    smaller = tmp_path / "pseudo2"
    write_pool(smaller, ((f"{i:03d}", *synthetic_sample(i, size=24)) for i in range(2, 8)), seed=3)
    dataset, _, summary = _sync(smaller, journal_dir, name)
    assert (summary["added"], summary["removed"], len(dataset)) == (2, 2, 6)
    assert sorted(dataset.values("pc_id")) == [f"pseudo/{i:03d}" for i in range(2, 8)]


def test_plugin_operators_record_through_fiftyone(queue, monkeypatch):
    import fiftyone.operators as foo
    import fiftyone.plugins as fop

    from pipeline.review.config import ENV_JOURNAL_DIR, ENV_REVIEWER, PLUGIN_NAME, PLUGINS_DIR

    pool, journal_dir, name = queue
    dataset, view, _ = _sync(pool, journal_dir, name)
    monkeypatch.setattr(fo.config, "plugins_dir", str(PLUGINS_DIR))
    monkeypatch.setenv(ENV_JOURNAL_DIR, str(journal_dir))
    monkeypatch.setenv(ENV_REVIEWER, "carol")
    assert PLUGIN_NAME in [p.name for p in fop.list_plugins()]
    sample = view.first()
    result = foo.execute_operator(f"{PLUGIN_NAME}/decide", ctx={
        "dataset": dataset, "params": {"sample_id": sample.id, "decision": "accept", "seconds_on_screen": 0.9}})
    assert result.result["ok"], result.result
    assert result.result["progress"]["accepted"] == 1
    events, _ = jr.read_journal(jr.journal_path(journal_dir, "carol"))
    assert [(e.id, e.decision, e.seconds_on_screen) for e in events] == [(sample["pc_id"], "accept", 0.9)]
    result = foo.execute_operator(f"{PLUGIN_NAME}/undo_decision", ctx={"dataset": dataset, "params": {"quiet": True}})
    assert result.result["ok"] and result.result["sample_id"] == sample.id
    assert dataset[sample.id]["review_decision"] is None
    other = view.skip(1).first()
    result = foo.execute_operator(f"{PLUGIN_NAME}/reject_shown", ctx={"dataset": dataset, "current_sample": other.id})
    assert result.result["ok"], result.result
    assert dataset[other.id]["review_decision"] == "reject"
    events, _ = jr.read_journal(jr.journal_path(journal_dir, "carol"))
    assert (events[-1].via, events[-1].seconds_on_screen) == ("button", None)


def test_progress_operator_tells_the_key_script_min_seen_ms(queue, monkeypatch):
    """review.min_seen_ms reaches the App through the environment, else the dataset; else none is sent."""
    import fiftyone.operators as foo

    from pipeline.review.config import ENV_MIN_SEEN_MS, INFO_MIN_SEEN_MS, PLUGIN_NAME, PLUGINS_DIR

    pool, journal_dir, name = queue
    dataset, _, _ = _sync(pool, journal_dir, name)
    monkeypatch.setattr(fo.config, "plugins_dir", str(PLUGINS_DIR))
    monkeypatch.delenv(ENV_MIN_SEEN_MS, raising=False)

    def progress_result():
        result = foo.execute_operator(f"{PLUGIN_NAME}/review_progress", ctx={"dataset": dataset, "params": {}})
        assert result.result["ok"], result.result
        return result.result

    assert "min_seen_ms" not in progress_result()  # the key script keeps its starting value
    dataset.info[INFO_MIN_SEEN_MS] = 210
    dataset.save()
    assert progress_result()["min_seen_ms"] == 210
    monkeypatch.setenv(ENV_MIN_SEEN_MS, "180")
    assert progress_result()["min_seen_ms"] == 180


def test_review_command_load_only_and_status(queue, tmp_path, capsys, monkeypatch):
    from pipeline.review import config
    from pipeline.tools.review import main as review_main

    # the command sets these for the App server it starts: restore them afterwards
    for key in ("FIFTYONE_PLUGINS_DIR", config.ENV_JOURNAL_DIR, config.ENV_REVIEWER, config.ENV_MIN_SEEN_MS):
        monkeypatch.setenv(key, "")
    monkeypatch.setattr(fo.config, "plugins_dir", fo.config.plugins_dir)

    pool, journal_dir, name = queue
    monkeypatch.chdir(tmp_path)  # the project: where params.yaml is
    params = write_params(tmp_path / "params.yaml", {
        "paths": {"pseudo": str(pool), "journal": str(journal_dir),
                  "decisions": str(tmp_path / "reviews" / "decisions.csv")},
        "review": {"dataset_name": name, "min_seen_ms": 230}})
    items, _ = read_pool(pool)
    jr.append_event(jr.journal_path(journal_dir, "dan"),
                    jr.make_decision(items[0].id, "reject", items[0].mask_sha256, "dan", 2.5))
    assert review_main(["--params", str(params), "--load-only", "--reviewer", "dan"]) == 0
    out = capsys.readouterr().out
    assert "6 samples" in out and "1 decided" in out
    assert fo.load_dataset(name).count_values("review_decision").get("reject") == 1
    # what the App server reads when it was started without the command's environment
    assert fo.load_dataset(name).info["review_min_seen_ms"] == 230
    assert fo.load_dataset(name).info["review_journal_dir"] == str(journal_dir.resolve())
    assert review_main(["--params", str(params), "--status"]) == 0
    status = capsys.readouterr().out
    assert "reviewed 1/6 (accepted 0, rejected 1), left 5, median 2.50 s" in status
    assert "dan 1" in status


def test_auto_accepted_masks_are_not_in_the_app_and_audited_ones_look_like_any_other(queue, tmp_path):
    from review_standin import write_quality

    pool, journal_dir, name = queue
    items, _ = read_pool(pool)
    write_quality(tmp_path / "quality", items, {items[0].id: "auto", items[1].id: "audit"})
    calibrated, _ = read_pool(pool, tmp_path / "quality")
    dataset, view, summary = rd.sync_dataset(name, calibrated, [])
    assert summary["samples"] == 5 and summary["auto_accepted_not_shown"] == 1
    shown = set(dataset.values("pc_id"))
    assert items[0].id not in shown and items[1].id in shown
    assert view.values("pc_id") == [i.id for i in calibrated if i.id != items[0].id]  # score_pool's queue places
    audited = dataset.match(fo.ViewField("pc_id") == items[1].id).first()
    plain = dataset.match(fo.ViewField("pc_id") == items[2].id).first()
    assert audited.field_names == plain.field_names
    assert audited["score_low_part"] == "teacher_agreement (-1.25 on the logit)"
    assert audited["score"] == pytest.approx(0.55)
    assert "score_low_part" in dataset.app_config.active_fields.paths
