"""Test-wide settings that must exist before any test module imports fiftyone or torch."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# FiftyOne reads its config at import: point it at a throw-away database (about 300 MB
# of MongoDB journal) that is deleted when the test session ends. An explicitly set
# FIFTYONE_DATABASE_URI (an external MongoDB) is respected.
if "FIFTYONE_DATABASE_URI" not in os.environ:
    _db_dir = tempfile.mkdtemp(prefix="pc-tests-fiftyone-db-")
    os.environ["FIFTYONE_DATABASE_DIR"] = _db_dir
    atexit.register(shutil.rmtree, _db_dir, ignore_errors=True)
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# The native kernels (pipeline.native) compile once per session into a throw-away cache.
if "PORTRAIT_CURATION_NATIVE_CACHE" not in os.environ:
    _native_dir = tempfile.mkdtemp(prefix="pc-tests-native-")
    os.environ["PORTRAIT_CURATION_NATIVE_CACHE"] = _native_dir
    atexit.register(shutil.rmtree, _native_dir, ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real datasets beside the checkout (../shared/datasets); skip if absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests run on 2 cores; keep torch from oversubscribing when pytest runs in parallel.
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


# CI (.ci/run) sets PORTRAIT_CURATION_NO_SKIP=browser,realdata: a test with one of these
# markers that skips there (no Chromium, no ../shared) is a failure, so a CI machine that
# lacks what the tests need is noticed instead of passing with the tests left out.
_MUST_RUN = {m.strip() for m in os.environ.get("PORTRAIT_CURATION_NO_SKIP", "").split(",") if m.strip()}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not _MUST_RUN or not report.skipped:
        return
    required = sorted(_MUST_RUN & {mark.name for mark in item.iter_markers()})
    if required:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"skipped where it must run (PORTRAIT_CURATION_NO_SKIP: {', '.join(required)}): "
                           f"{reason}")
