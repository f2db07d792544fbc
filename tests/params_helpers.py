"""Params for tests: the quick profile (params.yaml) with only what a test changes.

The code has no defaults of its own, so a test names the values it cares about and takes
every other key from the real quick profile, never from a second copy of it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def quick_params() -> dict:
    """A fresh copy of params.yaml (the quick profile)."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def merged(base, changes):
    """``base`` with ``changes`` laid over it: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(changes, dict):
        out = copy.deepcopy(base)
        for key, value in changes.items():
            out[key] = merged(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(changes)


def quick_section(name: str, **changes) -> dict:
    """One section of the quick profile with ``changes`` merged in."""
    return merged(quick_params()[name], changes)


def write_params(path: str | Path, changes: dict | None = None) -> Path:
    """Write the quick profile with ``changes`` (``{section: {key: value}}``) merged in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(merged(quick_params(), changes or {}), sort_keys=False))
    return path
