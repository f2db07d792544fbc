"""Stage ``export_reviews``: the decisions that still apply, as the CSV DVC tracks and assemble reads.

Reads only the journals (``paths.journal``) and the pool on disk (``paths.pseudo``), no App
and no database, so it runs as a DVC stage; writes ``paths.decisions``. It has no params
section of its own (``review`` is the manual App's). For each pool sample the latest live
decision on its *current* mask is written; decisions on masks that have since changed,
undone decisions and ids no longer in the pool are left out. Rows are sorted by id, times
are written in UTC and floats with fixed precision, and no field holds a path, so exporting
the same journals gives the same bytes in any checkout. A journal line that cannot be read
(other than a torn last line) stops the export with the file and line named: a decision
must never be dropped silently.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from typing import Iterable, Mapping

from pipeline.atomic import write_text
from pipeline.params import load_section
from pipeline.paths import ProjectPaths
from pipeline.review import journal as jr
from pipeline.review.pool import current_hashes, read_pool
from pipeline.stage import StageError, make_parser, run_main

COLUMNS = ("id", "decision", "mask_sha256", "reviewer", "decided_at", "seconds_on_screen")

# "/x", "~/x", "C:\\x", "\\\\server\\x": what a machine-specific path looks like in a field.
_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")


def decisions_csv_text(resolved: Mapping[str, jr.ReviewEvent]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for sample_id in sorted(resolved):
        event = resolved[sample_id]
        seconds = "" if event.seconds_on_screen is None else f"{event.seconds_on_screen:.3f}"
        row = (sample_id, event.decision, event.mask_sha256, event.reviewer, event.decided_at_utc, seconds)
        for column, value in zip(COLUMNS, row):
            if _ABSOLUTE.match(value):
                raise StageError(f"{sample_id}: {column} {value!r} looks like an absolute path; the decisions "
                                 "file must be the same in every checkout (fix the manifest id or reviewer name)")
        writer.writerow(row)
    return buffer.getvalue()


def export_summary(events: Iterable[jr.ReviewEvent], hashes: Mapping[str, str]) -> dict:
    events = list(events)
    resolved = jr.resolve_decisions(events, hashes)
    counts = Counter(e.decision for e in resolved.values())
    live = jr.live_decisions(events)
    return {
        "exported": len(resolved),
        "accepted": counts.get("accept", 0),
        "rejected": counts.get("reject", 0),
        "undone": sum(1 for e in events if e.event == "undo"),
        "on_changed_masks": sum(1 for e in live if e.id in hashes and hashes[e.id] != e.mask_sha256),
        "not_in_pool": sum(1 for e in live if e.id not in hashes),
        "pool": len(hashes),
    }


def export_decisions(pool_dir: str | os.PathLike, journal_dir: str | os.PathLike) -> tuple[str, dict]:
    """The decisions file's text and the summary, from the pool and the journals on disk."""
    items, warnings = read_pool(pool_dir)
    for warning in warnings[:10]:
        print(f"warning: {warning}")
    hashes = current_hashes(items)
    events, torn = jr.read_journals(journal_dir)
    if torn:
        print(f"warning: skipped {torn} torn journal line(s) (writes cut short by a crash, never acknowledged)")
    return decisions_csv_text(jr.resolve_decisions(events, hashes)), export_summary(events, hashes)


def _body(args) -> int:
    paths = load_section(ProjectPaths, "paths", args.params)
    text, summary = export_decisions(paths.pseudo, paths.journal)
    write_text(paths.decisions, text)
    print(f"wrote {paths.decisions}: {summary['exported']} decisions ({summary['accepted']} accept, "
          f"{summary['rejected']} reject) for a pool of {summary['pool']}; left out: {summary['undone']} undone, "
          f"{summary['on_changed_masks']} on masks that changed since, {summary['not_in_pool']} not in the pool")
    return 0


def main(argv=None) -> int:
    parser = make_parser("export-reviews", __doc__.split("\n\n")[0])
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
