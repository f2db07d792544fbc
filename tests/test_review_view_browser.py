"""End to end: the prefetching review view and triage pages in headless Chromium, real keys and
clicks, the journal checked after each decision; then the App, its database and the browser are
killed and no acknowledged decision is lost.

The App runs on a mongod the test starts for it (FIFTYONE_DATABASE_URI), so the test can kill
that database without touching FiftyOne's shared one. About a minute or two on 2 cores, most of it the
App starting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import review_browser as rb
from params_helpers import write_params
from review_standin import synthetic_sample, write_pool, write_quality

from pipeline.hashing import sha256_file
from pipeline.images import mask_to_png_bytes
from pipeline.review import journal as jr
from pipeline.review.pool import read_pool

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MIN_SEEN_MS = 120
TRIAGE_MIN_SCORE = 0.7
TILE_PX = 360
COUNT = 14
SHOTS = Path(os.environ.get("REVIEW_SHOTS_DIR", "/tmp/review_shots"))


def _write_disagreement(pool: Path, samples) -> None:
    """Teacher-disagreement maps as pseudo_label would write them: a band beside the edge."""
    for key, _, mask in samples:
        band = mask ^ np.roll(mask, 6, axis=1)
        path = pool / "disagreement" / "pseudo" / f"{key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mask_to_png_bytes(band))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if rb.chromium_path() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    pytest.importorskip("fiftyone")
    root = tmp_path_factory.mktemp("review-view")
    samples = [(f"{i:03d}", *synthetic_sample(i, size=120)) for i in range(COUNT)]
    write_pool(root / "pseudo", samples, failure_fraction=0.0, seed=7)
    _write_disagreement(root / "pseudo", samples)
    items, _ = read_pool(root / "pseudo")
    # calibrated scores 0.30 .. 0.95; the two highest auto-accepted (they leave the queue)
    p_good = {item.id: round(0.30 + 0.05 * n, 2) for n, item in enumerate(items)}
    routes = {items[-1].id: "auto", items[-2].id: "auto"}
    write_quality(root / "quality", items, routes, p_good)
    port = rb.free_port()
    params = write_params(root / "params.yaml", {
        "paths": {"pseudo": "pseudo", "journal": "journal", "decisions": "reviews/decisions.csv",
                  "quality": "quality"},
        "review": {"dataset_name": f"pc-test-review-view-{uuid.uuid4().hex[:8]}", "port": port,
                   "min_seen_ms": MIN_SEEN_MS, "triage_min_score": TRIAGE_MIN_SCORE, "triage_tile_px": TILE_PX}})
    mongod, uri = rb.start_own_mongod(root / "db")
    process = rb.start_review_app(params, port, "viewer", root / "app.log", cwd=root,
                                  env={"FIFTYONE_DATABASE_URI": uri, "FIFTYONE_PRIVATE_DATABASE_PORT": None})
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        rb.wait_for_http(f"http://127.0.0.1:{port}/", process, timeout=240)
        yield {"root": root, "url": f"http://127.0.0.1:{port}/", "process": process, "mongod": mongod,
               "p_good": p_good, "auto": set(routes)}
    except Exception:
        print((root / "app.log").read_text()[-3000:])
        raise
    finally:
        rb.stop_process_group(process)
        rb.stop_process_group(mongod)


def _events(root: Path) -> list[jr.ReviewEvent]:
    events, torn = jr.read_journals(root / "journal")
    assert torn == 0
    return events


def _browser(playwright):
    return rb.open_browser(playwright, width=1280, height=800)


def test_review_view_keys_swap_at_once_and_journal_each_decision(app):
    from playwright.sync_api import sync_playwright

    root = app["root"]
    with sync_playwright() as playwright:
        context, _ = _browser(playwright)
        try:
            page = context.new_page()
            rb.open_review_view(page, app["url"], "r")
            page.wait_for_function("() => window.__portraitReviewView.queue.filter(i => i.layers).length >= 3",
                                   timeout=30_000)
            first = rb.view_state(page, "S.current")
            assert first["score"] == min(v for k, v in app["p_good"].items() if k not in app["auto"])  # failures first
            assert "teacher_agreement" in page.inner_text("#prv-low")  # which part is low
            assert "teachers disagree on" in page.inner_text("#prv-disagree")

            decided = []
            for key, decision in (("a", "accept"), ("d", "reject"), ("a", "accept")):
                shown = rb.view_state(page, "S.current")
                upcoming = rb.view_state(page, "S.queue[0].sample_id")
                rb.wait_view_shown_for(page, MIN_SEEN_MS + 80)
                before = len(_events(root))
                page.keyboard.press(key)
                # the next mask is on screen before the server has answered: from the prefetch
                assert rb.view_state(page, "S.current.sample_id") == upcoming
                rb.wait_view_saved(page)
                entry = rb.view_state(page, "S.log[S.log.length - 1]")
                assert entry["ok"] is True and entry["sampleId"] == shown["sample_id"]
                assert entry["path"] == "route"  # the review process's own route, not the App's operators
                events = _events(root)
                assert len(events) == before + 1
                last = events[-1]
                assert (last.id, last.decision, last.via, last.reviewer) == (shown["pc_id"], decision, "view", "viewer")
                assert last.mask_sha256 == shown["mask_sha256"] == sha256_file(shown["mask_path"])
                assert last.seconds_on_screen >= MIN_SEEN_MS / 1000
                decided.append(shown["pc_id"])
            header = page.inner_text("#prv-progress")
            assert "reviewed 3/12" in header and "images/min" in header and "time left" in header
            assert "all decisions saved" in page.inner_text("#prv-unsaved")
            assert "via direct route" in page.inner_text("#prv-unsaved")

            # A double press judges the mask on screen once, never the next one unseen.
            shown = rb.view_state(page, "S.current.sample_id")
            rb.wait_view_shown_for(page, MIN_SEEN_MS + 80)
            page.evaluate("""() => { for (let i = 0; i < 2; i++) window.dispatchEvent(
                new KeyboardEvent('keydown', {key: 'd', bubbles: true, cancelable: true})); }""")
            rb.wait_view_saved(page)
            log = rb.view_state(page, "S.log.filter(e => !e.undo).map(e => e.sampleId)")
            assert log.count(shown) == 1 and len(log) == 4
            decided.append(_events(root)[-1].id)

            # f toggles the fill: the picture changes, the mask stays
            signature = page.evaluate(rb.CANVAS_SIGNATURE_JS.replace("[data-cy=modal] canvas", "#prv-canvas"))
            page.keyboard.press("f")
            assert page.evaluate(rb.CANVAS_SIGNATURE_JS.replace("[data-cy=modal] canvas", "#prv-canvas")) != signature
            rb.wait_view_shown_for(page, 300)
            page.screenshot(path=str(SHOTS / "review_view.png"))
            page.keyboard.press("f")

            # u takes back the last decision and shows its mask again
            page.keyboard.press("u")
            assert rb.view_state(page, "S.current.pc_id") == decided[-1]
            rb.wait_view_saved(page)
            events = _events(root)
            assert events[-1].event == "undo" and events[-1].id == decided[-1]
            decided.pop()

            # The route is unreachable (nothing listens there): the App's operators decide instead.
            page.evaluate("(port) => { window.__portraitReviewView.settings.route_url = "
                          "'http://127.0.0.1:' + port; }", rb.free_port())
            shown = rb.view_state(page, "S.current")
            rb.wait_view_shown_for(page, MIN_SEEN_MS + 80)
            page.keyboard.press("a")
            rb.wait_view_saved(page)
            entry = rb.view_state(page, "S.log[S.log.length - 1]")
            assert entry["ok"] is True and entry["path"] == "operators"
            assert (_events(root)[-1].id, _events(root)[-1].decision) == (shown["pc_id"], "accept")
            assert "via operators (route unreachable)" in page.inner_text("#prv-unsaved")
            decided.append(shown["pc_id"])

            # The mask of the next one changes on disk (pseudo_label re-ran): refused, not saved.
            upcoming = rb.view_state(page, "S.queue[0]")
            original = Path(upcoming["mask_path"]).read_bytes()
            Path(upcoming["mask_path"]).write_bytes(mask_to_png_bytes(np.ones((160, 120), bool)))
            try:
                rb.wait_view_shown_for(page, MIN_SEEN_MS + 80)
                page.keyboard.press("a")
                decided.append(rb.view_state(page, "S.log.filter(e => !e.undo).slice(-1)[0].pcId"))
                rb.wait_view_shown_for(page, MIN_SEEN_MS + 80)
                assert rb.view_state(page, "S.current.sample_id") == upcoming["sample_id"]
                page.keyboard.press("a")
                rb.wait_view_saved(page)
                entry = rb.view_state(page, "S.log[S.log.length - 1]")
                assert entry["ok"] is False and "changed on disk" in entry["message"]
                assert "NOT SAVED" in page.inner_text("#prv-status")
                assert upcoming["pc_id"] not in [e.id for e in _events(root)]
                assert rb.view_state(page, "S.queue[0].sample_id") == upcoming["sample_id"]  # back, next in line
            finally:
                Path(upcoming["mask_path"]).write_bytes(original)
            page.keyboard.press("Escape")
            assert page.locator("#portrait-review-view").count() == 0
        finally:
            context.close()
    live = jr.live_decisions(_events(root))
    assert [e.id for e in live] == decided


def test_triage_page_one_key_and_clicks_journal_every_mask(app):
    from playwright.sync_api import sync_playwright

    root = app["root"]
    with sync_playwright() as playwright:
        context, _ = _browser(playwright)
        try:
            page = context.new_page()
            rb.open_review_view(page, app["url"], "t")
            tiles = page.locator("#prv-grid .prv-tile")
            count = tiles.count()
            decided_before = {e.id for e in jr.live_decisions(_events(root))}
            confident = sorted((k for k, v in app["p_good"].items()
                                if v >= TRIAGE_MIN_SCORE and k not in app["auto"] and k not in decided_before),
                               key=lambda k: -app["p_good"][k])
            assert count == min(len(confident), 4)  # 4 tiles of 360 px fit a 1280x800 screen
            assert all(tiles.nth(i).bounding_box()["height"] >= TILE_PX for i in range(count))
            page_ids = rb.view_state(page, "S.page.items.map(i => i.pc_id)")
            assert page_ids == confident[:count]  # highest score first

            tiles.nth(1).click()  # marks it bad
            tiles.nth(2).click()
            tiles.nth(2).click()  # and good again
            assert page.locator("#prv-grid .prv-bad").count() == 1
            rb.wait_view_shown_for(page, 300)
            page.screenshot(path=str(SHOTS / "triage.png"))
            before = len(_events(root))
            page.keyboard.press("a")
            rb.wait_view_saved(page)
            events = _events(root)[before:]
            assert [(e.id, e.decision) for e in events] == [
                (pc_id, "reject" if n == 1 else "accept") for n, pc_id in enumerate(page_ids)]
            assert all(e.via == "triage" and e.extra.get("page_size") == count for e in events)
            entry = rb.view_state(page, "S.log[S.log.length - 1]")
            assert entry["ok"] is True and entry["clicks"] == 3

            # u reopens the page as it was (one tile marked) and undoes all of it
            page.keyboard.press("u")
            rb.wait_view_saved(page)
            events = _events(root)
            assert [e.event for e in events[-count:]] == ["undo"] * count
            assert sorted(e.id for e in events[-count:]) == sorted(page_ids)
            page.wait_for_function("() => document.querySelectorAll('#prv-grid .prv-tile').length > 0")
            assert page.locator("#prv-grid .prv-bad").count() == 1
            rb.wait_view_shown_for(page, MIN_SEEN_MS + 80)
            page.keyboard.press("Enter")  # Enter accepts the page too
            rb.wait_view_saved(page)
            live = {e.id: e.decision for e in jr.live_decisions(_events(root))}
            assert [live[p] for p in page_ids] == ["reject" if n == 1 else "accept" for n in range(count)]
            page.keyboard.press("Escape")
        finally:
            context.close()


def test_old_modal_keys_still_work(app):
    from playwright.sync_api import sync_playwright

    root = app["root"]
    with sync_playwright() as playwright:
        context, _ = _browser(playwright)
        try:
            page = context.new_page()
            rb.open_first_sample(page, app["url"])
            sample = rb.current_sample_id(page)
            rb.wait_until_shown_for(page, 300)
            before = len(_events(root))
            page.keyboard.press("d")
            rb.wait_for_next_sample(page, sample)
            page.wait_for_function("(id) => window.__portraitReview.log.some(e => e.sampleId === id && e.ok === true)",
                                   arg=sample, timeout=30_000)
            events = _events(root)
            assert len(events) == before + 1 and events[-1].decision == "reject" and events[-1].via == "key"
            assert rb.view_state(page, "S.open") is False
            # the view registered its panel with the App, and its launcher hides while the modal is open
            assert rb.view_state(page, "S.panelRegistered") is True, rb.view_state(page, "S.panelError")
            page.wait_for_function("() => document.getElementById('portrait-review-launcher').style.display === 'none'")
            page.screenshot(path=str(SHOTS / "modal.png"))
        finally:
            context.close()


def test_killed_database_app_and_browser_lose_no_acknowledged_decision(app):
    from playwright.sync_api import sync_playwright

    from pipeline.tools.review import status_text

    root = app["root"]
    with sync_playwright() as playwright:
        context, _ = _browser(playwright)
        page = context.new_page()
        rb.open_review_view(page, app["url"], "r")
        for key in ("a", "d"):
            rb.wait_view_shown_for(page, MIN_SEEN_MS + 80)
            page.keyboard.press(key)
        rb.wait_view_saved(page)
        acknowledged = rb.view_state(page, "S.log.filter(e => e.ok === true && !e.undo).map(e => e.pcId)")
        assert len(acknowledged) == 2

        # the database dies: the next decision is shown as not yet saved, never as saved
        app["mongod"].kill()  # SIGKILL: the test's own mongod, nobody else's
        app["mongod"].wait(timeout=30)
        rb.wait_view_shown_for(page, MIN_SEEN_MS + 80)
        pending = rb.view_state(page, "S.current.pc_id")
        page.keyboard.press("a")
        assert pending in page.inner_text("#prv-unsaved")
        time.sleep(0.5)
        acknowledged = rb.view_state(page, "S.log.filter(e => e.ok === true && !e.undo).map(e => e.pcId)")
        # then the App and the browser are killed (SIGKILL, no clean-up)
        os.killpg(app["process"].pid, signal.SIGKILL)
        assert rb.kill_browser_processes() > 0
        with contextlib.suppress(Exception):  # the browser is gone
            context.close()

    live = {e.id for e in jr.live_decisions(_events(root))}
    assert set(acknowledged) <= live
    # a fresh start reads the same decisions back (the queue is rebuilt from the journal alone)
    reviewed_line = status_text(root / "pseudo", root / "journal", root / "quality").splitlines()[0]
    assert reviewed_line.startswith(f"reviewed {len(live)}/12")
