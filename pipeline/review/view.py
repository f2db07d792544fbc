"""What the prefetching review view (``review_plugin/.../review_view.js``) is sent, and checks on
what it sends back. Pure: no FiftyOne, no files.

The view holds the next several masks in the browser so a key press swaps the screen at once;
the server's part is to hand out batches in queue order and to journal what comes back,
refusing a decision on a mask other than the one shown (the sha256 rule).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.review.journal import DECISIONS

MODES = ("queue", "triage")
MAX_BATCH = 64  # one request's worth of prefetch, whatever the browser asks
MAX_PAGE = 48  # decisions in one triage page request


class RequestError(ValueError):
    """A request from the view that cannot be honoured (names what is wrong)."""


@dataclass(frozen=True)
class ViewSettings:
    """The ``review`` params the view needs (see ``ReviewParams``)."""

    min_seen_ms: int = 150
    prefetch: int = 8
    triage_min_score: float = 0.9
    triage_tile_px: int = 360

    def as_dict(self) -> dict:
        return asdict(self)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def seconds_value(value: Any) -> float | None:
    """Seconds on screen as sent by the view: a finite number >= 0, else unknown (None)."""
    seconds = _number(value)
    return None if seconds is None or seconds < 0 else seconds


def score_parts(contributions: Mapping[str, Any] | None, components: Mapping[str, Any] | None) -> list[dict]:
    """Each score part with its push on the logit (most negative first: why the score is low)
    and the feature's own value; parts without a push keep their value only, after the rest."""
    contributions = contributions or {}
    components = components or {}
    names = list(dict.fromkeys([*contributions, *components]))
    parts = [{"name": name, "push": _number(contributions.get(name)), "value": _number(components.get(name))}
             for name in names]
    return sorted(parts, key=lambda p: (p["push"] is None, p["push"] if p["push"] is not None else 0.0, p["name"]))


def view_item(values: Mapping[str, Any]) -> dict:
    """One prefetchable item from a sample's values (``dataset.VIEW_VALUES``)."""
    score = _number(values.get("score"))
    return {
        "sample_id": str(values["id"]),
        "pc_id": values.get("pc_id") or "",
        "image_path": values.get("filepath") or "",
        "mask_path": values.get("pseudo_mask.mask_path") or "",
        "disagreement_path": values.get("disagreement_path") or None,
        "mask_sha256": values.get("mask_sha256") or "",
        "score": None if score is None else round(score, 4),
        "low_part": values.get("score_low_part") or None,
        "parts": score_parts(values.get("score_contributions"), values.get("score_components")),
    }


def batch_request(params: Mapping[str, Any]) -> tuple[str, int, list[str]]:
    """(mode, count, ids to skip) of a ``view_batch`` request."""
    mode = params.get("mode", "queue")
    if mode not in MODES:
        raise RequestError(f"mode must be one of {MODES}, got {mode!r}")
    count = params.get("count", 8)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise RequestError(f"count must be a whole number >= 0, got {count!r}")
    exclude = params.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(i, str) for i in exclude):
        raise RequestError("exclude must be a list of sample ids")
    return mode, min(count, MAX_BATCH), exclude


def page_request(decisions: Iterable[Any]) -> list[tuple[str, str, str | None, float | None]]:
    """The (sample id, decision, mask sha256 shown, seconds on screen) of a triage page, checked
    whole before anything is written: every sample at most once, every decision accept/reject,
    every one naming the mask it judged."""
    if not isinstance(decisions, list) or not decisions:
        raise RequestError("a page needs a non-empty list of decisions")
    if len(decisions) > MAX_PAGE:
        raise RequestError(f"a page holds at most {MAX_PAGE} decisions, got {len(decisions)}")
    out, seen = [], set()
    for entry in decisions:
        if not isinstance(entry, Mapping):
            raise RequestError(f"each decision must be an object, got {entry!r}")
        sample_id, decision, sha = entry.get("sample_id"), entry.get("decision"), entry.get("mask_sha256")
        if not isinstance(sample_id, str) or not sample_id:
            raise RequestError(f"decision without a sample_id: {dict(entry)!r}")
        if sample_id in seen:
            raise RequestError(f"sample {sample_id} appears twice on one page")
        if decision not in DECISIONS:
            raise RequestError(f"{sample_id}: decision must be accept or reject, got {decision!r}")
        if not isinstance(sha, str) or not sha:
            raise RequestError(f"{sample_id}: the mask_sha256 shown is required (decisions are tied to the mask)")
        seen.add(sample_id)
        out.append((sample_id, decision, sha, seconds_value(entry.get("seconds_on_screen"))))
    return out
