"""The ``review`` params section, shared by ``review`` and ``export-reviews``.

Both commands must agree on where the pool, the journals and the exported file are, so
they read one section; only the paths are stage dependencies in dvc.yaml.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from typing import Annotated

from pydantic import AfterValidator, Field

from pipeline.params import InputPath, OutputPath, Section

# The FiftyOne plugin (operators + key-binding script) shipped beside this package.
PLUGINS_DIR = Path(__file__).resolve().parents[1] / "review_plugin"
PLUGIN_NAME = "@portrait-curation/review"

# How the `review` command tells the App server (a subprocess that runs the plugin)
# where to write decisions and who is deciding.
ENV_JOURNAL_DIR = "PORTRAIT_REVIEW_JOURNAL_DIR"
ENV_REVIEWER = "PORTRAIT_REVIEW_REVIEWER"
ENV_MIN_SEEN_MS = "PORTRAIT_REVIEW_MIN_SEEN_MS"

# A key press sooner than this after the image is painted is ignored (a double press, or a
# decision on an image not yet seen). The App's script starts with it until the server says.
DEFAULT_MIN_SEEN_MS = 150


def default_reviewer() -> str:
    """Who decides when no --reviewer is given: the login name, never empty."""
    name = os.environ.get(ENV_REVIEWER) or os.environ.get("USER") or ""
    if not name:
        try:
            name = getpass.getuser()
        except Exception:  # no login name in a container: still record something honest
            name = "unknown"
    return name


MONGODB_SCHEMES = ("mongodb://", "mongodb+srv://")


def check_database_uri(value: str) -> str:
    """Empty (FiftyOne's own database) or a MongoDB URI; anything else is a mistake to name now."""
    value = (value or "").strip()
    if value and not value.startswith(MONGODB_SCHEMES):
        raise ValueError(f"must be empty (FiftyOne's own database) or a URI starting with "
                         f"{' or '.join(MONGODB_SCHEMES)}")
    return value


DatabaseUri = Annotated[str, AfterValidator(check_database_uri)]


class ReviewParams(Section):
    pseudo_dir: InputPath = "data/pseudo"  # canonical pseudo-labelled pool (manifest.csv + scores.csv)
    journal_dir: OutputPath = "reviews/journal"  # one append-only <reviewer>.jsonl per reviewer
    decisions_csv: OutputPath = "reviews/decisions.csv"  # what export-reviews writes (DVC output)
    dataset_name: str = Field(default="portrait-review", min_length=1)  # persistent FiftyOne dataset (the queue)
    address: str = Field(default="127.0.0.1", min_length=1)  # the App listens here only
    port: int = Field(default=5151, ge=1, le=65535)
    database_uri: DatabaseUri = ""  # "" = FiftyOne's own database; else a MongoDB URI shared by reviewers
    database_wait_s: float = Field(default=60.0, ge=0, le=3600)  # how long to wait for a slow or busy database
    min_seen_ms: int = Field(default=DEFAULT_MIN_SEEN_MS, ge=0, le=5000)  # a press sooner after the image appears is ignored
