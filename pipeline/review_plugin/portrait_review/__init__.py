"""FiftyOne operators of the review queue; the keys live in ``review_keys.js`` (the App's
modal) and ``review_view.js`` (the prefetching review view and triage pages, keys r / t).

``decide`` and ``undo_decision`` are what the key script (and its on-screen buttons) call,
with the sample id taken from the App's URL, so a decision can never land on the sample
the App has already moved on to. ``accept_shown`` / ``reject_shown`` are modal buttons for
when the script is not loaded (they judge ``ctx.current_sample`` and do not move on).

The App server runs these in its own process; the ``review`` command passes the journal
folder and the reviewer through the environment.
"""

from __future__ import annotations

import os

import fiftyone.operators as foo
from fiftyone.operators import types

from pipeline.review import dataset as review_dataset
from pipeline.review import route as review_route
from pipeline.review import view as review_view
from pipeline.review.config import (
    ENV_JOURNAL_DIR,
    ENV_MIN_SEEN_MS,
    ENV_ROUTE_TOKEN,
    ENV_ROUTE_URL,
    INFO_JOURNAL_DIR,
    INFO_MIN_SEEN_MS,
    INFO_VIEW_SETTINGS,
    default_reviewer,
)


def _reviewer() -> str:
    return default_reviewer()


def _journal_dir(ctx) -> str:
    path = os.environ.get(ENV_JOURNAL_DIR) or (ctx.dataset.info or {}).get(INFO_JOURNAL_DIR)
    if not path:
        raise review_dataset.ReviewError(
            "no journal folder: start the App with `portrait-curation review` (it sets "
            f"{ENV_JOURNAL_DIR}); decisions are not recorded without it")
    return path


def _min_seen_ms(ctx) -> int | None:
    """review.min_seen_ms as the ``review`` command passed it (environment, else the dataset)."""
    for value in (os.environ.get(ENV_MIN_SEEN_MS), (ctx.dataset.info or {}).get(INFO_MIN_SEEN_MS)):
        try:
            return int(value)
        except (TypeError, ValueError):
            continue
    return None


def _seconds(value):
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _result(ok: bool, message: str, progress=None, **extra) -> dict:
    out = {"ok": ok, "message": message, **extra}
    if progress is not None:
        out["progress"] = progress.as_dict()
        out["progress_text"] = progress.describe()
    return out


class Decide(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="decide", label="Review: decide (used by the a/d keys)", unlisted=True)

    def execute(self, ctx):
        decision = ctx.params.get("decision")
        sample_id = ctx.params.get("sample_id") or ctx.current_sample
        if decision not in ("accept", "reject") or not sample_id:
            return _result(False, f"bad request: decision={decision!r} sample_id={sample_id!r}")
        timings: dict = {}
        try:
            events, progress = review_dataset.record_decisions(
                ctx.dataset, [(sample_id, decision, ctx.params.get("mask_sha256") or None,
                               _seconds(ctx.params.get("seconds_on_screen")))],
                _reviewer(), _journal_dir(ctx), via=ctx.params.get("via", "key"),
                with_progress=ctx.params.get("progress", True) is not False, timings=timings)
        except review_dataset.ReviewError as exc:
            return _result(False, str(exc))
        event = events[0]
        return _result(True, f"{decision}ed {event.id}", progress, id=event.id, decision=decision,
                       sample_id=sample_id, timings=timings)


class UndoDecision(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="undo_decision", label="Review: undo my last decision")

    def resolve_placement(self, ctx):
        return types.Placement(types.Places.SAMPLES_VIEWER_ACTIONS,
                               types.Button(label="Undo last decision (u)", icon="undo", prompt=False))

    def execute(self, ctx):
        count = ctx.params.get("count", 1)  # a triage page is undone whole
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= review_view.MAX_PAGE:
            return _result(False, f"bad request: count={count!r}")
        undone = []
        try:
            for _ in range(count):
                undo, sample_id, progress = review_dataset.undo_last(ctx.dataset, _reviewer(), _journal_dir(ctx))
                if undo is None:
                    break
                undone.append((undo, sample_id))
        except review_dataset.ReviewError as exc:
            if not ctx.params.get("quiet"):
                ctx.ops.notify(str(exc), variant="error")
            return _result(False, str(exc), ids=[u.id for u, _ in undone])
        if not undone:
            return _result(False, "nothing to undo", progress)
        undo, sample_id = undone[0]
        message = f"undid the decision on {undo.id}" if count == 1 else \
            f"undid {len(undone)} decision(s): {', '.join(u.id for u, _ in undone)}"
        if not ctx.params.get("quiet"):
            ctx.ops.notify(f"{message} · {progress.describe()}")
        return _result(True, message, progress, id=undo.id, sample_id=sample_id,
                       ids=[u.id for u, _ in undone], sample_ids=[s for _, s in undone])


class _DecideShown(foo.Operator):
    decision = ""

    def resolve_placement(self, ctx):
        icon = "check" if self.decision == "accept" else "close"
        key = "a" if self.decision == "accept" else "d"
        return types.Placement(types.Places.SAMPLES_VIEWER_ACTIONS,
                               types.Button(label=f"{self.decision.title()} ({key})", icon=icon, prompt=False))

    def execute(self, ctx):
        if not ctx.current_sample:
            ctx.ops.notify("open a sample first", variant="warning")
            return _result(False, "no sample open")
        try:
            event, progress = review_dataset.record_decision(
                ctx.dataset, ctx.current_sample, self.decision, _reviewer(), _journal_dir(ctx), via="button")
        except review_dataset.ReviewError as exc:
            ctx.ops.notify(str(exc), variant="error")
            return _result(False, str(exc))
        ctx.ops.notify(f"{self.decision}ed {event.id} · {progress.describe()}", variant="success")
        return _result(True, f"{self.decision}ed {event.id}", progress, id=event.id)


class AcceptShown(_DecideShown):
    decision = "accept"

    @property
    def config(self):
        return foo.OperatorConfig(name="accept_shown", label="Review: accept the open sample")


class RejectShown(_DecideShown):
    decision = "reject"

    @property
    def config(self):
        return foo.OperatorConfig(name="reject_shown", label="Review: reject the open sample")


class ReviewProgress(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="review_progress", label="Review: progress")

    def execute(self, ctx):
        progress = review_dataset.dataset_progress(ctx.dataset)
        extra = {"reviewer": _reviewer()}
        min_seen_ms = _min_seen_ms(ctx)
        if min_seen_ms is not None:  # else the key script keeps the value it starts with
            extra["min_seen_ms"] = min_seen_ms
        return _result(True, progress.describe(), progress, **extra)


class CloseSample(foo.Operator):
    """A modal restored from the session after a page reload ignores the App's keys;
    the key script closes it through the App so the reviewer reopens a live one."""

    @property
    def config(self):
        return foo.OperatorConfig(name="close_sample", label="Review: close the sample modal", unlisted=True)

    def execute(self, ctx):
        ctx.ops.close_sample()
        return {"ok": True}


def _view_settings(ctx) -> dict:
    stored = (ctx.dataset.info or {}).get(INFO_VIEW_SETTINGS) or {}
    settings = review_view.ViewSettings(**{k: v for k, v in stored.items()
                                           if k in review_view.ViewSettings.__dataclass_fields__})
    min_seen_ms = _min_seen_ms(ctx)
    out = settings.as_dict()
    if min_seen_ms is not None:
        out["min_seen_ms"] = min_seen_ms
    # the review process's direct decision route (review/route.py), when it serves one
    out.update(review_route.as_settings(os.environ.get(ENV_ROUTE_URL), os.environ.get(ENV_ROUTE_TOKEN)))
    return out


class ViewBatch(foo.Operator):
    """The next masks the review view prefetches (queue order, or the triage page's)."""

    @property
    def config(self):
        return foo.OperatorConfig(name="view_batch", label="Review: next masks for the review view", unlisted=True)

    def execute(self, ctx):
        settings = _view_settings(ctx)
        try:
            mode, count, exclude = review_view.batch_request(ctx.params)
            items = review_dataset.view_batch(ctx.dataset, mode, count, exclude,
                                              min_score=settings["triage_min_score"])
        except (review_view.RequestError, review_dataset.ReviewError) as exc:
            return _result(False, str(exc))
        progress = review_dataset.dataset_progress(ctx.dataset)
        return _result(True, f"{len(items)} item(s)", progress, items=items, settings=settings,
                       reviewer=_reviewer())


class DecidePage(foo.Operator):
    """A triage page: every mask on it journalled (one fsync), the clicked ones rejected."""

    @property
    def config(self):
        return foo.OperatorConfig(name="decide_page", label="Review: decide a triage page", unlisted=True)

    def execute(self, ctx):
        timings: dict = {}
        try:
            requests = review_view.page_request(ctx.params.get("decisions"))
            events, progress = review_dataset.record_decisions(
                ctx.dataset, requests, _reviewer(), _journal_dir(ctx), via=ctx.params.get("via", "triage"),
                extra={"page_size": len(requests)}, with_progress=ctx.params.get("progress", True) is not False,
                timings=timings)
        except (review_view.RequestError, review_dataset.ReviewError) as exc:
            return _result(False, str(exc))
        rejected = sum(e.decision == "reject" for e in events)
        return _result(True, f"page of {len(events)}: {len(events) - rejected} accepted, {rejected} rejected",
                       progress, ids=[e.id for e in events], timings=timings)


def register(plugin):
    for operator in (Decide, UndoDecision, AcceptShown, RejectShown, ReviewProgress, CloseSample, ViewBatch,
                     DecidePage):
        plugin.register(operator)
