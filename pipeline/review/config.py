"""The ``review`` params section, shared by ``review`` and ``export-reviews``.

Both commands must agree on where the pool, the journals and the exported file are, so
they read one section; only the paths are stage dependencies in dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pipeline.params import Section

# The FiftyOne plugin (operators + key-binding script) shipped beside this package.
PLUGINS_DIR = Path(__file__).resolve().parents[1] / "review_plugin"
PLUGIN_NAME = "@portrait-curation/review"

# How the `review` command tells the App server (a subprocess that runs the plugin)
# where to write decisions and who is deciding.
ENV_JOURNAL_DIR = "PORTRAIT_REVIEW_JOURNAL_DIR"
ENV_REVIEWER = "PORTRAIT_REVIEW_REVIEWER"
ENV_MIN_SEEN_MS = "PORTRAIT_REVIEW_MIN_SEEN_MS"


class ReviewParams(Section):
    pseudo_dir: str = "data/pseudo"  # canonical pseudo-labelled pool (manifest.csv + scores.csv)
    journal_dir: str = "reviews/journal"  # one append-only <reviewer>.jsonl per reviewer
    decisions_csv: str = "reviews/decisions.csv"  # what export-reviews writes (DVC output)
    dataset_name: str = "portrait-review"  # persistent FiftyOne dataset holding the queue
    address: str = "127.0.0.1"  # the App listens here only
    port: int = Field(default=5151, ge=1, le=65535)
    database_uri: str = ""  # "" = FiftyOne's own database; else a MongoDB URI shared by reviewers
    min_seen_ms: int = Field(default=150, ge=0, le=5000)  # a press sooner after the image appears is ignored
