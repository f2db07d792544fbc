"""The three profiles (quick = params.yaml, cpu, paper) are complete, valid and alike in keys.

params.yaml is the one source of every value the code reads: no params model has a default
of its own (so no code default can silently disagree with a profile), every profile sets
every key, and the cpu and paper profiles differ from quick only in values, never in keys,
so a key added to one is added to all.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline.params import parse_section
from stage_table import all_sections

REPO = Path(__file__).resolve().parents[1]
PROFILES = {"quick": REPO / "params.yaml", "cpu": REPO / "profiles" / "cpu.yaml", "paper": REPO / "profiles" / "paper.yaml"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def key_paths(value, prefix: str = "") -> set[str]:
    """Every mapping key, dotted; lists are values (their length may differ between profiles)."""
    if not isinstance(value, dict):
        return set()
    out = set()
    for key, inner in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.add(name)
        out |= key_paths(inner, name)
    return out


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_section_of_every_profile_loads(profile, monkeypatch):
    monkeypatch.chdir(REPO)  # paths are checked against the project the profile belongs to
    params = _load(PROFILES[profile])
    for section, model in all_sections().items():
        parse_section(model, params, section, "params.yaml")


@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_profiles_differ_from_quick_only_in_values(profile):
    quick, other = key_paths(_load(PROFILES["quick"])), key_paths(_load(PROFILES[profile]))
    assert other - quick == set(), f"{profile} has keys quick lacks"
    assert quick - other == set(), f"{profile} lacks keys of quick"


def _models_inside(annotation):
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            yield arg


def _sections_with_defaults(model: type[BaseModel], where: str) -> list[str]:
    found = []
    for name, info in model.model_fields.items():
        if not info.is_required():
            found.append(f"{where}.{name}")
        # nested sections (a mapping in params) are required too; records inside lists
        # (a dataset spec, a data source) may keep defaults for optional per-item options
        if typing.get_origin(info.annotation) not in (list, tuple, dict):
            for inner in _models_inside(info.annotation):
                found += _sections_with_defaults(inner, f"{where}.{name}")
    return found


def test_no_params_model_has_a_default_of_its_own():
    defaults = [d for section, model in all_sections().items() for d in _sections_with_defaults(model, section)]
    assert not defaults, f"these keys have code defaults; params.yaml must be their only source: {defaults}"


def test_the_paper_profile_is_the_papers_recipe():
    paper = _load(PROFILES["paper"])
    settings = paper["train"]["settings"]
    assert settings["epochs"] == 300 and settings["batch_size"] == 60  # 300 + 300 epochs, batch 60
    assert settings["max_steps_per_epoch"] == 0 and settings["max_val_images"] == 0  # whole data sets
    assert paper["teacher"]["encoder_name"] == "se_resnext50_32x4d" and paper["teacher"]["input_size"] == 512
    assert paper["teacher"]["max_train_images"] is None and paper["pseudo_label"]["max_images"] is None
    assert paper["crop_portraits"]["limit"] == 0
    assert "extremec3net" in paper["train"]["archs"]


def _run_profile_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_profile", REPO / "scripts" / "run_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_profile_runs_as_one_dvc_experiment_setting_only_what_it_changes():
    run_profile = _run_profile_module()
    quick = {"train": {"archs": ["a"], "model_kwargs": {"net": {"w": 1}}, "settings": {"epochs": 2, "lr": 0.1}},
             "paths": {"raw": "data/raw"}}
    paper = {"train": {"archs": ["a", "b"], "model_kwargs": {"net": {"w": 2}}, "settings": {"epochs": 300, "lr": 0.1}},
             "paths": {"raw": "data/raw"}}
    changes = run_profile.changed_values(quick, paper)
    assert changes == [("train.archs", ["a", "b"]), ("train.model_kwargs.net.w", 2),
                       ("train.settings.epochs", 300)]
    command = run_profile.dvc_command("paper", changes)
    assert command[:6] == ["dvc", "exp", "run", "--temp", "-n", "paper"]
    assert "train.settings.epochs=300" in command and 'train.archs=["a", "b"]' in command
    with pytest.raises(SystemExit, match="differ only in values"):
        run_profile.changed_values(quick, {**paper, "extra": {}})


@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_the_real_profiles_give_a_command(profile, capsys):
    assert _run_profile_module().main([profile, "--print"]) == 0
    assert capsys.readouterr().out.startswith(f"dvc exp run --temp -n {profile}")
