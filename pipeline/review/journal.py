"""The review journal: every decision and undo, appended and fsync'd before the App shows it.

The journal, not the FiftyOne database, is the record: the App caches samples (going back
shows stale values) and a database can be lost, so a decision counts once its line is on
disk. Each reviewer appends to their own ``<reviewer>.jsonl``, so several reviewers never
interleave writes and their files merge in git without conflicts.

Write protocol (why a torn line can never hide an acknowledged one): every event is one
``os.write`` of a whole line ending in "\\n", then fsync, under an exclusive lock; only then
is it acknowledged. So only the *last* line of a file can be cut short (a crash mid-write),
and it then lacks its "\\n". The next append, still under the lock, cuts that tail off and
writes a ``{"event": "repair", ...}`` record holding the torn bytes before its own line. A
reader therefore counts as torn only an unterminated last line and the repair records;
any other line it cannot read was complete, hence acknowledged: that is corruption, and it
is reported with file, line number and reason instead of being skipped.

Schema: every line carries ``"v"``, the schema's major version (``SCHEMA_VERSION``).
Lines without it were written before versioning (version 0, same keys as version 1) and
are read as before. Within a major version changes are additive: keys this version does
not know (e.g. an auto-accept tool's ``threshold`` or ``evidence``) are read and kept in
``ReviewEvent.extra``, never applied. A line of a newer major version, or one missing a
required key, is an error. (Unversioned lines have no later keys, so an unknown key there
is a typo and an error.) Journals written by the pre-versioning code may hold a torn line
that the old code terminated with a bare "\\n"; before a file's first versioned line, an
unreadable line that stops short of its closing "}" is taken as such a torn write.

Resolution rules (pure functions below):

- an ``undo`` event cancels exactly one earlier decision event (``undoes`` = its event id);
- a decision is tied to the ``mask_sha256`` it judged; for the current mask of an id the
  latest live decision *on that hash* applies. Decisions on other hashes (pseudo_label
  re-ran) stay in the journal as history and are never applied;
- "latest" is by ``decided_at`` as a point in time (ISO 8601 with a timezone, any offset),
  then reviewer, then position in the file.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import math
import os
import re
import statistics
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipeline.errors import StageError

DECISIONS = ("accept", "reject")
JOURNAL_SUFFIX = ".jsonl"
SCHEMA_VERSION = 1  # the major version this code writes
READABLE_VERSIONS = (0, 1)  # 0: lines written before the schema was versioned (no "v")
EVENT_TYPES = ("decision", "undo")
REPAIR_EVENT = "repair"  # written by append_event in place of a torn last line

# The keys of version 0 and 1; later minor versions may add others (kept in ``extra``).
BASE_KEYS = ("event", "event_id", "id", "reviewer", "decided_at", "decision", "mask_sha256",
             "seconds_on_screen", "undoes", "via")
REQUIRED_KEYS = {"decision": ("event_id", "id", "reviewer", "decided_at", "decision", "mask_sha256"),
                 "undo": ("event_id", "id", "reviewer", "decided_at", "undoes")}
_TEXT_KEYS = ("event_id", "id", "reviewer", "decided_at", "decision", "mask_sha256", "undoes", "via")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_SECONDS = 86400.0
_TORN_TEXT_LIMIT = 2000  # characters of a torn tail kept in its repair record

_write_lock = threading.Lock()


class JournalError(StageError, ValueError):
    """A journal that cannot be read as written (not a torn last line): reported, never skipped."""


def parse_timestamp(text: str) -> datetime:
    """``decided_at`` as an aware UTC datetime; ValueError unless ISO 8601 with a timezone."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"decided_at must be an ISO 8601 time with a timezone, got {text!r}")
    return _parse_timestamp(text.strip())


@functools.lru_cache(maxsize=65536)
def _parse_timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"decided_at {text!r} is not an ISO 8601 time (e.g. 2026-01-01T09:30:00Z)") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"decided_at {text!r} has no timezone (add Z or an offset such as +01:00)")
    return moment.astimezone(timezone.utc)


def format_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    return format_utc(datetime.now(timezone.utc))


@dataclass(frozen=True)
class ReviewEvent:
    event: str  # "decision" or "undo"
    event_id: str
    id: str  # manifest id of the sample ("<source>/<key>")
    reviewer: str  # a person, or a tool named like "auto:<rule>"
    decided_at: str  # ISO 8601 with a timezone, as written (utc_now() writes UTC with "Z")
    decision: str = ""  # accept / reject (decision events)
    mask_sha256: str = ""  # the mask the reviewer judged
    seconds_on_screen: float | None = None  # None when unknown (e.g. decided by a plain button)
    undoes: str = ""  # event_id of the cancelled decision (undo events)
    via: str = ""  # key, click, button: how the decision was given
    order: int = 0  # position in its file; set when read, never written
    version: int = field(default=SCHEMA_VERSION, compare=False)  # schema major version of the line read
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)  # keys of later versions, kept as read

    def __post_init__(self):
        parse_timestamp(self.decided_at)  # refuse garbage when built, not when compared

    @property
    def time(self) -> datetime:
        """When it was decided, in UTC (compare these, never the text)."""
        return parse_timestamp(self.decided_at)

    @property
    def decided_at_utc(self) -> str:
        return format_utc(self.time)

    def to_json_line(self) -> str:
        record = {**self.extra}
        record.update({key: getattr(self, key) for key in BASE_KEYS})
        record["v"] = SCHEMA_VERSION
        return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"


def new_event_id() -> str:
    return uuid.uuid4().hex


def make_decision(sample_id: str, decision: str, mask_sha256: str, reviewer: str,
                  seconds_on_screen: float | None = None, via: str = "", decided_at: str | None = None,
                  extra: Mapping[str, Any] | None = None) -> ReviewEvent:
    """A decision event; ``extra`` holds additional keys (e.g. an auto-accept rule's evidence)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    if not mask_sha256:
        raise ValueError(f"{sample_id}: a decision must name the mask_sha256 it judged")
    if seconds_on_screen is not None:
        seconds_on_screen = float(seconds_on_screen)
        if not (0.0 <= seconds_on_screen < _MAX_SECONDS):  # NaN fails too
            seconds_on_screen = None
        else:
            seconds_on_screen = round(seconds_on_screen, 3)
    extra = dict(extra or {})
    clash = sorted(set(extra) & (set(BASE_KEYS) | {"v"}))
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite the journal's own keys")
    json.dumps(extra, allow_nan=False)  # must be writable as JSON (TypeError/ValueError otherwise)
    return ReviewEvent(event="decision", event_id=new_event_id(), id=sample_id, reviewer=reviewer,
                       decided_at=decided_at or utc_now(), decision=decision, mask_sha256=mask_sha256,
                       seconds_on_screen=seconds_on_screen, via=via, extra=extra)


def make_undo(cancelled: ReviewEvent, reviewer: str, decided_at: str | None = None) -> ReviewEvent:
    return ReviewEvent(event="undo", event_id=new_event_id(), id=cancelled.id, reviewer=reviewer,
                       decided_at=decided_at or utc_now(), mask_sha256=cancelled.mask_sha256,
                       undoes=cancelled.event_id)


def journal_path(journal_dir: str | os.PathLike, reviewer: str) -> Path:
    safe = "".join(c if (c.isalnum() or c in "-_.@") else "_" for c in reviewer).strip(".") or "_"
    return Path(journal_dir) / f"{safe}{JOURNAL_SUFFIX}"


# --------------------------------------------------------------------------- writing


def append_event(path: str | os.PathLike, event: ReviewEvent) -> None:
    """Append one line and fsync it: when this returns, the event survives a crash."""
    append_events(path, [event])


def append_events(path: str | os.PathLike, events: Iterable[ReviewEvent]) -> None:
    """Append several lines with one fsync (a triage page): all of them survive a crash once
    this returns; a crash before that may leave some or none (never half a line: see
    ``_repair_torn_tail``)."""
    events = list(events)
    if not events:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(event.to_json_line().encode("utf-8") for event in events)
    with _write_lock:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, _repair_torn_tail(fd, where=str(path)) + data)
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(f"could not append to the journal (wrote {written} bytes)")
        view = view[written:]


def _repair_torn_tail(fd: int, where: str) -> bytes:
    """What to write before the next line when the file does not end with "\\n".

    The unterminated tail is a write cut short by a crash, never acknowledged. A tail that
    is nevertheless a whole valid record just gets its "\\n"; otherwise the tail is cut off
    and replaced by a repair record holding it, so that every line before the last one in
    the file is complete and any unreadable one there is corruption.
    """
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return b""
    start = _start_of_last_line(fd, size)
    tail = os.pread(fd, size - start, start)
    try:
        _event_from_record(json.loads(tail.decode("utf-8")), order=0)
        return b"\n"
    except (ValueError, RecursionError, _LineProblem):  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        pass
    os.ftruncate(fd, start)
    text = tail.decode("utf-8", errors="replace")
    record = {"event": REPAIR_EVENT, "v": SCHEMA_VERSION, "repaired_at": utc_now(), "torn_bytes": len(tail),
              "torn_sha256": hashlib.sha256(tail).hexdigest(), "torn_text": text[:_TORN_TEXT_LIMIT]}
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def _start_of_last_line(fd: int, size: int, block: int = 4096) -> int:
    end = size
    while end > 0:
        begin = max(0, end - block)
        chunk = os.pread(fd, end - begin, begin)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        end = begin
    return 0


# --------------------------------------------------------------------------- reading


class _LineProblem(Exception):
    """Why one line cannot be read (becomes part of a JournalError naming file and line)."""


def _schema_version(record: dict) -> int:
    if "v" not in record:
        return 0
    value = record["v"]
    major = None
    if isinstance(value, int) and not isinstance(value, bool):
        major = value
    elif isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        major = int(value.strip().split(".")[0])
    if major is None or major < 0:
        raise _LineProblem(f"schema version \"v\" must be a whole number, got {value!r}")
    if major not in READABLE_VERSIONS:
        raise _LineProblem(f"written with journal schema version {value!r}, newer than this portrait-curation "
                           f"reads (versions {READABLE_VERSIONS[0]}-{READABLE_VERSIONS[-1]}); upgrade "
                           "portrait-curation to read it")
    return major


def _event_from_record(record: Any, order: int) -> ReviewEvent | None:
    """The event of one parsed line; None for a repair record; _LineProblem if invalid."""
    if not isinstance(record, dict):
        raise _LineProblem(f"not a JSON object but {type(record).__name__}")
    version = _schema_version(record)
    kind = record.get("event")
    if kind == REPAIR_EVENT and version >= 1:
        return None
    if kind not in EVENT_TYPES:
        raise _LineProblem(f"not a review event: \"event\" is {kind!r} (known: {', '.join(EVENT_TYPES)})")
    unknown = sorted(set(record) - set(BASE_KEYS) - {"v"})
    if unknown and version == 0:
        raise _LineProblem(f"unknown key(s) {unknown} in a line without a schema version (\"v\"); only lines "
                           "of version 1 or later may carry keys of later versions (typo?)")
    missing = [key for key in REQUIRED_KEYS[kind] if record.get(key) in (None, "")]
    if missing:
        raise _LineProblem(f"{kind} event without required key(s) {missing}")
    for key in _TEXT_KEYS:
        if key in record and record[key] is not None and not isinstance(record[key], str):
            raise _LineProblem(f"{key} must be text, got {record[key]!r}")
    if kind == "decision":
        if record["decision"] not in DECISIONS:
            raise _LineProblem(f"decision must be accept or reject, got {record['decision']!r}")
        if not _SHA256.fullmatch(record["mask_sha256"]):
            raise _LineProblem(f"mask_sha256 must be 64 lowercase hex digits, got {record['mask_sha256']!r}")
    seconds = record.get("seconds_on_screen")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or not 0 <= seconds < _MAX_SECONDS:
            raise _LineProblem(f"seconds_on_screen must be empty or seconds in [0, {_MAX_SECONDS:.0f}), "
                               f"got {seconds!r}")
        seconds = float(seconds)
    try:
        parse_timestamp(record["decided_at"])
    except ValueError as exc:
        raise _LineProblem(str(exc)) from None
    values = {key: record.get(key) or "" for key in _TEXT_KEYS}
    return ReviewEvent(event=kind, seconds_on_screen=seconds, order=order, version=version,
                       extra={key: record[key] for key in unknown}, **values)


def _looks_cut_short(text: str) -> bool:
    # A record always ends with "}"; a write cut short stops before it (or is all NULs,
    # what some file systems leave after a crash).
    return not text.strip("\x00").strip() or (text.lstrip("\x00").startswith("{") and not text.endswith("}"))


@dataclass
class JournalRead:
    events: list[ReviewEvent]
    torn: int  # writes cut short by a crash (never acknowledged), skipped
    problems: list[str]  # lines that could not be read: corruption, each "file:line: why"


def parse_journal(data: bytes, where: str = "journal") -> JournalRead:
    """Events of one journal file's bytes, the torn-line count and every unreadable line."""
    events: list[ReviewEvent] = []
    problems: list[str] = []
    torn = 0
    before_versioned = True  # still in lines the pre-versioning code wrote
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        terminated = number < len(lines)  # the last piece is what follows the final "\n"
        text = ""
        try:
            text = raw.decode("utf-8").strip()
            if not text:
                continue
            record = json.loads(text)
        except (ValueError, RecursionError) as exc:  # not UTF-8 or not JSON
            if not text:
                text = raw.decode("utf-8", errors="replace").strip()
            if not terminated:
                torn += 1  # the last line, cut short: never acknowledged
            elif before_versioned and _looks_cut_short(text):
                torn += 1  # cut short, then terminated by the pre-versioning code's bare "\n"
            else:
                reason = f"not UTF-8 text ({exc.reason})" if isinstance(exc, UnicodeDecodeError) else \
                    f"not valid JSON ({exc})" if isinstance(exc, ValueError) else "not valid JSON (nested too deeply)"
                problems.append(f"{where}:{number}: cannot read {_excerpt(text)}: {reason}; only a file's last "
                                "line can be a write cut short by a crash, this complete line is corruption "
                                "(restore the file from git or mend the line by hand)")
            continue
        if isinstance(record, dict) and "v" in record:
            before_versioned = False
        try:
            event = _event_from_record(record, order=number)
        except _LineProblem as exc:
            problems.append(f"{where}:{number}: {exc}: {_excerpt(text)}")
            continue
        if event is None:
            torn += 1  # a repair record stands for one torn line it replaced
        else:
            events.append(event)
    return JournalRead(events, torn, problems)


def _excerpt(text: str, limit: int = 100) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _raise_problems(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more unreadable journal line(s))" if len(problems) > 1 else ""
        raise JournalError(problems[0] + more)


def _read_file(path: Path) -> JournalRead:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"{path}: cannot read the journal: {exc.strerror or exc}") from None
    return parse_journal(data, where=str(path))


def read_journal(path: str | os.PathLike) -> tuple[list[ReviewEvent], int]:
    """A journal's events and how many torn lines were skipped; JournalError on any other
    unreadable line (the first one, with file and line number, and how many more)."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    result = _read_file(path)
    _raise_problems(result.problems)
    return result.events, result.torn


def read_journals(journal_dir: str | os.PathLike) -> tuple[list[ReviewEvent], int]:
    """All reviewers' events (every ``*.jsonl`` in the folder) and the torn-line count."""
    journal_dir = Path(journal_dir)
    events: list[ReviewEvent] = []
    problems: list[str] = []
    torn = 0
    if journal_dir.is_dir():
        for path in sorted(journal_dir.glob(f"*{JOURNAL_SUFFIX}")):
            result = _read_file(path)
            events += result.events
            torn += result.torn
            problems += result.problems
    _raise_problems(problems)
    return events, torn


# --------------------------------------------------------------------------- resolving


def _time_order(event: ReviewEvent) -> tuple:
    return (event.time, event.reviewer, event.order)


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
