"""End to end: the review App in headless Chromium, real key presses and clicks, exported CSV.

Needs Debian's chromium (`apt-get install -y chromium`) and the `playwright` package (used
with that browser; `playwright install` is never run). Takes about a minute on 2 cores,
most of it the App starting.
"""

from __future__ import annotations

import csv
import json
import uuid

import pytest

import review_browser as rb
from params_helpers import write_params
from pipeline.review import journal as jr
from pipeline.stages.export_reviews import main as export_main
from review_standin import synthetic_sample, write_pool

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MIN_SEEN_MS = 150


@pytest.fixture(scope="module")
def review_app(tmp_path_factory):
    if rb.chromium_path() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    fo = pytest.importorskip("fiftyone")
    root = tmp_path_factory.mktemp("review-browser")
    write_pool(root / "pseudo", ((f"{i:03d}", *synthetic_sample(i, size=120)) for i in range(10)), seed=5)
    name = f"pc-test-review-browser-{uuid.uuid4().hex[:8]}"
    port = rb.free_port()
    params = write_params(root / "params.yaml", {
        "paths": {"pseudo": "pseudo", "journal": "journal", "decisions": "reviews/decisions.csv"},
        "review": {"dataset_name": name, "port": port, "min_seen_ms": MIN_SEEN_MS}})
    process = rb.start_review_app(params, port, "tester", root / "app.log", cwd=root)  # root is the project
    try:
        rb.wait_for_http(f"http://127.0.0.1:{port}/", process, timeout=240)
        yield {"root": root, "params": params, "url": f"http://127.0.0.1:{port}/", "process": process}
    except Exception:
        print((root / "app.log").read_text()[-3000:])
        raise
    finally:
        rb.stop_process_group(process)
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def _saved(page, sample_id: str) -> dict:
    page.wait_for_function(
        "(id) => window.__portraitReview.log.some(e => e.sampleId === id && e.ok === true)", arg=sample_id,
        timeout=30_000)
    return page.evaluate("(id) => window.__portraitReview.log.find(e => e.sampleId === id && e.ok === true)",
                         sample_id)


def test_keys_and_clicks_decide_undo_and_export(review_app, monkeypatch):
    from playwright.sync_api import sync_playwright

    root = review_app["root"]
    shot = rb.repo_root() / "tmp" / "review" / "browser_test.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    decided: list[tuple[str, str]] = []  # (manifest id, decision) in order
    with sync_playwright() as playwright:
        context, _ = rb.open_browser(playwright)
        try:
            page = context.new_page()
            rb.open_first_sample(page, review_app["url"])
            for action, decision in (("a", "accept"), ("d", "reject"), ("a", "accept"), ("click", "reject")):
                sample = rb.current_sample_id(page)
                rb.wait_until_shown_for(page, 300)
                if action == "click":
                    page.click("#portrait-review-bar button[data-review=reject]")
                else:
                    page.keyboard.press(action)
                rb.wait_for_next_sample(page, sample)
                entry = _saved(page, sample)
                assert entry["decision"] == decision and entry["seconds"] >= 0.3
                decided.append((entry["pcId"], decision))
            rb.wait_until_shown_for(page, 1500)  # let the next image paint before the screenshot
            page.screenshot(path=str(shot))

            # A double press (two keydowns in one task, faster than any App update) judges
            # one image once, never the next one unseen.
            sample = rb.current_sample_id(page)
            rb.wait_until_shown_for(page, 300)
            page.evaluate("""() => { for (let i = 0; i < 2; i++) window.dispatchEvent(
                new KeyboardEvent('keydown', {key: 'd', bubbles: true, cancelable: true})); }""")
            next_sample = rb.wait_for_next_sample(page, sample)
            entry = _saved(page, sample)
            decided.append((entry["pcId"], "reject"))
            page.wait_for_timeout(500)
            log = page.evaluate("() => window.__portraitReview.log")
            assert [e.get("sampleId") for e in log if not e.get("undo")].count(sample) == 1
            assert next_sample not in [e.get("sampleId") for e in log]

            # Undo takes back the last decision and returns to its image.
            page.keyboard.press("u")
            page.wait_for_function("(id) => window.__portraitReview.currentId === id", arg=sample, timeout=30_000)
            page.wait_for_function("() => window.__portraitReview.log.some(e => e.undo && e.ok === true)",
                                   timeout=30_000)
            assert "reviewed 4/10" in page.inner_text("#portrait-review-progress")

            # A reload restores the open sample from the App's session, a modal that ignores
            # the App's keys: the key script closes it, and a click opens a live one again.
            page.reload(wait_until="domcontentloaded")
            page.wait_for_function("() => (window.__portraitReview || {}).restoredClosed >= 1", timeout=60_000)
            rb.open_first_sample(page, None)
            first = rb.current_sample_id(page)
            page.keyboard.press("ArrowRight")
            rb.wait_for_next_sample(page, first)
        finally:
            context.close()

    events, torn = jr.read_journals(root / "journal")
    assert torn == 0
    assert [e.event for e in events] == ["decision"] * 5 + ["undo"]
    assert [e.via for e in events[:5]] == ["key", "key", "key", "click", "key"]
    assert assert_all_reviewed_by(events, "tester")

    rb.stop_process_group(review_app["process"])  # export needs no App
    monkeypatch.chdir(root)
    assert export_main(["--params", str(review_app["params"])]) == 0
    with open(root / "reviews" / "decisions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["id"], r["decision"]) for r in rows) == sorted(decided[:4])
    assert all(float(r["seconds_on_screen"]) >= 0.3 and r["reviewer"] == "tester" for r in rows)
    print(json.dumps({"screenshot": str(shot), "decisions": decided[:4]}))


def assert_all_reviewed_by(events, reviewer: str) -> bool:
    return all(e.reviewer == reviewer for e in events)
