"""review: open the pseudo-label accept/reject queue in the FiftyOne App.

Three ways to decide, one journal (docs/review.md):

- the review view (key r on the grid, the launcher bottom left, or the App's "new panel" menu):
  one mask at a time, likely failures first, from masks the browser has already prefetched, so
  a key press shows the next one at once (about 10-20 ms, benchmarks/review_latency.py). The
  mask's outline on the photo, its fill (f), where the teachers disagree (g), the score and the
  part that pulls it down; progress, rate and time left; which decisions are not yet saved.
  Keys a = accept, d = reject, u = undo, Esc = close.
- triage pages (key t): the confident masks (score >= review.triage_min_score), tiles at least
  review.triage_tile_px tall; click the bad ones, then one key (a or Enter) decides the page,
  every mask on it journalled; u reopens the last page.
- the App's own sample modal: a = accept, d = reject (both move to the next sample), u = undo
  my last decision (and go back to it). A bar at the bottom left has the same three as buttons,
  shows the last saved decision and the progress; the modal's action menu has Accept/Reject/Undo
  buttons that work without the key script.

Decisions from the review view and triage pages go to a small HTTP route this command serves
on 127.0.0.1 (a free port, a per-session token, the App's origin only; review/route.py), the
App's operators being the fallback when the browser cannot reach it; PORTRAIT_REVIEW_ROUTE_OFF=1
starts none. Decisions: each is appended to ``<paths.journal>/<reviewer>.jsonl`` (fsync'd) before the App
says "saved" (only then is it acknowledged: a crash loses only what is still listed as not
saved), then mirrored on the FiftyOne sample. Each names the mask_sha256 it judged;
on every start the dataset is rebuilt from the pool and the journals, undecided samples
first (likely failures first), so a killed App or database loses nothing, and a sample whose
mask changed since it was judged is back in the queue (the old decision stays in the
journal and shows as ``review_stale``).

Scores: where the ``score_pool`` stage has run, ``score`` is the calibrated P(good) and
``score_low_part`` names the feature that pulls it down most; masks it auto-accepted leave
the queue, except an audit share, shown like any other mask (nothing in the App tells them
apart). A person's decision always wins over the rule's. Reviewer names starting with
``auto:`` belong to rules and are refused.

Database: the command connects before building the queue and waits for a database that is
slow to start or restarting (``review.database_wait_s``, ``--database-wait``), saying so;
one that never answers ends with one line naming it (password redacted) and what to do.

Several reviewers: point every reviewer at one MongoDB (``--database-uri`` or
FIFTYONE_DATABASE_URI) and give each their own App (own port, own ``--reviewer``); each
journal is its own file, to commit with the project.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.params import load_params, parse_section
from pipeline.paths import ProjectPaths
from pipeline.review import journal as jr
from pipeline.review.config import (ENV_JOURNAL_DIR, ENV_MIN_SEEN_MS, ENV_REVIEWER, ENV_ROUTE_OFF, ENV_ROUTE_TOKEN,
                                    ENV_ROUTE_URL, INFO_JOURNAL_DIR, INFO_MIN_SEEN_MS, INFO_VIEW_SETTINGS,
                                    PLUGINS_DIR, ReviewParams, check_database_uri, default_reviewer)
from pipeline.review.view import ViewSettings
from pipeline.review.database import connect_fiftyone, redact_uri
from pipeline.review.pool import current_hashes, queue_items, read_pool
from pipeline.quality.outputs import AUTO_PREFIX, check_people, merge_decisions, read_auto_journal
from pipeline.stage import StageError, make_parser, run_main


def status_text(pool_dir: str | os.PathLike, journal_dir: str | os.PathLike,
                quality_dir: str | os.PathLike | None = None) -> str:
    """Progress from the pool and the journals alone (no App, no database)."""
    items, _ = read_pool(pool_dir, quality_dir)
    events, torn = jr.read_journals(journal_dir)
    hashes = current_hashes(items)
    resolved = jr.resolve_decisions(events, hashes)
    stale = jr.stale_decisions(events, hashes)
    shown = queue_items(items, resolved)
    lines = [jr.progress(resolved, total=len(shown)).describe()]
    if len(shown) < len(items) and quality_dir is not None:
        merged = merge_decisions(events, read_auto_journal(quality_dir), hashes)
        auto_only = sum(1 for k in merged.auto if k not in merged.human)
        lines.append(f"auto-accepted by the score (no person needed): {len(items) - len(shown)} of {len(items)} "
                     f"masks; {auto_only} auto accept(s) apply in all")
    by_reviewer: dict[str, int] = {}
    for event in resolved.values():
        by_reviewer[event.reviewer] = by_reviewer.get(event.reviewer, 0) + 1
    if by_reviewer:
        lines.append("by reviewer: " + ", ".join(f"{k} {v}" for k, v in sorted(by_reviewer.items())))
    stale_only = [k for k in stale if k not in resolved]
    if stale_only:
        lines.append(f"{len(stale_only)} sample(s) back in the queue: their mask changed after they were judged")
    if torn:
        lines.append(f"skipped {torn} torn journal line(s) (writes cut short by a crash, never acknowledged)")
    return "\n".join(lines)


def prepare_environment(params: ReviewParams, journal_dir: str | os.PathLike, reviewer: str,
                        database_uri: str) -> None:
    """Settings the App server (a subprocess running the plugin) inherits; set before fiftyone
    is imported because it reads its config at import."""
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(PLUGINS_DIR)
    os.environ[ENV_JOURNAL_DIR] = str(Path(journal_dir).resolve())
    os.environ[ENV_REVIEWER] = reviewer
    os.environ[ENV_MIN_SEEN_MS] = str(params.min_seen_ms)
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    if database_uri:
        os.environ["FIFTYONE_DATABASE_URI"] = database_uri
    if "fiftyone" in sys.modules:  # imported earlier in this process (tests): update its config too
        import fiftyone as fo

        fo.config.plugins_dir = str(PLUGINS_DIR)
        if database_uri:
            fo.config.database_uri = database_uri


def check_reviewer(reviewer: str) -> str:
    if reviewer.startswith(AUTO_PREFIX):
        raise StageError(f"reviewer {reviewer!r}: names starting with {AUTO_PREFIX!r} belong to the auto-accept "
                         "rule; a person needs another name (--reviewer)")
    return reviewer


def read_queue_inputs(pool_dir: str | os.PathLike, journal_dir: str | os.PathLike,
                      quality_dir: str | os.PathLike | None = None):
    """The pool and the journals, read (and refused clearly) before any database is involved."""
    items, warnings = read_pool(pool_dir, quality_dir)
    for warning in warnings[:10]:
        print(f"warning: {warning}")
    if len(warnings) > 10:
        print(f"warning: ... and {len(warnings) - 10} more")
    if not items:
        raise StageError(f"{pool_dir}: the pool has no pseudo-labelled samples to review")
    events, torn = jr.read_journals(journal_dir)
    check_people(events, str(journal_dir))
    if torn:
        print(f"warning: skipped {torn} torn journal line(s) (writes cut short by a crash, never acknowledged)")
    return items, events


def load_queue(params: ReviewParams, journal_dir: str | os.PathLike, items, events):
    """Sync the persistent dataset with the pool and the journals; return (dataset, view, summary)."""
    from pipeline.review.dataset import sync_dataset

    dataset, view, summary = sync_dataset(params.dataset_name, items, events)
    dataset.info[INFO_JOURNAL_DIR] = str(Path(journal_dir).resolve())
    dataset.info[INFO_MIN_SEEN_MS] = params.min_seen_ms
    dataset.info[INFO_VIEW_SETTINGS] = view_settings(params).as_dict()
    dataset.save()
    return dataset, view, summary


def start_decision_route(dataset, params: ReviewParams, port: int, reviewer: str, journal_dir):
    """Serve the view's direct decision route from this process (``review/route.py``) and hand
    its URL and token to the App server through the environment; None when ENV_ROUTE_OFF is
    set or the route cannot start (the view then decides through the App's operators)."""
    from pipeline.review import route

    os.environ.pop(ENV_ROUTE_URL, None)
    os.environ.pop(ENV_ROUTE_TOKEN, None)
    if os.environ.get(ENV_ROUTE_OFF, "").strip() not in ("", "0"):
        print(f"decision route off ({ENV_ROUTE_OFF}): the review view decides through the App's operators")
        return None
    token = route.new_token()
    decisions = route.dataset_route(dataset, reviewer, Path(journal_dir).resolve(),
                                    route.app_origins(params.address, port), token)
    try:
        server = route.start_route(decisions)
    except OSError as exc:
        print(f"warning: no decision route ({exc.strerror or exc}): the review view decides through the App")
        return None
    os.environ[ENV_ROUTE_URL] = route.route_url(server)
    os.environ[ENV_ROUTE_TOKEN] = token
    return server


def view_settings(params: ReviewParams) -> ViewSettings:
    return ViewSettings(min_seen_ms=params.min_seen_ms, prefetch=params.prefetch,
                        triage_min_score=params.triage_min_score, triage_tile_px=params.triage_tile_px)


def main(argv=None) -> int:
    parser = make_parser("review", __doc__)
    parser.add_argument("--port", type=int, help="App port (default: review.port)")
    parser.add_argument("--database-uri", default=None,
                        help="MongoDB URI shared by reviewers (default: FIFTYONE_DATABASE_URI, then "
                             "review.database_uri, then FiftyOne's own database)")
    parser.add_argument("--reviewer", default=None, help="name recorded with each decision (default: $USER)")
    parser.add_argument("--database-wait", type=float, default=None, metavar="SECONDS",
                        help="how long to wait for a slow or restarting database (default: review.database_wait_s)")
    parser.add_argument("--status", action="store_true", help="print the progress and exit (no App)")
    parser.add_argument("--load-only", action="store_true", help="sync the FiftyOne dataset and exit")

    def body(args) -> int:
        raw = load_params(args.params)
        paths = parse_section(ProjectPaths, raw, "paths", args.params)
        params = parse_section(ReviewParams, raw, "review", args.params)
        if args.status:
            print(status_text(paths.pseudo, paths.journal, paths.quality))
            return 0
        reviewer = check_reviewer(args.reviewer or default_reviewer())
        database_uri = args.database_uri or os.environ.get("FIFTYONE_DATABASE_URI") or params.database_uri
        try:
            database_uri = check_database_uri(database_uri)
        except ValueError as exc:
            raise StageError(f"database URI {redact_uri(database_uri)!r}: {exc}") from None
        wait_s = params.database_wait_s if args.database_wait is None else args.database_wait
        if not 0 <= wait_s <= 3600:  # NaN fails too
            raise StageError(f"--database-wait must be between 0 and 3600 seconds, got {wait_s}")
        port = args.port or params.port
        items, events = read_queue_inputs(paths.pseudo, paths.journal, paths.quality)
        prepare_environment(params, paths.journal, reviewer, database_uri)
        connect_fiftyone(wait_s)
        dataset, view, summary = load_queue(params, paths.journal, items, events)
        print(f"queue {params.dataset_name!r}: {summary['samples']} samples ({summary['added']} new, "
              f"{summary['removed']} removed), {summary['decided']} decided, {summary['stale']} back in the queue "
              f"because their mask changed, {summary['auto_accepted_not_shown']} auto-accepted and not shown")
        print(status_text(paths.pseudo, paths.journal, paths.quality))
        if args.load_only:
            return 0
        import fiftyone as fo

        start_decision_route(dataset, params, port, reviewer, paths.journal)  # before the App server starts
        session = fo.launch_app(view=view, remote=True, address=params.address, port=port)
        print(f"\nreviewer {reviewer!r}: open http://{params.address}:{port}/: r = review view, "
              "t = triage pages, or open a sample (a = accept, d = reject, u = undo). Decisions go to "
              f"{jr.journal_path(paths.journal, reviewer)}. Ctrl+C stops the App.", flush=True)
        session.wait(-1)
        return 0

    return run_main(body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
