"""The review journal: every decision and undo, appended and fsync'd before the App shows it.

The journal, not the FiftyOne database, is the record: the App caches samples (going back
shows stale values) and a database can be lost, so a decision counts once its line is on
disk. Each reviewer appends to their own ``<reviewer>.jsonl``, so several reviewers never
interleave writes and their files merge in git without conflicts.

Resolution rules (pure functions below):

- an ``undo`` event cancels exactly one earlier decision event (``undoes`` = its event id);
- a decision is tied to the ``mask_sha256`` it judged; for the current mask of an id the
  latest live decision *on that hash* applies. Decisions on other hashes (pseudo_label
  re-ran) stay in the journal as history and are never applied;
- "latest" is by ``decided_at`` (UTC ISO text sorts in time order), then reviewer, then
  position in the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping

DECISIONS = ("accept", "reject")
JOURNAL_SUFFIX = ".jsonl"

_write_lock = threading.Lock()


class JournalError(ValueError):
    """A journal line that cannot be read (not a torn final line: real corruption)."""


@dataclass(frozen=True)
class ReviewEvent:
    event: str  # "decision" or "undo"
    event_id: str
    id: str  # manifest id of the sample ("<source>/<key>")
    reviewer: str
    decided_at: str  # UTC, ISO 8601 with microseconds and "Z"
    decision: str = ""  # accept / reject (decision events)
    mask_sha256: str = ""  # the mask the reviewer judged
    seconds_on_screen: float | None = None  # None when unknown (e.g. decided by a plain button)
    undoes: str = ""  # event_id of the cancelled decision (undo events)
    via: str = ""  # key, click, button: how the decision was given
    order: int = 0  # position in its file; set when read, never written

    def to_json_line(self) -> str:
        record = {k: v for k, v in asdict(self).items() if k != "order"}
        return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_event_id() -> str:
    return uuid.uuid4().hex


def make_decision(sample_id: str, decision: str, mask_sha256: str, reviewer: str,
                  seconds_on_screen: float | None = None, via: str = "", decided_at: str | None = None) -> ReviewEvent:
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    if not mask_sha256:
        raise ValueError(f"{sample_id}: a decision must name the mask_sha256 it judged")
    if seconds_on_screen is not None:
        seconds_on_screen = float(seconds_on_screen)
        if not (0.0 <= seconds_on_screen < 86400.0):  # NaN fails too
            seconds_on_screen = None
        else:
            seconds_on_screen = round(seconds_on_screen, 3)
    return ReviewEvent(event="decision", event_id=new_event_id(), id=sample_id, reviewer=reviewer,
                       decided_at=decided_at or utc_now(), decision=decision, mask_sha256=mask_sha256,
                       seconds_on_screen=seconds_on_screen, via=via)


def make_undo(cancelled: ReviewEvent, reviewer: str, decided_at: str | None = None) -> ReviewEvent:
    return ReviewEvent(event="undo", event_id=new_event_id(), id=cancelled.id, reviewer=reviewer,
                       decided_at=decided_at or utc_now(), mask_sha256=cancelled.mask_sha256,
                       undoes=cancelled.event_id)


def journal_path(journal_dir: str | os.PathLike, reviewer: str) -> Path:
    safe = "".join(c if (c.isalnum() or c in "-_.@") else "_" for c in reviewer).strip(".") or "_"
    return Path(journal_dir) / f"{safe}{JOURNAL_SUFFIX}"


def append_event(path: str | os.PathLike, event: ReviewEvent) -> None:
    """Append one line and fsync it: when this returns, the event survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = event.to_json_line().encode("utf-8")
    with _write_lock:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # two App servers of one reviewer: whole lines only
            _terminate_torn_line(fd)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def _terminate_torn_line(fd: int) -> None:
    # A crash mid-write can leave a last line without "\n"; start ours on a fresh line
    # so the torn one stays isolated (and is skipped when read).
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")


def parse_lines(lines: Iterable[str], where: str = "journal") -> tuple[list[ReviewEvent], int]:
    """Events of a journal's lines and how many torn lines were skipped.

    A line that is not valid JSON is a write cut short by a crash (never acknowledged,
    so nothing is lost by skipping it) when it is the last one or when it was followed by
    a repaired line break; a valid JSON record with wrong content is real corruption.
    """
    events: list[ReviewEvent] = []
    torn = 0
    known = set(ReviewEvent.__dataclass_fields__) - {"order"}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            torn += 1
            continue
        if not isinstance(record, dict) or record.get("event") not in ("decision", "undo"):
            raise JournalError(f"{where}:{number}: not a review event: {text[:120]}")
        unknown = set(record) - known
        if unknown:
            raise JournalError(f"{where}:{number}: unknown keys {sorted(unknown)}")
        try:
            event = ReviewEvent(**record, order=number)
        except TypeError as exc:
            raise JournalError(f"{where}:{number}: {exc}") from None
        if event.event == "decision" and event.decision not in DECISIONS:
            raise JournalError(f"{where}:{number}: decision must be accept or reject, got {event.decision!r}")
        if not event.event_id or not event.id or not event.decided_at:
            raise JournalError(f"{where}:{number}: event_id, id and decided_at are required")
        events.append(event)
    return events, torn


def read_journal(path: str | os.PathLike) -> tuple[list[ReviewEvent], int]:
    path = Path(path)
    if not path.is_file():
        return [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        return parse_lines(fh, where=str(path))


def read_journals(journal_dir: str | os.PathLike) -> tuple[list[ReviewEvent], int]:
    """All reviewers' events (every ``*.jsonl`` in the folder) and the torn-line count."""
    journal_dir = Path(journal_dir)
    events: list[ReviewEvent] = []
    torn = 0
    if journal_dir.is_dir():
        for path in sorted(journal_dir.glob(f"*{JOURNAL_SUFFIX}")):
            file_events, file_torn = read_journal(path)
            events += file_events
            torn += file_torn
    return events, torn


def _time_order(event: ReviewEvent) -> tuple:
    return (event.decided_at, event.reviewer, event.order)


def live_decisions(events: Iterable[ReviewEvent]) -> list[ReviewEvent]:
    """Decision events not cancelled by an undo, in time order."""
    events = list(events)
    cancelled = {e.undoes for e in events if e.event == "undo"}
    return sorted((e for e in events if e.event == "decision" and e.event_id not in cancelled), key=_time_order)


def resolve_decisions(events: Iterable[ReviewEvent], current_hashes: Mapping[str, str]) -> dict[str, ReviewEvent]:
    """The decision that applies to each id's current mask (ids with none are undecided).

    Ids absent from ``current_hashes`` (no longer in the pool) get no decision.
    """
    resolved: dict[str, ReviewEvent] = {}
    for event in live_decisions(events):  # time order: later ones overwrite
        if current_hashes.get(event.id) == event.mask_sha256:
            resolved[event.id] = event
    return resolved


def stale_decisions(events: Iterable[ReviewEvent], current_hashes: Mapping[str, str]) -> dict[str, ReviewEvent]:
    """Per id in the pool, the latest live decision on a mask that has since changed."""
    stale: dict[str, ReviewEvent] = {}
    for event in live_decisions(events):
        current = current_hashes.get(event.id)
        if current is not None and current != event.mask_sha256:
            stale[event.id] = event
    return stale


def last_undoable(events: Iterable[ReviewEvent], reviewer: str) -> ReviewEvent | None:
    """The reviewer's most recent decision that is still live (what "undo" cancels)."""
    mine = [e for e in live_decisions(events) if e.reviewer == reviewer]
    return mine[-1] if mine else None


@dataclass(frozen=True)
class Progress:
    total: int
    accepted: int
    rejected: int
    median_seconds: float | None

    @property
    def reviewed(self) -> int:
        return self.accepted + self.rejected

    @property
    def left(self) -> int:
        return self.total - self.reviewed

    def as_dict(self) -> dict:
        return {"total": self.total, "reviewed": self.reviewed, "accepted": self.accepted,
                "rejected": self.rejected, "left": self.left, "median_seconds": self.median_seconds}

    def describe(self) -> str:
        median = "n/a" if self.median_seconds is None else f"{self.median_seconds:.2f} s"
        return (f"reviewed {self.reviewed}/{self.total} (accepted {self.accepted}, rejected {self.rejected}), "
                f"left {self.left}, median {median} per image")


def progress_of(decisions: Iterable[str | None], seconds: Iterable[float | None], total: int) -> Progress:
    """Counts of current decisions and the median time on screen of the timed ones."""
    decisions = list(decisions)
    timed = [float(s) for s in seconds if s is not None and s == s]
    median = round(statistics.median(timed), 3) if timed else None
    return Progress(total=total, accepted=decisions.count("accept"), rejected=decisions.count("reject"),
                    median_seconds=median)


def progress(resolved: Mapping[str, ReviewEvent], total: int) -> Progress:
    values = list(resolved.values())
    return progress_of([e.decision for e in values], [e.seconds_on_screen for e in values], total)
