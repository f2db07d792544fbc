"""dvc.yaml's code deps are each stage's import closure, and no stage imports another.

A stage that imports a module dvc.yaml does not list would not rerun when that module
changes (a stale result); a listed module it does not import reruns it for nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("stage_deps", REPO / "scripts" / "stage_deps.py")
stage_deps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage_deps)

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
MODULES = stage_deps.stage_modules()


def code_files_covered(deps: list[str]) -> set[str]:
    """Code files (.py/.c under pipeline/) that a list of dvc deps covers."""
    covered: set[str] = set()
    for dep in deps:
        if not dep.startswith("pipeline"):
            continue
        path = REPO / dep
        if path.is_dir():
            covered |= stage_deps.package_files(dep)
        elif path.is_file():
            covered.add(dep)
        else:
            covered.add(f"<missing> {dep}")
    return covered


def drift(stage: str, deps: list[str]) -> tuple[set[str], set[str]]:
    """(imported but not a dep, a dep but not imported) for one stage."""
    needed = stage_deps.closure(MODULES[stage])
    covered = code_files_covered(deps)
    return needed - covered, covered - needed


def _deps(stage: str) -> list[str]:
    return list((STAGES[stage].get("do") or STAGES[stage])["deps"])


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_the_import_closure(stage):
    missing, extra = drift(stage, _deps(stage))
    hint = "run `python scripts/stage_deps.py --write`"
    assert not missing, f"{stage} imports {sorted(missing)} but dvc.yaml does not depend on it; {hint}"
    assert not extra, f"{stage} depends on {sorted(extra)} but never imports it; {hint}"


def test_removing_a_dep_is_caught():
    deps = _deps("train")
    assert "pipeline/losses.py" in deps
    missing, _ = drift("train", [d for d in deps if d != "pipeline/losses.py"])
    assert missing == {"pipeline/losses.py"}
    _, extra = drift("train", deps + ["pipeline/review/journal.py"])
    assert extra == {"pipeline/review/journal.py"}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_stage_imports_another_stage_or_a_tool(stage):
    own = MODULES[stage].replace(".", "/") + ".py"
    others = {f for f in stage_deps.closure(MODULES[stage])
              if (f.startswith("pipeline/stages/") and f not in (own, "pipeline/stages/__init__.py"))
              or (f.startswith("pipeline/tools/") and f != "pipeline/tools/__init__.py")}
    assert not others, f"{stage} ({own}) imports {sorted(others)}: move what they share into the library"


def test_the_manual_tools_import_no_stage():
    tools = sorted(f"pipeline.tools.{p.stem}" for p in (REPO / "pipeline" / "tools").glob("*.py")
                   if p.stem != "__init__")
    assert {"pipeline.tools.review", "pipeline.tools.attributes", "pipeline.tools.segment"} <= set(tools)
    for module in tools:
        stages = {f for f in stage_deps.closure(module) if f.startswith("pipeline/stages/")
                  and f != "pipeline/stages/__init__.py"}
        assert not stages, f"{module} imports {sorted(stages)}"


def test_the_closure_follows_imports_inside_functions_and_the_model_registry():
    files = stage_deps.closure("pipeline.stages.evaluate")
    assert "pipeline/checkpoint.py" in files  # imported inside a function
    assert "pipeline/models/extremec3net.py" in files  # loaded by the registry, no import statement


def test_architecture_names_can_be_dvc_param_keys():
    """train@<arch> depends on train.model_kwargs.<arch>: DVC reads the dots as nesting."""
    from pipeline.models import available_models
    from pipeline.models.registry import register

    assert all("." not in name and "/" not in name for name in available_models())
    with pytest.raises(ValueError, match="without '.'"):
        register("contextnet12_0.25")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for arch in params["train"]["archs"]:
        node = params
        for key in f"train.model_kwargs.{arch}".split("."):
            node = node[key]  # what DVC does with the stage's params entry
