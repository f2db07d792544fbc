"""Stage ``export_reviews``: the decisions that still apply, as the CSV DVC tracks and assemble reads.

Reads only the journals (the people's, ``paths.journal``; the auto-accept rule's,
``paths.quality/auto.jsonl``, where score_pool has run) and the pool on disk
(``paths.pseudo``), no App and no database, so it runs as a DVC stage; writes
``paths.decisions`` and ``<paths.metrics>/reviews.json``. It has no params section of its
own (``review`` is the manual App's). For each pool sample the latest live decision of a
person on its *current* mask is written, else the rule's accept on that mask (a person
always wins over the rule); decisions on masks that have since changed, undone decisions
and ids no longer in the pool are left out. Column ``decided_by`` says ``human`` or
``auto``, ``audit`` marks masks the rule accepted and drew for a person's audit, and the
metrics count people's and the rule's decisions apart (and the audit's agreement). Rows
are sorted by id, times are written in UTC and floats with fixed precision, and no field
holds a path, so exporting the same journals gives the same bytes in any checkout. A
journal line that cannot be read (other than a torn last line) stops the export with the
file and line named: a decision must never be dropped silently.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from typing import Iterable, Mapping

from pipeline.atomic import write_json, write_text
from pipeline.params import load_section
from pipeline.paths import ProjectPaths
from pipeline.quality.outputs import MergedDecisions, check_people, merge_decisions, read_auto_journal
from pipeline.review import journal as jr
from pipeline.review.pool import current_hashes, read_pool
from pipeline.stage import StageError, make_parser, run_main

COLUMNS = ("id", "decision", "mask_sha256", "reviewer", "decided_at", "seconds_on_screen", "decided_by", "audit")
METRICS_NAME = "reviews.json"  # in paths.metrics

# "/x", "~/x", "C:\\x", "\\\\server\\x": what a machine-specific path looks like in a field.
_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")


def decisions_csv_text(resolved: Mapping[str, jr.ReviewEvent] | MergedDecisions) -> str:
    """The decisions file; a plain mapping is people's decisions only."""
    merged = resolved if isinstance(resolved, MergedDecisions) else MergedDecisions(human=dict(resolved), auto={})
    audited = {k for k, e in merged.auto.items() if e.extra.get("audit")}
    applied = merged.applied
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for sample_id in sorted(applied):
        event = applied[sample_id]
        seconds = "" if event.seconds_on_screen is None else f"{event.seconds_on_screen:.3f}"
        row = (sample_id, event.decision, event.mask_sha256, event.reviewer, event.decided_at_utc, seconds,
               "human" if sample_id in merged.human else "auto", "true" if sample_id in audited else "false")
        for column, value in zip(COLUMNS, row):
            if _ABSOLUTE.match(value):
                raise StageError(f"{sample_id}: {column} {value!r} looks like an absolute path; the decisions "
                                 "file must be the same in every checkout (fix the manifest id or reviewer name)")
        writer.writerow(row)
    return buffer.getvalue()


def export_summary(events: Iterable[jr.ReviewEvent], hashes: Mapping[str, str],
                   auto_events: Iterable[jr.ReviewEvent] = ()) -> dict:
    """Counts of what was exported, people's and the rule's decisions apart, and the audit so far."""
    events = list(events)
    merged = merge_decisions(events, list(auto_events), hashes)
    applied = merged.applied
    counts = Counter(e.decision for e in applied.values())
    human = Counter(e.decision for e in merged.human.values())
    auto_applied = [k for k in merged.auto if k not in merged.human]
    audited = [k for k, e in merged.auto.items() if e.extra.get("audit")]
    judged = [k for k in audited if k in merged.human]
    agreed = sum(1 for k in judged if merged.human[k].decision == "accept")
    live = jr.live_decisions(events)
    return {
        "exported": len(applied),
        "accepted": counts.get("accept", 0),
        "rejected": counts.get("reject", 0),
        "human": {"accepted": human.get("accept", 0), "rejected": human.get("reject", 0)},
        "auto": {"accepted": len(auto_applied), "overruled_by_a_person": sum(
            1 for k in merged.auto if k in merged.human and merged.human[k].decision == "reject")},
        "audit": {"audited": len(audited), "decided": len(judged), "agreed": agreed,
                  "precision": round(agreed / len(judged), 6) if judged else None},
        "undone": sum(1 for e in events if e.event == "undo"),
        "on_changed_masks": sum(1 for e in live if e.id in hashes and hashes[e.id] != e.mask_sha256),
        "not_in_pool": sum(1 for e in live if e.id not in hashes),
        "pool": len(hashes),
    }


def export_decisions(pool_dir: str | os.PathLike, journal_dir: str | os.PathLike,
                     quality_dir: str | os.PathLike | None = None) -> tuple[str, dict]:
    """The decisions file's text and the summary, from the pool and the journals on disk."""
    items, warnings = read_pool(pool_dir)
    for warning in warnings[:10]:
        print(f"warning: {warning}")
    hashes = current_hashes(items)
    events, torn = jr.read_journals(journal_dir)
    check_people(events, str(journal_dir))
    if torn:
        print(f"warning: skipped {torn} torn journal line(s) (writes cut short by a crash, never acknowledged)")
    auto_events = read_auto_journal(quality_dir) if quality_dir is not None else []
    merged = merge_decisions(events, auto_events, hashes)
    return decisions_csv_text(merged), export_summary(events, hashes, auto_events)


def _body(args) -> int:
    paths = load_section(ProjectPaths, "paths", args.params)
    text, summary = export_decisions(paths.pseudo, paths.journal, paths.quality)
    write_text(paths.decisions, text)
    write_json(paths.metrics_file(METRICS_NAME), summary)
    print(f"wrote {paths.decisions}: {summary['exported']} decisions for a pool of {summary['pool']}: people "
          f"{summary['human']['accepted']} accept, {summary['human']['rejected']} reject; auto-accepted "
          f"{summary['auto']['accepted']}; audit {summary['audit']['decided']}/{summary['audit']['audited']} judged, "
          f"{summary['audit']['agreed']} agreed; left out: {summary['undone']} undone, "
          f"{summary['on_changed_masks']} on masks that changed since, {summary['not_in_pool']} not in the pool")
    return 0


def main(argv=None) -> int:
    parser = make_parser("export-reviews", __doc__.split("\n\n")[0])
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
