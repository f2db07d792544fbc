"""The review view's direct decision route (review/route.py): only the session's token and the
App's origin get in, the sha256 rule and the journal order are the operators', and the answer
comes only after the journal line is fsync'd."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
from review_standin import synthetic_sample, write_pool

from pipeline.review import journal as jr
from pipeline.review import route as rr
from pipeline.review import view as rv
from pipeline.review.pool import read_pool

TOKEN = "t" * 43
APP = "http://127.0.0.1:5151"


def _fake_route(calls):
    def decide(requests, via, extra):
        calls.append(("decide", requests, via, extra))
        if requests[0][0] == "boom":
            raise RuntimeError("database gone")
        return {"ok": True, "message": "decided"}

    def undo(count):
        calls.append(("undo", count))
        return {"ok": True, "message": "undone"}

    return rr.DecisionRoute(token=TOKEN, origins=rr.app_origins("localhost", 5151), decide=decide, undo=undo)


def _body(**params) -> bytes:
    return json.dumps({"token": TOKEN, **params}).encode()


def test_route_lets_in_only_the_token_and_the_app_origin():
    calls = []
    route = _fake_route(calls)
    sha = "ab" * 32
    decision = {"sample_id": "s1", "decision": "accept", "mask_sha256": sha, "seconds_on_screen": 0.4}
    assert route.handle("/decide", APP, _body(**decision)) == (200, {"ok": True, "message": "decided"})
    assert calls == [("decide", [("s1", "accept", sha, 0.4)], "key", None)]
    calls.clear()
    refused = [
        ("/decide", APP, json.dumps({**decision, "token": "x" * 43}).encode(), 403, "token"),
        ("/decide", APP, json.dumps(decision).encode(), 403, "token"),
        ("/decide", "http://evil.example", _body(**decision), 403, "origin"),
        ("/decide", "http://127.0.0.1:9999", _body(**decision), 403, "origin"),
        ("/decide", APP, b"not json", 400, "JSON"),
        ("/decide", APP, b"[1, 2]", 400, "JSON object"),
        ("/delete_everything", APP, _body(**decision), 404, "no route"),
        ("/decide", APP, _body(**{**decision, "mask_sha256": ""}), 409, "mask_sha256"),
        ("/decide", APP, _body(**{**decision, "decision": "maybe"}), 409, "bad request"),
        ("/undo", APP, _body(count=0), 409, "count"),
        ("/decide_page", APP, _body(decisions=[decision, decision]), 409, "twice"),
    ]
    for path, origin, body, status, reason in refused:
        got_status, answer = route.handle(path, origin, body)
        assert (got_status, answer["ok"]) == (status, False) and reason in answer["message"], (path, body)
    assert calls == []  # nothing refused reached the journal
    assert route.handle("/decide", APP, _body(**{**decision, "sample_id": "boom"}))[0] == 500
    assert route.handle("/undo", None, _body(count=2)) == (200, {"ok": True, "message": "undone"})
    assert route.handle("/decide_page", APP, _body(decisions=[decision], via="triage"))[0] == 200
    assert calls[-1] == ("decide", [("s1", "accept", sha, 0.4)], "triage", {"page_size": 1})
    assert route.cors_origin("http://localhost:5151") == "http://localhost:5151"
    assert route.cors_origin("http://evil.example") is None
    assert rr.app_origins("0.0.0.0", 80) == {"http://localhost:80", "http://127.0.0.1:80"}


# ------------------------------------------------------------------ served, on a real queue


@pytest.fixture()
def served(tmp_path):
    fo = pytest.importorskip("fiftyone")
    from pipeline.review import dataset as rd

    pool = tmp_path / "pseudo"
    write_pool(pool, ((f"{i:03d}", *synthetic_sample(i, size=24)) for i in range(6)), seed=5)
    name = f"pc-test-review-route-{uuid.uuid4().hex[:8]}"
    items, _ = read_pool(pool)
    dataset, view, _ = rd.sync_dataset(name, items, [])
    journal_dir = tmp_path / "journal"
    server = rr.start_route(rr.dataset_route(dataset, "ann", journal_dir, rr.app_origins("localhost", 5151), TOKEN))
    yield rr.route_url(server), dataset, view, journal_dir
    server.shutdown()
    server.server_close()
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def _post(url: str, path: str, params: dict, origin: str | None = APP) -> tuple[int, dict, dict]:
    headers = {"Content-Type": "text/plain"}
    if origin:
        headers["Origin"] = origin
    request = urllib.request.Request(url + path, data=json.dumps(params).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _journal(journal_dir) -> list[jr.ReviewEvent]:
    return jr.read_journal(jr.journal_path(journal_dir, "ann"))[0]


def test_served_route_journals_with_the_sha_rule_and_undo(served):
    url, dataset, view, journal_dir = served
    first, second = list(view.limit(2))
    decide = {"token": TOKEN, "sample_id": first.id, "decision": "reject", "mask_sha256": first["mask_sha256"],
              "seconds_on_screen": 0.7}
    status, answer, headers = _post(url, "/decide", {**decide, "token": "wrong"})
    assert status == 403 and not answer["ok"] and _journal(journal_dir) == []
    status, answer, _ = _post(url, "/decide", {**decide, "mask_sha256": "ef" * 32})  # not the mask shown
    assert status == 409 and "not the queue's" in answer["message"] and _journal(journal_dir) == []
    assert dataset[first.id]["review_decision"] is None

    status, answer, headers = _post(url, "/decide", decide)
    assert status == 200 and answer["ok"] and answer["path"] == "route" and answer["id"] == first["pc_id"]
    assert headers["Access-Control-Allow-Origin"] == APP and answer["timings"]["journal_ms"] >= 0
    events = _journal(journal_dir)
    assert [(e.id, e.decision, e.mask_sha256, e.seconds_on_screen, e.via) for e in events] == \
        [(first["pc_id"], "reject", first["mask_sha256"], 0.7, "key")]
    assert dataset[first.id]["review_decision"] == "reject"  # mirrored before the answer

    page = [{"sample_id": second.id, "decision": "accept", "mask_sha256": second["mask_sha256"]}]
    status, answer, _ = _post(url, "/decide_page", {"token": TOKEN, "decisions": page}, origin=None)
    assert status == 200 and answer["ids"] == [second["pc_id"]]
    status, answer, _ = _post(url, "/undo", {"token": TOKEN, "count": 1})
    assert status == 200 and answer["ids"] == [second["pc_id"]] and answer["progress"]["reviewed"] == 1
    events = _journal(journal_dir)
    assert [e.event for e in events] == ["decision", "decision", "undo"]
    assert events[2].undoes == events[1].event_id and events[1].extra == {"page_size": 1}
    assert dataset[second.id]["review_decision"] is None

    status, _, headers = _post(url, "/decide", decide, origin="http://evil.example")
    assert status == 403 and "Access-Control-Allow-Origin" not in headers and len(_journal(journal_dir)) == 3


def test_served_route_answers_only_after_the_fsync(served, monkeypatch):
    url, _, view, _ = served
    first, second = list(view.limit(2))
    synced = []
    real_fsync = jr.os.fsync

    def slow_fsync(fd):
        time.sleep(0.2)  # a slow disk: the answer must wait for it
        real_fsync(fd)
        synced.append(time.monotonic())

    monkeypatch.setattr(jr.os, "fsync", slow_fsync)
    decide = {"token": TOKEN, "sample_id": first.id, "decision": "accept", "mask_sha256": first["mask_sha256"]}
    status, answer, _ = _post(url, "/decide", decide)
    answered = time.monotonic()
    assert status == 200 and len(synced) == 1 and synced[0] < answered

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jr.os, "fsync", failing_fsync)
    status, answer, _ = _post(url, "/decide", {**decide, "sample_id": second.id,
                                              "mask_sha256": second["mask_sha256"]})
    assert status == 409 and not answer["ok"] and "not saved" in answer["message"]


def test_view_settings_hand_the_route_to_the_view(served, monkeypatch):
    import fiftyone as fo
    import fiftyone.operators as foo

    from pipeline.review.config import (
        ENV_JOURNAL_DIR,
        ENV_ROUTE_TOKEN,
        ENV_ROUTE_URL,
        PLUGIN_NAME,
        PLUGINS_DIR,
    )

    url, dataset, _, journal_dir = served
    monkeypatch.setattr(fo.config, "plugins_dir", str(PLUGINS_DIR))
    monkeypatch.setenv(ENV_JOURNAL_DIR, str(journal_dir))

    def settings():
        return foo.execute_operator(f"{PLUGIN_NAME}/view_batch",
                                    ctx={"dataset": dataset, "params": {"count": 1}}).result["settings"]

    monkeypatch.delenv(ENV_ROUTE_URL, raising=False)
    assert "route_url" not in settings()  # no route: the view uses the operators
    monkeypatch.setenv(ENV_ROUTE_URL, url)
    monkeypatch.setenv(ENV_ROUTE_TOKEN, TOKEN)
    assert settings()["route_url"] == url and settings()["route_token"] == TOKEN
    assert rv.ViewSettings().as_dict().keys() <= settings().keys()


def test_mirror_is_right_after_another_process_changed_the_sample(served):
    """The route (review process) and the operators (App server) each hold their own copy of a
    sample: a decision after the other process undid one must still reach the database."""
    from bson import ObjectId

    url, dataset, view, _ = served
    first = view.first()
    decide = {"token": TOKEN, "sample_id": first.id, "decision": "accept", "mask_sha256": first["mask_sha256"]}
    assert _post(url, "/decide", decide)[0] == 200
    held = dataset[first.id]  # while anything holds it, FiftyOne hands this very copy back
    assert held["review_decision"] == "accept"
    # the App server's process undoes it: the database changes behind this process's copy
    dataset._sample_collection.update_one({"_id": ObjectId(first.id)}, {"$set": {"review_decision": None}})
    assert _post(url, "/decide", decide)[0] == 200
    stored = dataset._sample_collection.find_one({"_id": ObjectId(first.id)})
    assert stored["review_decision"] == "accept" and held["review_decision"] == "accept"
