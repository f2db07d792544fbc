"""Checkpoints that survive a kill and refuse to load into the wrong network.

A checkpoint is a dict saved with ``torch.save``: ``arch`` (registry name), ``config``
(the builder kwargs), ``model`` (state_dict) and, for resumable training, ``optimizer``,
``epoch``, ``stage``, ``rng`` and anything else the trainer keeps. Only plain tensors and
containers go in, so ``torch.load(..., weights_only=True)`` can read it back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_path


class CheckpointError(RuntimeError):
    """A checkpoint that is unreadable or belongs to another architecture."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a crash mid-save leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, *, expected_arch: str | None = None,
                    expected_config: dict | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, foreign objects
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a portrait-curation checkpoint (no 'model' entry)")
    arch = state.get("arch")
    if expected_arch is not None and arch != expected_arch:
        raise CheckpointError(f"{path}: checkpoint is for architecture {arch!r}, but {expected_arch!r} is configured")
    if expected_config is not None:
        saved = state.get("config", {})
        diff = {k: (saved.get(k), v) for k, v in expected_config.items() if saved.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs configured {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"{path}: checkpoint does not match the configured model ({details})")
    return state


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike = "checkpoint") -> None:
    """Load ``state['model']`` strictly, turning shape mismatches into a clear error."""
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"{path}: weights do not fit the configured network: {' '.join(first)}") from None
