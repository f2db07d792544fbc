"""Reading params.yaml with errors that name the offending key.

Each stage declares its section as a pydantic model; a bad value is reported as
``params.yaml: prepare.datasets.1.val_fraction: must be <= 1 (got 3)`` instead of a
traceback deep inside the stage.

Path-valued params carry their rule in their type, so every stage applies the same one:

- ``OutputPath``: where a stage writes. It must lie inside the project (the folder of the
  params file), never be the project itself or ``.git``/``.dvc``; a folder outside is
  allowed only when it is listed in the top-level ``allow_outside_project`` list.
- ``SubPath``: a path inside some root named elsewhere (a folder inside an archive, a
  dataset's images folder): relative, and never climbing out of that root.
- ``InputPath``: where a stage reads. Reading outside the project is fine (an offline
  mirror such as ``../shared/datasets``); it must only be a non-empty path.

The output rule is checked when a section is loaded from a params file (``parse_section``
passes the project root as validation context); a section built in code is not checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

DEFAULT_PARAMS = Path("params.yaml")
ALLOW_OUTSIDE_KEY = "allow_outside_project"

M = TypeVar("M", bound=BaseModel)


class ParamsError(ValueError):
    """A missing or invalid value in params.yaml."""


@dataclass(frozen=True)
class PathRules:
    """Validation context: where the project is and which outside folders outputs may use."""

    root: Path
    cwd: Path
    allowed_outside: tuple[Path, ...] = field(default_factory=tuple)


PROTECTED_NAMES = (".git", ".dvc")


def _lexical(path: Path) -> Path:
    return Path(os.path.normpath(path))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_path(value: str, rules: PathRules | None) -> str:
    """Refuse an output path outside the project (unless allowed) or onto the project itself."""
    if not value or not str(value).strip():
        raise ValueError("must be a non-empty path")
    if rules is None:
        return value
    # Lexical, not resolve(): a symlinked data folder (another disk) stays "inside".
    target = _lexical(rules.cwd / Path(value).expanduser())
    root = _lexical(rules.root)
    if _is_within(target, root):
        if target == root:
            raise ValueError(f"{value!r} is the project folder itself; name a file or folder inside it")
        first = target.relative_to(root).parts[0]
        if first in PROTECTED_NAMES:
            raise ValueError(f"{value!r} is inside {first}/, which no stage may write")
        return value
    for allowed in rules.allowed_outside:
        if _is_within(target, allowed) and target != allowed:
            return value
    raise ValueError(f"{value!r} is outside the project ({root}); stages write only inside it. To allow it, "
                     f"list a folder that holds it under the top-level '{ALLOW_OUTSIDE_KEY}' in the params file")


def check_sub_path(value: str) -> str:
    """A relative path that stays inside the root it is joined to."""
    if value is None:
        return value
    text = str(value).replace("\\", "/")
    if not text.strip():
        raise ValueError("must be a non-empty relative path")
    posix = PurePosixPath(text)
    if posix.is_absolute() or text.startswith("~") or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"{value!r} must be relative to its root, not an absolute path")
    depth = 0
    for part in posix.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise ValueError(f"{value!r} climbs out of its root ('..')")
    return value


def check_input_path(value: str) -> str:
    if not value or not str(value).strip():
        raise ValueError("must be a non-empty path")
    return value


def _output_validator(value: str, info: ValidationInfo) -> str:
    context = info.context if isinstance(info.context, PathRules) else None
    return check_output_path(value, context)


OutputPath = Annotated[str, AfterValidator(_output_validator)]
SubPath = Annotated[str, AfterValidator(check_sub_path)]
InputPath = Annotated[str, AfterValidator(check_input_path)]


class Section(BaseModel):
    """Base for a params section: unknown keys are errors (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


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


def path_rules(params: dict[str, Any], source: str | Path = DEFAULT_PARAMS) -> PathRules:
    """The project root (the params file's folder) and the outside folders the file allows."""
    cwd = Path.cwd()
    root = _lexical(cwd / Path(source).parent)
    allowed = params.get(ALLOW_OUTSIDE_KEY) or []
    if not isinstance(allowed, list) or not all(isinstance(a, str) and a.strip() for a in allowed):
        raise ParamsError(f"{source}: {ALLOW_OUTSIDE_KEY} must be a list of folder paths (got {allowed!r})")
    folders = []
    for entry in allowed:
        folder = _lexical(cwd / Path(entry).expanduser())
        if folder == Path(folder.anchor) or folder == Path.home() or _is_within(root, folder):
            raise ParamsError(f"{source}: {ALLOW_OUTSIDE_KEY}: {entry!r} is too broad (a filesystem root, the home "
                              "folder or a folder holding the project); name a dedicated folder")
        folders.append(folder)
    return PathRules(root=root, cwd=cwd, allowed_outside=tuple(folders))


def parse_section(model: type[M], params: dict[str, Any], key: str, source: str | Path = DEFAULT_PARAMS) -> M:
    """Validate ``params[key]`` against ``model``; raise ParamsError naming the bad key."""
    if key not in params:
        raise ParamsError(f"{source}: missing section '{key}'")
    raw = params[key]
    if raw is None:
        raw = {}
    try:
        return model.model_validate(raw, context=path_rules(params, source))
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
