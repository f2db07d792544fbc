"""The ``review`` params section and what the ``review`` command shares with its App server.

The pool, the journals and the decisions file are ``paths.pseudo``, ``paths.journal`` and
``paths.decisions`` (``export-reviews`` reads only those); this section holds what the
manual ``review`` command alone needs: the FiftyOne dataset, the App's address and the
database. The App server is a subprocess that runs the plugin; the command passes it the
journal folder, the reviewer and ``min_seen_ms`` through the environment (``ENV_*``).
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from pipeline.params import Section

# The FiftyOne plugin (operators + key-binding script) shipped beside this package.
PLUGINS_DIR = Path(__file__).resolve().parents[1] / "review_plugin"
PLUGIN_NAME = "@portrait-curation/review"

# How the `review` command tells the App server (a subprocess that runs the plugin)
# where to write decisions, who is deciding and how long an image must be seen.
ENV_JOURNAL_DIR = "PORTRAIT_REVIEW_JOURNAL_DIR"
ENV_REVIEWER = "PORTRAIT_REVIEW_REVIEWER"
ENV_MIN_SEEN_MS = "PORTRAIT_REVIEW_MIN_SEEN_MS"
# The review view's direct decision route (``route.py``), served by the ``review`` process:
# its URL and per-session token, handed to the view with its settings; ENV_ROUTE_OFF=1 starts
# none (the view then decides through the App's operators, as it does when the route is down).
ENV_ROUTE_URL = "PORTRAIT_REVIEW_ROUTE_URL"
ENV_ROUTE_TOKEN = "PORTRAIT_REVIEW_ROUTE_TOKEN"
ENV_ROUTE_OFF = "PORTRAIT_REVIEW_ROUTE_OFF"
# The same values on the dataset (``dataset.info``), for an App server started without them.
INFO_JOURNAL_DIR = "review_journal_dir"
INFO_MIN_SEEN_MS = "review_min_seen_ms"
INFO_VIEW_SETTINGS = "review_view_settings"  # the view's params (prefetch, triage), a dict


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
    dataset_name: str = Field(min_length=1)  # persistent FiftyOne dataset (the queue)
    address: str = Field(min_length=1)  # the App listens here only
    port: int = Field(ge=1, le=65535)
    database_uri: DatabaseUri  # "" = FiftyOne's own database; else a MongoDB URI shared by reviewers
    database_wait_s: float = Field(ge=0, le=3600)  # how long to wait for a slow or busy database
    # A key press sooner than this after the image is painted is ignored (a double press, or
    # a decision on an image not yet seen).
    min_seen_ms: int = Field(ge=0, le=5000)
    # The prefetching review view (docs/review.md): masks held in the browser ahead of the one
    # shown; triage pages show masks scoring at least triage_min_score, each tile at least
    # triage_tile_px CSS pixels tall (an outline error of ~1 % of the height is then ~3-4 px).
    prefetch: int = Field(ge=1, le=64)
    triage_min_score: float = Field(ge=0, le=1)
    triage_tile_px: int = Field(ge=120, le=2000)
