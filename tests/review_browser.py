"""Drive the review App in headless Chromium (for the browser test and the latency benchmark).

Needs Debian's ``chromium`` and the dev-only ``playwright`` Python package (used with the
system browser: ``playwright install`` is never run). A test helper, not part of the package:
nothing in ``pipeline/`` imports playwright.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# A fresh profile shows FiftyOne's "Enterprise" popover over the grid; mark it seen.
_INIT_SCRIPT = "try { localStorage.setItem('fiftyone-enterprise-tooltip-seen', 'true') } catch (e) {}"

# A cheap fingerprint of what the modal's canvas shows (16x16 downscale), to tell when the
# next image has been painted.
CANVAS_SIGNATURE_JS = """() => {
  const c = document.querySelector('[data-cy=modal] canvas');
  if (!c || !c.width) return null;
  const o = document.createElement('canvas'); o.width = 16; o.height = 16;
  const g = o.getContext('2d'); g.drawImage(c, 0, 0, 16, 16);
  const d = g.getImageData(0, 0, 16, 16).data;
  let h = 0; for (let i = 0; i < d.length; i++) h = (h * 31 + d[i]) >>> 0;
  return h;
}"""


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_review_app(params_path: str | os.PathLike, port: int, reviewer: str, log_path: str | os.PathLike,
                     cwd: str | os.PathLike | None = None, env: dict | None = None) -> subprocess.Popen:
    """``portrait-curation review`` in its own process group (so it and its App server stop together).

    ``env`` adds to the environment (a value of None removes the variable), e.g. the URI of
    ``start_own_mongod``."""
    log = open(log_path, "w")
    merged = {**os.environ, "FIFTYONE_DO_NOT_TRACK": "true", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "review", "--params", str(params_path),
                             "--port", str(port), "--reviewer", reviewer],
                            stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                            env={k: v for k, v in merged.items() if v is not None})


def start_own_mongod(database_dir: str | os.PathLike, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """A mongod of this test's own (FiftyOne's binary) and its URI.

    FiftyOne's own database service is shared by every FiftyOne process on the machine (a new
    one attaches to any running one), so a test that kills "the App's database" starts its own
    and passes it as FIFTYONE_DATABASE_URI: killing it touches nobody else."""
    from fiftyone.core.service import DatabaseService

    database_dir = Path(database_dir)
    database_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen([DatabaseService.find_mongod(), "--dbpath", str(database_dir), "--port", str(port),
                                "--bind_ip", "127.0.0.1", "--nounixsocket", "--logpath",
                                str(database_dir / "mongod.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"mongod exited with status {process.returncode} (see {database_dir}/mongod.log)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, f"mongodb://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.25)
    process.kill()
    raise TimeoutError(f"mongod did not listen on port {port} within {timeout:.0f} s")


def kill_browser_processes() -> int:
    """SIGKILL every Chromium this test process started (its descendants): a browser crash."""
    import psutil

    killed = 0
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in child.name().lower():
                child.kill()
                killed += 1
        except psutil.NoSuchProcess:
            continue
    return killed


def open_review_view(page, url: str | None, key: str = "r", timeout_ms: int = 120_000) -> None:
    """Load the App, wait for the grid, press ``key`` (r: review view, t: triage) and wait for
    the first mask (or page) to be painted."""
    if url is not None:
        page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    page.wait_for_selector("[data-cy=looker]", timeout=timeout_ms)
    page.wait_for_function("() => !!window.__portraitReviewView", timeout=timeout_ms)
    page.wait_for_function("() => !document.querySelector('[data-cy=modal]')", timeout=timeout_ms)
    page.keyboard.press(key)
    page.wait_for_function("() => window.__portraitReviewView.shownAt !== null", timeout=timeout_ms)


def view_state(page, expression: str):
    """Evaluate ``expression`` with ``S`` bound to the view's state."""
    return page.evaluate(f"() => {{ const S = window.__portraitReviewView; return {expression}; }}")


def wait_view_shown_for(page, milliseconds: float, timeout_ms: int = 30_000) -> None:
    page.wait_for_function("(ms) => { const S = window.__portraitReviewView; "
                           "return S.shownAt !== null && performance.now() - S.shownAt >= ms; }",
                           arg=milliseconds, timeout=timeout_ms)


def wait_view_saved(page, timeout_ms: int = 60_000) -> None:
    """Until the view has no decision left that is not acknowledged."""
    page.wait_for_function("() => window.__portraitReviewView.unsaved.length === 0", timeout=timeout_ms)


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 180.0) -> float:
    """Seconds until ``url`` answers; raise if the process died or the time ran out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the review App exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_process_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    try:  # the App server may outlive the review process by a moment
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def open_browser(playwright, width: int = 1280, height: int = 800):
    """A headless Chromium context with a fresh profile; returns (context, profile dir)."""
    profile = tempfile.mkdtemp(prefix="pc-review-chromium-")
    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
        viewport={"width": width, "height": height})
    context.add_init_script(_INIT_SCRIPT)
    return context, profile


def open_first_sample(page, url: str | None, timeout_ms: int = 120_000) -> None:
    """Load the App, wait for the grid, open the first sample of the queue in the modal."""
    if url is not None:  # None: the page is already loading the App
        page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    page.wait_for_selector("[data-cy=looker]", timeout=timeout_ms)
    page.wait_for_function("() => !!window.__portraitReview", timeout=timeout_ms)  # the key script loaded
    page.wait_for_function("() => !document.querySelector('[data-cy=modal]')", timeout=timeout_ms)
    page.locator("[data-cy=looker]").first.click(timeout=timeout_ms)
    page.wait_for_function("() => window.__portraitReview.currentId && "
                           "document.getElementById('portrait-review-bar').style.display !== 'none'",
                           timeout=timeout_ms)


def current_sample_id(page) -> str | None:
    return page.evaluate("() => window.__portraitReview.currentId")


def wait_for_next_sample(page, previous_id: str, timeout_ms: int = 30_000) -> str:
    page.wait_for_function("(prev) => { const id = window.__portraitReview.currentId; return id && id !== prev; }",
                           arg=previous_id, timeout=timeout_ms)
    return current_sample_id(page)


def wait_until_shown_for(page, milliseconds: float, timeout_ms: int = 30_000) -> None:
    """Wait until the open sample has been on screen this long (the key script's "seen")."""
    page.wait_for_function("(ms) => { const st = window.__portraitReview; "
                           "return st.shownAt !== null && performance.now() - st.shownAt >= ms; }",
                           arg=milliseconds, timeout=timeout_ms)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
