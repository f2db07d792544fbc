"""Reading params.yaml with errors that name the offending key.

Each stage declares its section as a pydantic model; a bad value is reported as
``params.yaml: prepare.datasets.1.val_fraction: must be <= 1 (got 3)`` instead of a
traceback deep inside the stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_PARAMS = Path("params.yaml")

M = TypeVar("M", bound=BaseModel)


class ParamsError(ValueError):
    """A missing or invalid value in params.yaml."""


class Section(BaseModel):
    """Base for a params section: unknown keys are errors (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (run from the project root, or pass --params)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_section(model: type[M], params: dict[str, Any], key: str, source: str | Path = DEFAULT_PARAMS) -> M:
    """Validate ``params[key]`` against ``model``; raise ParamsError naming the bad key."""
    if key not in params:
        raise ParamsError(f"{source}: missing section '{key}'")
    raw = params[key]
    if raw is None:
        raw = {}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(format_validation_error(exc, key, source)) from None


def format_validation_error(exc: ValidationError, prefix: str, source: str | Path) -> str:
    lines = [f"{source}: invalid value(s) in '{prefix}':"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        got = err.get("input")
        got_text = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{got_text}")
    return "\n".join(lines)


def load_section(model: type[M], key: str, path: str | Path = DEFAULT_PARAMS) -> M:
    return parse_section(model, load_params(path), key, path)
