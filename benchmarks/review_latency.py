"""The review App's own latency per decision, against a person's roughly 1 s per image.

Builds a queue of a few hundred images (resized EG1800 photos with their masks, some
damaged, from ../shared/datasets; synthetic pictures if that is absent), starts
`portrait-curation review` on a throw-away FiftyOne database, opens it in headless
Chromium and presses a / d like a fast reviewer. For each decision it prints the time from
the key press to:

- url:     the App names the next sample in its URL,
- painted: the modal's canvas shows a different picture (checked every animation frame),
- seen:    the same moment as the key script detects it (where seconds_on_screen starts),
- saved:   the server answered, i.e. the journal line is fsync'd and the sample updated.

Then a few plain ArrowRight presses (no decision) give the App's own floor.

The same App then opens the prefetching review view (key r, ``review_view.js``) and times, per
decision, key press (the browser's event time) to the next mask painted (first animation frame
whose canvas differs), the view's own swap (JS work in the key handler) and saved (the server's
answer: journal fsync'd, database updated); every other decision there goes through the App's
operators instead of the direct decision route (interleaved A/B on the same load; ``--no-ab``
sends all the usual way, and PORTRAIT_REVIEW_ROUTE_OFF=1 starts the App without the route). Last, triage pages (key t) of confident masks: one
key per page plus a click per damaged mask, so it prints key presses per accepted label, and the
same counting the masks the score auto-accepted (``--auto-above``; they need no press at all).

    .venv/bin/python benchmarks/review_latency.py --count 300 --decisions 60

Needs chromium + playwright (see tests/test_review_browser.py). Figures are wall-clock on
whatever else the machine is doing: say so when quoting them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the stand-in pool and the browser driver are test helpers

WATCH_JS = """(sig) => {
  const st = window.__portraitReview;
  const signature = %s;
  const start = { id: st.currentId, sig: signature() };
  window.__bench = { pressedAt: null, paintedAt: null };
  const onKey = (e) => { if (window.__bench.pressedAt === null) window.__bench.pressedAt = performance.now(); };
  window.addEventListener('keydown', onKey, true);
  const frame = () => {
    if (window.__bench.pressedAt !== null && st.currentId && st.currentId !== start.id) {
      const s = signature();
      if (s !== null && s !== start.sig) { window.__bench.paintedAt = performance.now();
        window.removeEventListener('keydown', onKey, true); return; }
    }
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}"""


def summarize(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:>8}: no data"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return (f"{name:>8}: median {statistics.median(values):6.0f} ms   p90 {p90:6.0f} ms   "
            f"worst {max(values):6.0f} ms   (n={len(values)})")


VIEW_WATCH_JS = """(sig) => {
  // The view stops the key event (capture phase, first listener), so the press time is the
  // event's own timeStamp the view logs; painted = first animation frame showing a new canvas.
  const S = window.__portraitReviewView;
  const signature = %s;
  const before = signature();
  const logged = S.log.length;
  window.__bench = { pressedAt: null, paintedAt: null };
  const frame = () => {
    if (S.log.length > logged) {
      const s = signature();
      if (s !== null && s !== before) { window.__bench.pressedAt = S.log[logged].pressedAt;
        window.__bench.paintedAt = performance.now(); return; }
    }
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}"""


def build_pool(out: Path, count: int, size: int) -> str:
    from review_standin import SHARED_EG1800, eg1800_samples, synthetic_sample, write_pool

    if SHARED_EG1800.is_dir():
        write_pool(out, eg1800_samples(count, size), failure_fraction=0.2, seed=0)
        what = f"{count} EG1800 photos resized to {size} px wide"
    else:
        write_pool(out, ((f"{i:05d}", *synthetic_sample(i, size)) for i in range(count)), seed=0)
        what = f"{count} synthetic pictures, {size} px wide"
    write_disagreement(out)
    return what


def write_disagreement(pool: Path) -> None:
    """Stand-in teacher-disagreement maps (a band beside each mask's edge), so the view draws
    the same layers it would for a real pool."""
    import numpy as np

    from pipeline.images import mask_to_png_bytes, read_mask_png

    for mask_path in sorted((pool / "masks").rglob("*.png")):
        mask = read_mask_png(mask_path)
        target = pool / "disagreement" / mask_path.relative_to(pool / "masks")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(mask_to_png_bytes(mask ^ np.roll(mask, 4, axis=1)))


def write_auto_accept(work: Path, auto_above: float) -> tuple[int, set]:
    """score_pool's outputs with P(good) = the stand-in score; masks scoring above ``auto_above``
    auto-accepted (they leave the queue). Returns (auto-accepted count, ids of damaged masks)."""
    from review_standin import write_quality

    from pipeline.review.pool import read_pool

    items, _ = read_pool(work / "pseudo")
    p_good = {i.id: min(max(i.score, 0.0), 1.0) for i in items}
    routes = {i.id: "auto" for i in items if p_good[i.id] > auto_above}
    write_quality(work / "quality", items, routes, p_good)
    return len(routes), {i.id for i in items if "damaged" in i.notes}


def screenshot(page, folder: str, name: str) -> None:
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name))


def bench_view(page, decisions: int, dwell: float, shots: str = "", ab: bool = True) -> dict:
    """``ab``: every other decision goes through the App's operators instead of the direct
    decision route (the view's fallback), so both are timed interleaved on the same load."""
    import review_browser as rb

    canvas_js = rb.CANVAS_SIGNATURE_JS.replace("[data-cy=modal] canvas", "#prv-canvas")
    rb.open_review_view(page, None, "r")
    page.wait_for_function("(n) => window.__portraitReviewView.queue.filter(i => i.layers).length >= n",
                           arg=3, timeout=60_000)
    painted, swap, saved = [], [], []
    watch = VIEW_WATCH_JS % canvas_js
    for index in range(decisions):
        if ab:  # the previous write answered first, so this one takes the path set here
            rb.wait_view_saved(page)
            page.evaluate("(off) => { window.__portraitReviewView.routeDown = off; }", index % 2 == 1)
        rb.wait_view_shown_for(page, dwell * 1000)
        page.evaluate(watch, None)
        page.keyboard.press("d" if index % 5 == 4 else "a")
        page.wait_for_function("() => window.__bench.paintedAt !== null", timeout=30_000)
        bench = page.evaluate("() => window.__bench")
        painted.append(bench["paintedAt"] - bench["pressedAt"])
        if index == 3:
            rb.wait_view_shown_for(page, 300)
            screenshot(page, shots, "bench_review_view.png")
    rb.wait_view_saved(page)
    if ab:
        page.evaluate("() => { window.__portraitReviewView.routeDown = false; }")
    log = page.evaluate("() => window.__portraitReviewView.log.filter(e => !e.undo && !e.page)")
    bad = [e for e in log if not e.get("ok")]
    if bad:
        raise RuntimeError(f"decision(s) not saved: {bad[:2]}")
    fsync, mirror, saved_by_path = [], [], {}
    for entry in log:
        swap.append(entry["nextDrawnAt"] - entry["handledAt"])
        saved.append(entry["savedAt"] - entry["pressedAt"])
        saved_by_path.setdefault(entry.get("path") or "?", []).append(entry["savedAt"] - entry["pressedAt"])
        fsync.append((entry.get("timings") or {}).get("journal_ms", float("nan")))
        mirror.append((entry.get("timings") or {}).get("mirrored_ms", float("nan")))
    header = page.inner_text("#prv-progress")
    page.keyboard.press("Escape")
    return {"painted": painted, "swap": swap, "saved": saved, "header": header, "fsync": fsync, "mirror": mirror,
            "saved_by_path": saved_by_path}


def bench_triage(page, pages: int, damaged: set, dwell: float, shots: str = "") -> dict:
    import review_browser as rb

    rb.open_review_view(page, None, "t")
    painted, saved, sizes, keys, clicks, accepted, tile = [], [], [], 0, 0, 0, None
    for _ in range(pages):
        if not page.evaluate("() => !!(window.__portraitReviewView.page && window.__portraitReviewView.page.items.length)"):
            break
        rb.wait_view_shown_for(page, dwell * 1000)
        ids = page.evaluate("() => window.__portraitReviewView.page.items.map(i => i.pc_id)")
        for n, pc_id in enumerate(ids):
            if pc_id in damaged:
                page.locator("#prv-grid .prv-tile").nth(n).click()
                clicks += 1
        if not sizes:
            screenshot(page, shots, "bench_triage.png")
            tile = page.evaluate("() => { const t = document.querySelector('#prv-grid .prv-tile canvas'); "
                                 "return t ? [t.width, t.height] : null; }")
        sizes.append(len(ids))
        accepted += sum(1 for pc_id in ids if pc_id not in damaged)
        page.keyboard.press("a")
        keys += 1
        page.wait_for_function("() => { const e = window.__portraitReviewView.log.slice(-1)[0]; "
                               "return e.nextShownAt !== undefined || (e.nextPage === null) || "
                               "window.__portraitReviewView.exhausted; }", timeout=30_000)
        rb.wait_view_saved(page)
        entry = page.evaluate("() => { const e = window.__portraitReviewView.log.slice(-1)[0]; "
                              "return {ok: e.ok, pressedAt: e.pressedAt, savedAt: e.savedAt, nextShownAt: e.nextShownAt}; }")
        if not entry.get("ok"):
            raise RuntimeError(f"triage page not saved: {entry}")
        saved.append(entry["savedAt"] - entry["pressedAt"])
        if entry.get("nextShownAt") is not None:
            painted.append(entry["nextShownAt"] - entry["pressedAt"])
    page.keyboard.press("Escape")
    return {"painted": painted, "saved": saved, "sizes": sizes, "keys": keys, "clicks": clicks,
            "accepted": accepted, "tile": tile}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="images in the queue")
    parser.add_argument("--size", type=int, default=320, help="image width in pixels")
    parser.add_argument("--decisions", type=int, default=60, help="decisions to time")
    parser.add_argument("--dwell", type=float, default=0.4, help="seconds each image stays before the press")
    parser.add_argument("--floor", type=int, default=10, help="plain ArrowRight presses to time")
    parser.add_argument("--screenshot", default=str(REPO / "tmp" / "review" / "benchmark.png"))
    parser.add_argument("--view-decisions", type=int, default=60, help="decisions to time in the review view")
    parser.add_argument("--triage-pages", type=int, default=5, help="triage pages to decide")
    parser.add_argument("--triage-min", type=float, default=0.85, help="review.triage_min_score")
    parser.add_argument("--auto-above", type=float, default=0.97,
                        help="masks scoring above this are auto-accepted (score_pool's rule, simulated)")
    parser.add_argument("--no-ab", action="store_true",
                        help="review view: send every decision the view's usual way (the direct route when up) "
                             "instead of alternating route / operators")
    parser.add_argument("--shots", default="/tmp/review_shots", help="folder for the views' screenshots")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pc-review-bench-"))
    os.environ["FIFTYONE_DATABASE_DIR"] = str(work / "db")  # throw-away database, removed at the end
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import review_browser as rb
    from params_helpers import write_params
    from review_browser import CANVAS_SIGNATURE_JS

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("review_latency: skipped, the playwright package is not installed")
        return 0
    if rb.chromium_path() is None:
        print("review_latency: skipped, chromium not found (apt-get install -y chromium)")
        return 0
    what = build_pool(work / "pseudo", args.count, args.size)
    auto_count, damaged = write_auto_accept(work, args.auto_above)
    port = rb.free_port()
    # the quick profile with the throw-away work folder as the project
    params = write_params(work / "params.yaml", {
        "paths": {"pseudo": "pseudo", "journal": "journal", "decisions": "decisions.csv", "quality": "quality"},
        "review": {"dataset_name": f"bench-{uuid.uuid4().hex[:8]}", "port": port,
                   "triage_min_score": args.triage_min}})
    view = triage = None
    started = time.monotonic()
    process = rb.start_review_app(params, port, "bench", work / "app.log", cwd=work)
    url, painted, seen, saved, floor = [], [], [], [], []
    try:
        answer_s = rb.wait_for_http(f"http://127.0.0.1:{port}/", process, timeout=300)
        print(f"queue: {what}; App answered HTTP {answer_s:.1f} s after start "
              f"({time.monotonic() - started:.1f} s including the dataset load)")
        with sync_playwright() as playwright:
            context, profile = rb.open_browser(playwright)
            page = context.new_page()
            t0 = time.monotonic()
            rb.open_first_sample(page, f"http://127.0.0.1:{port}/")
            print(f"page load to first image in the modal: {time.monotonic() - t0:.1f} s")
            watch = WATCH_JS % CANVAS_SIGNATURE_JS
            for index in range(args.decisions + args.floor):
                plain = index >= args.decisions
                sample = rb.current_sample_id(page)
                rb.wait_until_shown_for(page, args.dwell * 1000)
                page.evaluate(watch, None)
                page.keyboard.press("ArrowRight" if plain else ("d" if index % 5 == 4 else "a"))
                page.wait_for_function("() => window.__bench.paintedAt !== null", timeout=30_000)
                bench = page.evaluate("() => window.__bench")
                if plain:
                    floor.append(bench["paintedAt"] - bench["pressedAt"])
                    continue
                page.wait_for_function("(id) => window.__portraitReview.log.some(e => e.sampleId === id && "
                                       "e.savedAt !== undefined)", arg=sample, timeout=30_000)
                page.wait_for_function("(id) => window.__portraitReview.log.find(e => e.sampleId === id)"
                                       ".nextShownAt !== undefined", arg=sample, timeout=30_000)
                entry = page.evaluate("(id) => window.__portraitReview.log.find(e => e.sampleId === id)", sample)
                if not entry.get("ok"):
                    raise RuntimeError(f"decision not saved: {entry}")
                url.append(entry["nextUrlAt"] - entry["pressedAt"])
                seen.append(entry["nextShownAt"] - entry["pressedAt"])
                painted.append(bench["paintedAt"] - bench["pressedAt"])
                saved.append(entry["savedAt"] - entry["pressedAt"])
                if index == 3 and args.screenshot:
                    Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=args.screenshot)
            print(page.inner_text("#portrait-review-progress"))
            page.keyboard.press("Escape")  # back to the grid, where r / t open the review view
            page.wait_for_function("() => !document.querySelector('[data-cy=modal]')", timeout=30_000)
            if args.view_decisions:
                view = bench_view(page, args.view_decisions, args.dwell, args.shots, ab=not args.no_ab)
            if args.triage_pages:
                triage = bench_triage(page, args.triage_pages, damaged, args.dwell, args.shots)
            context.close()
            shutil.rmtree(profile, ignore_errors=True)
    finally:
        rb.stop_process_group(process)
    print(f"\nper decision, from the key press (App + database + browser on this machine, {os.cpu_count()} cores):")
    for name, values in (("url", url), ("painted", painted), ("seen", seen), ("saved", saved)):
        print(summarize(name, values))
    print(summarize("floor", floor) + "  <- plain ArrowRight, no decision: press to painted")
    if view:
        print(f"\nreview view (prefetching), per decision from the key press: {view['header']}")
        print(summarize("painted", view["painted"]) + "  <- next mask on screen (no server round trip)")
        print(summarize("swap", view["swap"]) + "  <- the view's own JS work in the key handler")
        print(summarize("saved", view["saved"]) + "  <- the server's answer: journal fsync'd + database updated")
        for path, values in sorted(view["saved_by_path"].items()):
            how = "direct decision route (review/route.py)" if path == "route" else "the App's /operators/execute"
            print(summarize("saved", values) + f"  <- of those, through {how}")
        print(summarize("fsync", view["fsync"]) + "  <- inside the server: request start to journal line fsync'd")
        print(summarize("mirror", view["mirror"]) + "  <- inside the server: ... to database updated")
    if triage:
        print(f"\ntriage pages of {triage['sizes']} masks (score >= {args.triage_min}), tiles {triage['tile']} px:")
        print(summarize("painted", triage["painted"]) + "  <- key press to the next page painted")
        print(summarize("saved", triage["saved"]) + "  <- the whole page journalled (one fsync)")
        presses = triage["keys"] + triage["clicks"]
        judged = sum(triage["sizes"])
        if triage["accepted"]:
            print(f"key presses + clicks per accepted label, triage: {presses}/{triage['accepted']} = "
                  f"{presses / triage['accepted']:.3f} ({triage['keys']} keys, {triage['clicks']} clicks, "
                  f"{judged} masks judged)")
        if triage["accepted"] + auto_count:
            print(f"  with auto-accept on ({auto_count} of {args.count} masks scored above {args.auto_above} and "
                  f"needed no press): {presses}/{triage['accepted'] + auto_count} = "
                  f"{presses / (triage['accepted'] + auto_count):.3f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
