"""The general rules of issue "Hostile input", applied to every stage at once.

Each rule is checked by walking every stage's params model, so a new path param (or a new
stage) is covered without anyone remembering to add a case:

- every ``OutputPath`` param, set to an absolute path outside the project or to a path
  climbing out of it, stops its stage with exit 2 and touches nothing outside;
- every ``SubPath`` param (a folder inside an archive, a dataset's images folder) refuses
  absolute and climbing values the same way;
- the top-level ``allow_outside_project`` list is the one explicit way out.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import os
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline.cli import COMMANDS
from pipeline.params import ParamsError, _output_validator, check_sub_path, parse_section

REPO = Path(__file__).resolve().parents[2]

from stage_table import STAGE_PARAMS, section_model as _model


def _path_kind(annotation) -> str | None:
    """"output" / "sub" when ``annotation`` (or a member of its union) is OutputPath / SubPath."""
    for arg in (annotation, *typing.get_args(annotation)):
        for meta in getattr(arg, "__metadata__", ()):
            func = getattr(meta, "func", None)
            if func is _output_validator:
                return "output"
            if func is check_sub_path:
                return "sub"
    return None


def _nested_model(annotation):
    """(container, model) for a field holding a model, a list of models or a dict of models."""
    for arg in (annotation, *typing.get_args(annotation)):
        origin = typing.get_origin(arg)
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return "one", arg
        if origin in (list, tuple) and typing.get_args(arg):
            inner = typing.get_args(arg)[0]
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return "list", inner
        if origin is dict and len(typing.get_args(arg)) == 2:
            inner = typing.get_args(arg)[1]
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return "dict", inner
    return None, None


def path_params(model: type[BaseModel], raw: dict, prefix: tuple = ()):
    """(location, kind) of every OutputPath/SubPath param of ``model``, inside ``raw``'s entries."""
    for name, info in model.model_fields.items():
        kind = _path_kind(info.annotation)
        if kind is None and info.metadata:
            kind = _path_kind(typing.Annotated[str, *info.metadata])
        if kind is not None:
            yield prefix + (name,), kind
            continue
        container, inner = _nested_model(info.annotation)
        value = raw.get(name) if isinstance(raw, dict) else None
        if container == "one":
            yield from path_params(inner, value if isinstance(value, dict) else {}, prefix + (name,))
        elif container == "list" and isinstance(value, list) and value:
            yield from path_params(inner, value[0], prefix + (name, 0))
        elif container == "dict" and isinstance(value, dict) and value:
            key = next(iter(value))
            yield from path_params(inner, value[key], prefix + (name, key))


def _set(raw: dict, location: tuple, value) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    for key in location[:-1]:
        node = node[key] if isinstance(key, int) else node.setdefault(key, {})
    node[location[-1]] = value
    return raw


def project_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_every_command_is_covered():
    assert set(STAGE_PARAMS) == set(COMMANDS)


def _cases():
    params = project_params()
    for command, (_, section, _, _) in STAGE_PARAMS.items():
        for location, kind in path_params(_model(command), params.get(section) or {}):
            yield pytest.param(command, location, kind, id=f"{command}:{'.'.join(map(str, location))}")


CASES = list(_cases())


def test_the_walk_finds_the_path_params_of_every_stage():
    commands = {c.values[0] for c in CASES}
    # the stages' own files are in `paths`; what is left in stage sections are folders
    # inside a root (sub-paths) and the outputs of the manual tools
    assert {"download", "prepare", "attributes"} <= commands, commands
    kinds = {c.values[2] for c in CASES}
    assert kinds == {"output", "sub"}


PATH_KEYS = [name for name, info in __import__("pipeline.paths", fromlist=["ProjectPaths"]).ProjectPaths.model_fields.items()
             if _path_kind(typing.Annotated[str, *info.metadata]) == "output"]


def test_every_stage_file_is_in_the_paths_section():
    assert len(PATH_KEYS) >= 14, PATH_KEYS


@pytest.mark.parametrize("key", PATH_KEYS)
def test_a_paths_entry_cannot_leave_the_project(key, hostile_project):
    from pipeline.paths import ProjectPaths

    project, outside = hostile_project
    for value in (str(outside / "sentinel"), "../outside/sentinel", "data/../../outside/x"):
        params = project_params()
        params["paths"] = {**params["paths"], key: value}
        with pytest.raises(ParamsError, match=f"paths.{key}"):
            parse_section(ProjectPaths, params, "paths", "params.yaml")


@pytest.mark.parametrize("command", sorted(STAGE_PARAMS))
def test_every_command_refuses_a_hostile_paths_entry_and_touches_nothing(command, hostile_project, capsys):
    """Each command validates the whole paths section before it does anything."""
    project, outside = hostile_project
    before = _snapshot(outside)
    module, _, _, argv = STAGE_PARAMS[command]
    main = importlib.import_module(module).main
    key = PATH_KEYS[sorted(STAGE_PARAMS).index(command) % len(PATH_KEYS)]
    for value in (str(outside / "sentinel" / "x"), "../outside/sentinel/x"):
        params = project_params()
        params["paths"] = {**params["paths"], key: value}
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        code = main([*argv, "--params", "params.yaml"])
        err = capsys.readouterr().err
        assert code == 2, f"{command} ran with paths.{key}={value!r} (exit {code})"
        assert f"paths.{key}" in err and "Traceback" not in err, err
        assert _snapshot(outside) == before


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def hostile_project(tmp_path, monkeypatch):
    """A project folder beside an outside folder holding a sentinel that must never change."""
    project, outside = tmp_path / "proj", tmp_path / "outside"
    project.mkdir()
    (outside / "sentinel").mkdir(parents=True)
    (outside / "sentinel" / "precious.txt").write_text("do not touch")
    monkeypatch.chdir(project)
    return project, outside


@pytest.mark.parametrize("command,location,kind", CASES)
def test_a_path_param_cannot_leave_the_project(command, location, kind, hostile_project, capsys):
    project, outside = hostile_project
    before = _snapshot(outside)
    module, section, _, argv = STAGE_PARAMS[command]
    main = importlib.import_module(module).main
    values = [str(outside / "sentinel" / "x"), "../outside/sentinel/x"]
    if kind == "sub":
        values.append("a/../../b")
    for value in values:
        params = project_params()
        params[section] = _set(params.get(section) or {}, location, value)
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        code = main([*argv, "--params", "params.yaml"])
        err = capsys.readouterr().err
        key = ".".join(map(str, (section, *location)))
        assert code == 2, f"{command} {key}={value!r} ran (exit {code})"
        assert key in err and "Traceback" not in err, err
        assert _snapshot(outside) == before


def test_output_paths_outside_are_refused_by_the_loader(hostile_project):
    """The rule sits in the type: parsing the section alone refuses it, whatever main does next."""
    from pipeline.paths import ProjectPaths

    project, outside = hostile_project
    params = project_params()
    assert PATH_KEYS
    for key in PATH_KEYS:
        hostile = {**params, "paths": {**params["paths"], key: str(outside / "x")}}
        with pytest.raises(ParamsError, match="outside the project"):
            parse_section(ProjectPaths, hostile, "paths", "params.yaml")


def test_allow_outside_project_is_the_explicit_way_out(hostile_project):
    from pipeline.paths import ProjectPaths

    project, outside = hostile_project
    params = project_params()
    target = str(outside / "exports" / "decisions.csv")
    params["paths"] = {**params["paths"], "decisions": target}
    with pytest.raises(ParamsError, match="allow_outside_project"):
        parse_section(ProjectPaths, params, "paths", "params.yaml")
    params["allow_outside_project"] = [str(outside / "exports")]
    assert parse_section(ProjectPaths, params, "paths", "params.yaml").decisions == target
    for too_broad in ("/", str(project.parent), os.path.expanduser("~")):
        params["allow_outside_project"] = [too_broad]
        with pytest.raises(ParamsError, match="too broad"):
            parse_section(ProjectPaths, params, "paths", "params.yaml")


def test_output_rule_refuses_the_project_itself_and_its_git_folder(hostile_project):
    from pipeline.paths import ProjectPaths

    params = project_params()
    for value, message in ((".", "project folder itself"), (".git/hooks/x", "inside .git"),
                           ("reviews/../../proj", "project folder itself")):
        hostile = {**params, "paths": {**params["paths"], "journal": value}}
        with pytest.raises(ParamsError, match=message):
            parse_section(ProjectPaths, hostile, "paths", "params.yaml")


@pytest.mark.parametrize("value", ["/etc", "../../x", "a/../../b", "~/x", "C:/x", "..\\x"])
def test_sub_path_never_climbs_out(value):
    with pytest.raises(ValueError):
        check_sub_path(value)


@pytest.mark.parametrize("value", ["data", "a/b/../c", "./x", "AutoPortraitMatting-master/data"])
def test_sub_path_accepts_paths_inside(value):
    assert check_sub_path(value) == value
