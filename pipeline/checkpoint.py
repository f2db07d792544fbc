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
    """Write ``state`` atomically: a crash mid-save leaves the previous checkpoint intact.

    Saved through a file object: given a path, torch names the archive's inner folder after
    the (random) temporary file name, so the same weights would give different bytes.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


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
    config = state.get("config", {})
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CheckpointError(f"{path}: config must be a mapping of builder argument names to values "
                              f"(got {config!r})")
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


def build_from_checkpoint(state: dict[str, Any], path: str | os.PathLike = "checkpoint") -> torch.nn.Module:
    """The registry network a checkpoint names, built from its saved ``config``.

    The config is checked like params' ``model_kwargs`` first, so a key the builder does not
    take or a value it refuses is one CheckpointError naming the file and the key.
    """
    from pipeline.models.registry import ModelArgumentError, build_model, check_model_kwargs, get_spec

    arch, config = state.get("arch"), dict(state.get("config") or {})
    try:
        get_spec(arch)
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: arch {arch!r} is not a registered architecture") from None
    try:
        check_model_kwargs(arch, config)
        return build_model(arch, **config)
    except ModelArgumentError as exc:
        where = f"config.{exc.argument}" if exc.argument else "config"
        raise CheckpointError(f"{path}: {where}: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: config {config!r} does not build {arch}: {exc}") from None


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike = "checkpoint") -> None:
    """Load ``state['model']`` strictly, turning shape mismatches into a clear error."""
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"{path}: weights do not fit the configured network: {' '.join(first)}") from None
