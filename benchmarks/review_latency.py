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


def build_pool(out: Path, count: int, size: int) -> str:
    from review_standin import SHARED_EG1800, eg1800_samples, synthetic_sample, write_pool

    if SHARED_EG1800.is_dir():
        write_pool(out, eg1800_samples(count, size), failure_fraction=0.2, seed=0)
        return f"{count} EG1800 photos resized to {size} px wide"
    write_pool(out, ((f"{i:05d}", *synthetic_sample(i, size)) for i in range(count)), seed=0)
    return f"{count} synthetic pictures, {size} px wide"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="images in the queue")
    parser.add_argument("--size", type=int, default=320, help="image width in pixels")
    parser.add_argument("--decisions", type=int, default=60, help="decisions to time")
    parser.add_argument("--dwell", type=float, default=0.4, help="seconds each image stays before the press")
    parser.add_argument("--floor", type=int, default=10, help="plain ArrowRight presses to time")
    parser.add_argument("--screenshot", default=str(REPO / "tmp" / "review" / "benchmark.png"))
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
    port = rb.free_port()
    # the quick profile with the throw-away work folder as the project
    params = write_params(work / "params.yaml", {
        "paths": {"pseudo": "pseudo", "journal": "journal", "decisions": "decisions.csv"},
        "review": {"dataset_name": f"bench-{uuid.uuid4().hex[:8]}", "port": port}})
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
            context.close()
            shutil.rmtree(profile, ignore_errors=True)
    finally:
        rb.stop_process_group(process)
    print(f"\nper decision, from the key press (App + database + browser on this machine, {os.cpu_count()} cores):")
    for name, values in (("url", url), ("painted", painted), ("seen", seen), ("saved", saved)):
        print(summarize(name, values))
    print(summarize("floor", floor) + "  <- plain ArrowRight, no decision: press to painted")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
