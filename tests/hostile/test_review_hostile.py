"""Hostile input for the review journal, export-reviews and the review command (issue 12).

Kept here so the reproductions stay fixed: a journal never drops an acknowledged decision
(only a final line can be torn; anything else unreadable is corruption, named by file and
line), the schema is versioned (later keys are read, a future major version is refused),
``decided_at`` is a time with a timezone compared as a time, every journal problem is one
line and exit 2, a database that never answers is one line after a bounded wait, and the
decisions file is the same bytes in any checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError, load_section
from pipeline.review import database as rdb
from pipeline.review import journal as jr
from pipeline.review.config import ReviewParams
from pipeline.stages.export_reviews import decisions_csv_text, main as export_main
from pipeline.paths import ProjectPaths
from pipeline.review.pool import read_pool
from pipeline.stage import StageError
from params_helpers import quick_params, write_params
from review_standin import synthetic_sample, write_pool

REPO = Path(__file__).resolve().parents[2]
H1, H2 = "a" * 64, "b" * 64
# The project layout the fixtures build.
REVIEW_PATHS = {"pseudo": "data/pseudo", "journal": "reviews/journal", "decisions": "reviews/decisions.csv"}


def decision(sample_id, verdict, mask=H1, at="2026-01-01T00:00:01Z", reviewer="ann"):
    return jr.make_decision(sample_id, verdict, mask, reviewer, 1.0, via="key", decided_at=at)


def line(**record) -> str:
    base = {"event": "decision", "event_id": "e1", "id": "s/1", "reviewer": "ann",
            "decided_at": "2026-01-01T00:00:01Z", "decision": "accept", "mask_sha256": H1}
    base.update(record)
    return json.dumps({k: v for k, v in base.items() if v is not ...}) + "\n"


def write_journal(tmp_path, *events) -> Path:
    path = jr.journal_path(tmp_path / "journal", "ann")
    for event in events:
        jr.append_event(path, event)
    return path


# ----------------------------------------------------------------- torn lines vs corruption


def test_unterminated_last_line_is_torn_and_counted(tmp_path):
    path = write_journal(tmp_path, decision("s/1", "accept"), decision("s/2", "reject"))
    with open(path, "ab") as fh:
        fh.write(b'{"event":"decision","id":"s/3","dec')  # a crash mid-write
    events, torn = jr.read_journal(path)
    assert [e.id for e in events] == ["s/1", "s/2"] and torn == 1


def test_torn_line_repaired_then_appended_is_still_torn_not_corruption(tmp_path):
    path = write_journal(tmp_path, decision("s/1", "accept"))
    with open(path, "ab") as fh:
        fh.write(b'{"event":"decision","id":"s/2","decided_at":"2026-01-0')
    # the App restarts after the crash and goes on appending
    jr.append_event(path, decision("s/3", "reject", at="2026-01-01T00:00:03Z"))
    jr.append_event(path, decision("s/4", "accept", at="2026-01-01T00:00:04Z"))
    events, torn = jr.read_journal(path)
    assert [e.id for e in events] == ["s/1", "s/3", "s/4"] and torn == 1
    lines = path.read_text().splitlines()
    assert all(json.loads(text) for text in lines)  # the torn bytes no longer sit mid-file
    repair = json.loads(lines[1])
    assert repair["event"] == "repair" and repair["torn_text"].startswith('{"event":"decision","id":"s/2"')
    # a second crash and restart: still every acknowledged decision, two torn writes
    with open(path, "ab") as fh:
        fh.write(b"\x00\x00\x00\x00")
    jr.append_event(path, decision("s/5", "accept", at="2026-01-01T00:00:05Z"))
    events, torn = jr.read_journal(path)
    assert [e.id for e in events] == ["s/1", "s/3", "s/4", "s/5"] and torn == 2


def test_tail_that_is_a_whole_record_missing_only_its_newline_is_kept(tmp_path):
    path = write_journal(tmp_path, decision("s/1", "accept"))
    with open(path, "a") as fh:
        fh.write(decision("s/2", "reject").to_json_line().rstrip("\n"))
    jr.append_event(path, decision("s/3", "accept"))
    events, torn = jr.read_journal(path)
    assert [e.id for e in events] == ["s/1", "s/2", "s/3"] and torn == 0


@pytest.mark.parametrize("damaged", [
    b'{"event":"decision","event_id":"e2","id":"s/2",\x00\x00"reviewer":"ann"}',  # bytes lost inside a line
    b'{"event":"decision","id":"s/2","decided_at":"2026-01-0',  # looks cut short, but a line follows
    b"<<<<<<< HEAD",  # a merge conflict left in
    b"\xff\xfe not utf-8",
])
def test_unreadable_complete_line_in_the_middle_is_corruption_named_by_file_and_line(tmp_path, damaged):
    path = write_journal(tmp_path, decision("s/1", "accept"))
    with open(path, "ab") as fh:
        fh.write(damaged + b"\n")
    jr.append_event(path, decision("s/3", "reject"))
    with pytest.raises(jr.JournalError) as info:
        jr.read_journal(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: cannot read ") and "corruption" in message and "\n" not in message
    with pytest.raises(jr.JournalError, match=":2: "):
        jr.read_journals(path.parent)


def test_complete_but_unreadable_last_line_is_corruption(tmp_path):
    path = write_journal(tmp_path, decision("s/1", "accept"))
    with open(path, "ab") as fh:
        fh.write(b'{"event":"decision",garbage}\n')  # it ends with "\n": the write completed
    with pytest.raises(jr.JournalError, match=":2: cannot read"):
        jr.read_journal(path)


def test_every_bad_line_is_counted_in_the_one_line_report(tmp_path):
    path = tmp_path / "journal" / "ann.jsonl"
    path.parent.mkdir()
    path.write_text(line(v=1) + "{bad}\n" + line(v=1, event_id="e2") + "{worse}\n" + line(v=1, event_id="e3"))
    with pytest.raises(jr.JournalError, match=r":2: .*\(and 1 more unreadable journal line\(s\)\)"):
        jr.read_journals(path.parent)


def test_journal_written_before_versioning_still_reads_including_its_old_style_torn_line(tmp_path):
    # The old code wrote no "v" and terminated a torn line with a bare "\n" before appending.
    path = tmp_path / "ann.jsonl"
    old = ('{"decided_at":"2026-01-01T00:00:01.000000Z","decision":"accept","event":"decision","event_id":"e1",'
           f'"id":"s/1","mask_sha256":"{H1}","reviewer":"ann","seconds_on_screen":1.0,"undoes":"","via":"key"}}\n')
    path.write_text(old + '{"event":"decision","id":"s/2","deci\n' + line(event_id="e3", id="s/3"))
    events, torn = jr.read_journal(path)
    assert [(e.id, e.version) for e in events] == [("s/1", 0), ("s/3", 0)] and torn == 1
    # ... but a complete unreadable line among old lines is corruption all the same
    path.write_text(old + '{"event":"decision","id":"s/2",,}\n' + line(event_id="e3", id="s/3"))
    with pytest.raises(jr.JournalError, match=":2: cannot read"):
        jr.read_journal(path)


# ----------------------------------------------------------------- versioned schema


def test_every_written_line_carries_the_schema_version(tmp_path):
    first = decision("s/1", "accept")
    path = write_journal(tmp_path, first, jr.make_undo(first, "ann", decided_at="2026-01-01T00:00:02Z"))
    assert [json.loads(text)["v"] for text in path.read_text().splitlines()] == [jr.SCHEMA_VERSION] * 2


def test_keys_of_a_later_version_are_read_and_kept(tmp_path):
    path = tmp_path / "journal" / "auto.jsonl"
    path.parent.mkdir()
    path.write_text(line(v=1, reviewer="auto:score>0.9", threshold=0.9, evidence={"score": 0.97}, via="auto")
                    + line(v="1.3", event_id="e2", id="s/2", reviewer="auto:score>0.9", rule_id="r7"))
    events, torn = jr.read_journals(path.parent)
    assert torn == 0 and [e.reviewer for e in events] == ["auto:score>0.9"] * 2
    assert events[0].extra == {"threshold": 0.9, "evidence": {"score": 0.97}} and events[1].extra == {"rule_id": "r7"}
    resolved = jr.resolve_decisions(events, {"s/1": H1, "s/2": H1})
    assert sorted(resolved) == ["s/1", "s/2"]
    # make_decision can write such keys too, and they survive the round trip
    auto = jr.make_decision("s/3", "accept", H1, "auto:score>0.9", extra={"threshold": 0.9})
    jr.append_event(path, auto)
    assert jr.read_journal(path)[0][-1].extra == {"threshold": 0.9}
    with pytest.raises(ValueError, match="overwrite"):
        jr.make_decision("s/3", "accept", H1, "auto", extra={"decision": "reject"})


@pytest.mark.parametrize("record, message", [
    (dict(v=2), "schema version 2, newer than this portrait-curation reads.*upgrade"),
    (dict(v="3.0"), "schema version '3.0'"),
    (dict(v=True), "whole number"),
    (dict(v=1, mask_sha256=...), r"without required key\(s\) \['mask_sha256'\]"),
    (dict(v=1, event="comment"), "not a review event"),
    (dict(v=1, decision="maybe"), "accept or reject"),
    (dict(v=1, mask_sha256="h"), "64 lowercase hex"),
    (dict(v=1, seconds_on_screen="slow"), "seconds_on_screen"),
    (dict(v=1, reviewer=7), "reviewer must be text"),
    (dict(surprise=1), r"unknown key\(s\) \['surprise'\] in a line without a schema version"),
    (dict(event="undo", undoes=...), r"without required key\(s\) \['undoes'\]"),
])
def test_bad_records_are_clear_errors_naming_the_line(tmp_path, record, message):
    path = tmp_path / "ann.jsonl"
    path.write_text(line(v=1, event_id="e0") + line(**record))
    with pytest.raises(jr.JournalError, match=f"{path}:2: .*{message}"):
        jr.read_journal(path)


# ----------------------------------------------------------------- decided_at


def test_decided_at_is_compared_as_a_time_not_as_text():
    # 10:00 at +01:00 is 09:00 UTC: earlier than 09:30 UTC, although its text sorts later.
    ann = decision("s/1", "accept", at="2026-01-01T10:00:00+01:00", reviewer="ann")
    bob = decision("s/1", "reject", at="2026-01-01T09:30:00Z", reviewer="bob")
    for events in ([ann, bob], [bob, ann]):
        assert jr.resolve_decisions(events, {"s/1": H1})["s/1"] is bob
    assert jr.last_undoable([ann, bob], "ann") is ann


@pytest.mark.parametrize("bad", ["yesterday", "2026-01-01T09:30:00", "2026-01-01", "2026-13-01T00:00:00Z", ""])
def test_decided_at_without_a_valid_time_and_timezone_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="decided_at"):
        decision("s/1", "accept", at=bad or " ")
    path = tmp_path / "ann.jsonl"
    path.write_text(line(v=1, decided_at=bad))
    with pytest.raises(jr.JournalError, match=f"{path}:1: .*decided_at"):
        jr.read_journal(path)


# ----------------------------------------------------------------- export-reviews


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A project folder with a small pool; the command runs from it, params with relative paths."""
    root = tmp_path / "proj"
    write_pool(root / "data" / "pseudo", ((f"{i:03d}", *synthetic_sample(i, size=24)) for i in range(4)), seed=2)
    write_params(root / "params.yaml", {"paths": REVIEW_PATHS})
    monkeypatch.chdir(root)
    return root


def _pool_items(root):
    items, _ = read_pool(root / "data" / "pseudo")
    return items


def test_export_reviews_stops_with_one_line_on_a_corrupt_journal(project, capsys):
    items = _pool_items(project)
    path = jr.journal_path(project / "reviews" / "journal", "ann")
    jr.append_event(path, decision(items[0].id, "accept", items[0].mask_sha256))
    with open(path, "ab") as fh:
        fh.write(b'{"event":"decision","id":"' + items[1].id.encode() + b'",\x00\x00}\n')
    jr.append_event(path, decision(items[2].id, "reject", items[2].mask_sha256))
    assert export_main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    where = path.relative_to(project)  # named as the params name it: relative to the project
    assert err.startswith("portrait-curation export-reviews: error: ") and f"{where}:2: cannot read" in err
    assert not (project / "reviews" / "decisions.csv").exists()


def test_export_reviews_unexpected_key_is_one_line_not_a_traceback(project, capsys):
    items = _pool_items(project)
    path = project / "reviews" / "journal" / "ann.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(line(id=items[0].id, mask_sha256=items[0].mask_sha256, colour="blue"))
    assert export_main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "colour" in err and f"{path.relative_to(project)}:1:" in err


def test_export_reviews_reads_later_version_lines_and_counts_torn_ones(project, capsys):
    items = _pool_items(project)
    path = project / "reviews" / "journal" / "ann.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(line(v=1, id=items[0].id, mask_sha256=items[0].mask_sha256, reviewer="ann",
                         threshold=0.9, evidence=["score"]) + '{"event":"decision","id"')
    assert export_main(["--params", "params.yaml"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 torn journal line(s)" in out
    rows = (project / "reviews" / "decisions.csv").read_text().splitlines()
    assert rows[1].startswith(f"{items[0].id},accept,{items[0].mask_sha256},ann,")


def test_export_picks_the_later_time_across_offsets(project):
    items = _pool_items(project)
    target = items[0]
    jr.append_event(jr.journal_path(project / "reviews" / "journal", "ann"),
                    decision(target.id, "accept", target.mask_sha256, at="2026-01-01T10:00:00+01:00"))
    jr.append_event(jr.journal_path(project / "reviews" / "journal", "bob"),
                    decision(target.id, "reject", target.mask_sha256, at="2026-01-01T09:30:00Z", reviewer="bob"))
    assert export_main(["--params", "params.yaml"]) == 0
    row = (project / "reviews" / "decisions.csv").read_text().splitlines()[1]
    assert row == f"{target.id},reject,{target.mask_sha256},bob,2026-01-01T09:30:00.000000Z,1.000,human,false"


def test_decisions_are_the_same_bytes_in_two_checkouts_and_hold_no_path(project, tmp_path, monkeypatch):
    items = _pool_items(project)
    journal = project / "reviews" / "journal"
    for index, item in enumerate(items):
        jr.append_event(jr.journal_path(journal, "ann" if index % 2 else "bob"),
                        decision(item.id, "accept" if index % 3 else "reject", item.mask_sha256,
                                 at=f"2026-01-0{index + 1}T10:00:00+0{index}:00"))
    other = tmp_path / "elsewhere" / "second-checkout"
    shutil.copytree(project, other)
    outputs = []
    for root in (project, other):
        monkeypatch.chdir(root)
        assert export_main(["--params", "params.yaml"]) == 0
        outputs.append((root / "reviews" / "decisions.csv").read_bytes())
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 1 + len(items)
    text = outputs[0].decode()
    assert str(tmp_path) not in text and "/proj" not in text and "second-checkout" not in text
    assert not any(field.startswith(("/", "~")) for row in text.splitlines() for field in row.split(","))


def test_a_field_that_looks_like_an_absolute_path_is_refused():
    event = decision("/home/ann/s/1", "accept")
    with pytest.raises(StageError, match="absolute path"):
        decisions_csv_text({event.id: event})
    event = decision("s/1", "accept", reviewer="C:\\Users\\ann")
    with pytest.raises(StageError, match="reviewer"):
        decisions_csv_text({event.id: event})


# ----------------------------------------------------------------- params


@pytest.mark.parametrize("key", ["journal", "decisions"])
@pytest.mark.parametrize("value", ["/tmp/pc-elsewhere/x", "../../x", "reviews/../../x"])
def test_review_output_paths_stay_in_the_project(tmp_path, key, value):
    params = write_params(tmp_path / "params.yaml", {"paths": {key: value}})
    with pytest.raises(ParamsError, match=f"paths.{key}: .*outside the project"):
        load_section(ProjectPaths, "paths", params)


def test_export_with_an_outside_decisions_csv_exits_2_and_writes_nothing_there(project, tmp_path, capsys):
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("mine")
    write_params(project / "params.yaml", {"paths": {**REVIEW_PATHS, "decisions": f"{sentinel}/d.csv"}})
    assert export_main(["--params", "params.yaml"]) == 2
    assert "paths.decisions" in capsys.readouterr().err
    assert sorted(p.name for p in sentinel.iterdir()) == ["keep.txt"]


def test_review_input_and_other_params_are_validated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "params.yaml")
    assert load_section(ReviewParams, "review", params) == ReviewParams(**quick_params()["review"])
    for bad, key in (("", "port"), ("localhost:27017", "database_uri"), (-1, "database_wait_s"),
                     ("", "dataset_name"), (6000, "min_seen_ms")):
        write_params(params, {"review": {key: bad}})
        with pytest.raises(ParamsError, match=f"review.{key}"):
            load_section(ReviewParams, "review", params)
    write_params(params, {"paths": {"pseudo": ""}})
    with pytest.raises(ParamsError, match="paths.pseudo"):
        load_section(ProjectPaths, "paths", params)
    for key in ReviewParams.model_fields:  # every key must be given: params.yaml is the one source
        section = {k: v for k, v in quick_params()["review"].items() if k != key}
        params.write_text(yaml.safe_dump({"review": section}))
        with pytest.raises(ParamsError, match=f"review.{key}: Field required"):
            load_section(ReviewParams, "review", params)


# ----------------------------------------------------------------- the database


def test_redact_uri_hides_passwords():
    assert rdb.redact_uri("mongodb://ann:s3cret@db.example:27017/fo?authSource=admin") == \
        "mongodb://ann:***@db.example:27017/fo?authSource=admin"
    assert rdb.redact_uri("mongodb+srv://u:p%40ss@h/x?tlsCertificateKeyFilePassword=k") == \
        "mongodb+srv://u:***@h/x?tlsCertificateKeyFilePassword=***"
    assert rdb.redact_uri("mongodb://h1:1,h2:2/") == "mongodb://h1:1,h2:2/"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_wait_retries_with_a_message_then_connects():
    clock, messages, calls = FakeClock(), [], []

    def attempt(timeout):
        calls.append(timeout)
        clock.now += timeout
        if len(calls) < 3:
            raise ConnectionError("Could not connect to `mongod`")

    tries = rdb.wait_until_connected(attempt, lambda: None, 60, "the db", "do x", log=messages.append,
                                     sleep=clock.sleep, clock=clock)
    assert tries == 3 and len(messages) == 1 and messages[0].startswith("waiting for the db to answer (up to 60 s")


def test_wait_is_bounded_and_ends_in_one_line():
    clock, messages = FakeClock(), []

    def attempt(timeout):
        clock.now += timeout
        raise ConnectionError("Could not connect to `mongod`")

    with pytest.raises(rdb.DatabaseUnavailable) as info:
        rdb.wait_until_connected(attempt, lambda: None, 5, "the db", "do x", log=messages.append,
                                 sleep=clock.sleep, clock=clock)
    assert clock.now <= 5 + rdb.ATTEMPT_TIMEOUT_S[1]
    assert str(info.value).startswith("the db did not answer within 5 s") and str(info.value).endswith("do x")


def test_a_refusal_that_waiting_cannot_fix_does_not_wait():
    import pymongo.errors as pme

    clock = FakeClock()

    def attempt(timeout):  # what connect_fiftyone's attempt does with FiftyOne's wrapped error
        try:
            raise RuntimeError("Failed to validate `mongod` version") from pme.OperationFailure("Authentication failed.")
        except RuntimeError as exc:
            raise rdb.classify(exc) from exc

    with pytest.raises(rdb.DatabaseUnavailable, match="refused the connection: .*Authentication failed"):
        rdb.wait_until_connected(attempt, lambda: None, 60, "the db", "do x", sleep=clock.sleep, clock=clock)
    assert clock.now == 0.0
    try:
        raise ConnectionError("Could not connect to `mongod`") from pme.ServerSelectionTimeoutError("refused")
    except ConnectionError as exc:
        assert rdb.classify(exc) is exc


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_review_load_only_with_an_unreachable_database_is_one_line_after_a_bounded_wait(tmp_path):
    pytest.importorskip("fiftyone")
    write_pool(tmp_path / "pseudo", ((f"{i:03d}", *synthetic_sample(i, size=24)) for i in range(2)), seed=4)
    write_params(tmp_path / "params.yaml", {"paths": {"pseudo": "pseudo", "journal": "journal"},
                                            "review": {"database_wait_s": 1, "dataset_name": "pc-test-unreachable"}})
    port = _closed_port()
    env = {**os.environ, "FIFTYONE_DATABASE_URI": f"mongodb://ann:s3cret@127.0.0.1:{port}/?authSource=admin",
           "PYTHONPATH": str(REPO), "FIFTYONE_DO_NOT_TRACK": "true"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "review", "--params", "params.yaml", "--load-only",
                           "--reviewer", "tester"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    elapsed = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output and "s3cret" not in output
    assert f"waiting for the MongoDB at mongodb://ann:***@127.0.0.1:{port}/" in done.stdout
    errors = [text for text in done.stderr.splitlines() if "error:" in text]
    assert len(errors) == 1 and errors[0].startswith("portrait-curation review: error: the MongoDB at "
                                                     f"mongodb://ann:***@127.0.0.1:{port}/")
    assert "did not answer within 1 s" in errors[0] and "check that it is running" in errors[0]
    assert elapsed < 120  # the wait is bounded by review.database_wait_s, not pymongo's 30 s per try
