"""The FiftyOne side of the queue: a persistent dataset rebuilt from the pool and the journal.

The dataset only mirrors the journal: every load re-derives each sample's decision from
the journals, so a lost or stale database never loses or misapplies a decision. The
functions the App's operators call (``record_decision``, ``undo_last``) write the journal
line (fsync'd) before touching the database.

The dataset holds the masks a person is shown (``pool.queue_items``): auto-accepted masks
that are not audited are left out, and an audited one is shown exactly like any other
(``sample_fields`` writes the same fields from the same kind of values for every mask;
nothing says "auto" or "audit").
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Iterable

from pipeline.hashing import sha256_file
from pipeline.review import journal as jr
from pipeline.review.pool import PoolItem, current_hashes, order_keys, queue_items, queue_order
from pipeline.review.view import view_item

MASK_FIELD = "pseudo_mask"
QUEUE_VIEW = "queue"
DECISION_FIELDS = ("review_decision", "review_reviewer", "review_decided_at", "review_seconds", "review_event_id")
MASK_COLOR = "#ff2bd6"  # magenta: visible on skin, hair and most backgrounds
SAMPLE_FIELDS = ("filepath", "source", "origin", "notes", "score", "score_low_part", "score_components",
                 "score_contributions", "mask_sha256", "disagreement_path")


class ReviewError(RuntimeError):
    """A decision that cannot be recorded (unknown sample, mask changed on disk)."""


def _decision_values(event: jr.ReviewEvent | None) -> dict:
    if event is None:
        return {name: None for name in DECISION_FIELDS}
    return {"review_decision": event.decision, "review_reviewer": event.reviewer,
            "review_decided_at": event.decided_at_utc, "review_seconds": event.seconds_on_screen,
            "review_event_id": event.event_id}


def _stale_note(event: jr.ReviewEvent | None) -> str | None:
    if event is None:
        return None
    return f"{event.decision} by {event.reviewer} at {event.decided_at_utc} on an older mask ({event.mask_sha256[:12]}): not applied"


def score_text(item: PoolItem) -> str | None:
    """What the sidebar says about the score: which part is low, and by how much."""
    if not item.low_part:
        return None
    push = item.contributions.get(item.low_part)
    return item.low_part if push is None else f"{item.low_part} ({push:+.2f} on the logit)"


def sample_fields(item: PoolItem) -> dict:
    """The fields a sample shows, other than the mask and the decision: the same for every mask."""
    return {
        "filepath": item.image_path, "source": item.source, "origin": item.origin, "notes": item.notes,
        "score": None if math.isnan(item.score) else round(float(item.score), 4),
        "score_low_part": score_text(item),
        "score_components": dict(item.components),
        "score_contributions": {k: round(float(v), 4) for k, v in item.contributions.items()},
        "mask_sha256": item.mask_sha256,
        "disagreement_path": item.disagreement_path or None,
    }


def sync_dataset(name: str, items: list[PoolItem], events: Iterable[jr.ReviewEvent]):
    """Create or update the persistent dataset ``name`` to hold the masks a person is shown
    (``queue_items``), each with the decision that applies to its current mask; return
    (dataset, queue view, summary)."""
    import fiftyone as fo

    events = list(events)
    hashes = current_hashes(items)
    resolved = jr.resolve_decisions(events, hashes)
    stale = jr.stale_decisions(events, hashes)
    left = len(items)
    items = queue_items(items, resolved)
    left -= len(items)
    order = queue_order(order_keys(items), resolved)
    rank = {sample_id: position for position, sample_id in enumerate(order)}

    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
    else:
        dataset = fo.Dataset(name, persistent=True)
    existing = set(dataset.values("pc_id")) if len(dataset) else set()
    wanted = {i.id for i in items}
    removed = existing - wanted
    if removed:
        dataset.delete_samples(dataset.match(fo.ViewField("pc_id").is_in(sorted(removed))))
    new = [i for i in items if i.id not in existing]
    if new:
        dataset.add_samples([fo.Sample(filepath=i.image_path, pc_id=i.id) for i in new], progress=False)

    by_id = {i.id: i for i in items}
    fields = {k: sample_fields(i) for k, i in by_id.items()}
    columns: dict[str, dict] = {name: {k: f[name] for k, f in fields.items()} for name in SAMPLE_FIELDS}
    columns.update({
        MASK_FIELD: {k: fo.Segmentation(mask_path=i.mask_path) for k, i in by_id.items()},
        "queue_rank": rank,
        "review_stale": {k: _stale_note(stale.get(k)) for k in by_id},
    })
    for field_name in DECISION_FIELDS:
        columns[field_name] = {k: _decision_values(resolved.get(k))[field_name] for k in by_id}
    if by_id:
        for field_name, values in columns.items():
            _ensure_field(dataset, field_name, values)
            dataset.set_values(field_name, values, key_field="pc_id")

    dataset.mask_targets = {MASK_FIELD: {255: "person"}}
    dataset.app_config.active_fields = fo.ActiveFields(paths=[MASK_FIELD, "score", "score_low_part",
                                                              "review_decision", "review_stale"])
    dataset.app_config.color_scheme = fo.ColorScheme(
        color_by="field", opacity=0.4,
        fields=[{"path": MASK_FIELD, "fieldColor": MASK_COLOR,
                 "maskTargetsColors": [{"intTarget": 255, "color": MASK_COLOR}]}])
    dataset.save()
    view = dataset.sort_by("queue_rank")
    if dataset.has_saved_view(QUEUE_VIEW):
        dataset.delete_saved_view(QUEUE_VIEW)
    dataset.save_view(QUEUE_VIEW, view, description="undecided first, likely failures first")
    summary = {"samples": len(items), "added": len(new), "removed": len(removed),
               "decided": len(resolved), "stale": len(stale), "auto_accepted_not_shown": left}
    return dataset, view, summary


def _ensure_field(dataset, field_name: str, values: dict) -> None:
    """Declare the field's type up front: set_values cannot infer it from all-None values."""
    import fiftyone as fo

    if dataset.has_sample_field(field_name):
        return
    types = {"review_seconds": fo.FloatField, "score": fo.FloatField, "queue_rank": fo.IntField,
             "score_components": fo.DictField, "score_contributions": fo.DictField}
    if field_name == MASK_FIELD:
        dataset.add_sample_field(field_name, fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    else:
        dataset.add_sample_field(field_name, types.get(field_name, fo.StringField))


def dataset_progress(dataset) -> jr.Progress:
    """Counts of the current decisions, straight from the database (all reviewers)."""
    counts = dataset.count_values("review_decision")
    seconds = dataset.exists("review_seconds").values("review_seconds")
    return jr.progress_of(["accept"] * counts.get("accept", 0) + ["reject"] * counts.get("reject", 0),
                          seconds, total=len(dataset))


def _checked_sample(dataset, sample_id: str, expected_sha256: str | None = None):
    """The sample, refused when its mask is missing, changed on disk since the queue was
    loaded, or is not the mask the reviewer was shown (``expected_sha256``)."""
    try:
        sample = dataset[sample_id]
    except (KeyError, ValueError):
        raise ReviewError(f"no sample {sample_id!r} in dataset {dataset.name!r}") from None
    # FiftyOne hands back the sample object this process already holds, with the values it last
    # saw; another process (the App server vs the review command's route, another reviewer's
    # App) may have changed them since, and a value set to what the stale copy already holds is
    # never saved. Reloading keeps the mirror right.
    sample.reload()
    recorded_hash = sample["mask_sha256"]
    mask_path = sample[MASK_FIELD].mask_path
    if not recorded_hash or not mask_path or not Path(mask_path).is_file():
        raise ReviewError(f"{sample['pc_id']}: its mask file is missing; re-run `portrait-curation review`")
    if sha256_file(mask_path) != recorded_hash:
        raise ReviewError(f"{sample['pc_id']}: the mask changed on disk since the queue was loaded "
                          "(pseudo_label re-ran?); restart `portrait-curation review` to reload it")
    if expected_sha256 and expected_sha256 != recorded_hash:
        raise ReviewError(f"{sample['pc_id']}: the mask shown ({expected_sha256[:12]}) is not the queue's "
                          f"({recorded_hash[:12]}); reload the page")
    return sample


def record_decision(dataset, sample_id: str, decision: str, reviewer: str, journal_dir: str | os.PathLike,
                    seconds_on_screen: float | None = None, via: str = "", expected_sha256: str | None = None,
                    with_progress: bool = True) -> tuple[jr.ReviewEvent, jr.Progress | None]:
    """Journal the decision on FiftyOne sample ``sample_id`` (fsync), then mirror it in the
    database. Refuses when the mask on disk is no longer the one the queue was built with."""
    events, progress = record_decisions(dataset, [(sample_id, decision, expected_sha256, seconds_on_screen)],
                                        reviewer, journal_dir, via=via, with_progress=with_progress)
    return events[0], progress


def record_decisions(dataset, requests, reviewer: str, journal_dir: str | os.PathLike, via: str = "",
                     extra: dict | None = None, with_progress: bool = True, timings: dict | None = None
                     ) -> tuple[list[jr.ReviewEvent], jr.Progress | None]:
    """Journal several decisions with one fsync (a triage page), then mirror them.

    ``requests``: (sample id, decision, mask sha256 shown or None, seconds on screen). All are
    checked before any is written: one bad request refuses the whole page, so a page is
    either journalled whole or not at all (as far as a crash allows, see ``append_events``).
    ``with_progress=False`` skips counting the whole dataset (the review view counts itself).
    ``timings``, if given, gets milliseconds since the call when the checks, the fsync and the
    database mirror were done (for benchmarks/review_latency.py).
    """
    started = time.perf_counter()

    def mark(name: str) -> None:
        if timings is not None:
            timings[name] = round((time.perf_counter() - started) * 1000, 2)

    checked = []
    for sample_id, decision, expected, seconds in requests:
        if decision not in jr.DECISIONS:
            raise ReviewError(f"decision must be accept or reject, got {decision!r}")
        sample = _checked_sample(dataset, sample_id, expected)
        checked.append((sample, jr.make_decision(sample["pc_id"], decision, sample["mask_sha256"], reviewer,
                                                 seconds, via, extra=extra)))
    if not checked:
        raise ReviewError("no decisions to record")
    mark("checked_ms")
    _append(jr.journal_path(journal_dir, reviewer), [event for _, event in checked])
    mark("journal_ms")
    for sample, event in checked:
        for name, value in _decision_values(event).items():
            sample[name] = value
        sample.save()
    mark("mirrored_ms")
    return [event for _, event in checked], dataset_progress(dataset) if with_progress else None


VIEW_VALUES = ("id", "pc_id", "filepath", f"{MASK_FIELD}.mask_path", "mask_sha256", "score", "score_low_part",
               "score_contributions", "score_components", "disagreement_path", "queue_rank")


def view_batch(dataset, mode: str, count: int, exclude_ids=(), min_score: float = 0.0) -> list[dict]:
    """The next ``count`` undecided samples the review view prefetches, skipping those it holds.

    ``queue``: in queue order (likely failures first). ``triage``: masks scoring at least
    ``min_score``, highest first (the confident ones, judged a page at a time).
    """
    import fiftyone as fo

    field = fo.ViewField
    view = dataset.match(~field("review_decision").exists())
    exclude_ids = [i for i in exclude_ids if isinstance(i, str) and len(i) == 24]
    if exclude_ids:
        view = view.exclude(exclude_ids)
    if mode == "triage":
        view = view.match(field("score") >= float(min_score)).sort_by("score", reverse=True)
    elif mode == "queue":
        view = view.sort_by("queue_rank")
    else:
        raise ReviewError(f"unknown view mode {mode!r} (queue or triage)")
    rows = view.limit(max(0, int(count))).values(list(VIEW_VALUES))
    return [view_item(dict(zip(VIEW_VALUES, values))) for values in zip(*rows)] if rows and rows[0] else []


def _append(path: Path, events: jr.ReviewEvent | list[jr.ReviewEvent]) -> None:
    events = events if isinstance(events, list) else [events]
    try:
        jr.append_events(path, events)
    except OSError as exc:  # disk full, read-only folder: the App must say "not saved"
        names = ", ".join(e.id for e in events[:3]) + (" ..." if len(events) > 3 else "")
        raise ReviewError(f"{names}: not saved, cannot write {path}: {exc.strerror or exc}") from None


def undo_last(dataset, reviewer: str, journal_dir: str | os.PathLike) -> tuple[jr.ReviewEvent | None, str | None, jr.Progress]:
    """Cancel the reviewer's latest live decision; return (undo event, FiftyOne id of its
    sample, progress). The sample falls back to whatever decision applies without it."""
    import fiftyone as fo

    try:
        events, _ = jr.read_journals(journal_dir)
    except jr.JournalError as exc:
        raise ReviewError(f"cannot undo: {exc}") from None
    target = jr.last_undoable(events, reviewer)
    if target is None:
        return None, None, dataset_progress(dataset)
    undo = jr.make_undo(target, reviewer)
    _append(jr.journal_path(journal_dir, reviewer), undo)
    matches = dataset.match(fo.ViewField("pc_id") == target.id)
    sample_id = None
    if len(matches):
        sample = matches.first()
        sample.reload()  # see _checked_sample: the values another process saved, not a stale copy
        sample_id = sample.id
        still = jr.resolve_decisions(events + [undo], {target.id: sample["mask_sha256"]}).get(target.id)
        for name, value in _decision_values(still).items():
            sample[name] = value
        sample.save()
    return undo, sample_id, dataset_progress(dataset)
