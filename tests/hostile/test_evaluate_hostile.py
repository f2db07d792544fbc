"""Hostile checkpoints and params for ``evaluate``, ``complexity`` and ``compare`` (issue "Hostile input").

A checkpoint is input like any other: its saved builder config and input size are checked
before a network is built from them, so a foreign or edited file is one line naming the
file and the key (defect 5). Params are checked when loaded: devices, splits, finite
numbers, registered architectures, and output paths that stay in the project (the CLI
outputs of ``complexity`` included). Text outputs carry no absolute paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pipeline.checkpoint import save_checkpoint
from pipeline.stages.complexity import ComplexityParams
from pipeline.stages.complexity import main as complexity_main
from pipeline.stages.compare import CompareParams
from pipeline.stages.compare import main as compare_main
from pipeline.stages.evaluate import EvaluateParams, main
from pipeline.images import write_image, write_mask_png
from pipeline.manifest import ManifestRow, to_frame
from pipeline.models import MODELS, register
from pipeline.params import ParamsError, parse_section
from params_helpers import quick_section, write_params as write_quick_params


class BrightNet(nn.Module):
    """Stand-in (tests only): person = bright pixels."""

    def __init__(self, num_classes: int = 1, gain: float = 1.0):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.fill_(gain)
            self.conv.bias.fill_(0.0)

    def forward(self, x):
        return self.conv(x)


class NeedsLargeInput(BrightNet):
    """Stand-in (tests only) for a network with a minimum input size (DeconvNet needs 32 px)."""

    def forward(self, x):
        if min(x.shape[-2:]) < 64:
            raise ValueError(f"needs inputs of at least 64x64 (got {tuple(x.shape[-2:])})")
        return super().forward(x)


if "hostile_bright" not in MODELS:
    register("hostile_bright")(lambda num_classes=1, gain=1.0: BrightNet(num_classes, gain))
    register("hostile_needs_64px")(lambda num_classes=1: NeedsLargeInput(num_classes))


def good_checkpoint(**changes) -> dict:
    state = {"arch": "hostile_bright", "config": {"gain": 1.0}, "model": BrightNet().state_dict(), "input_size": 32}
    state.update(changes)
    return state


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious.txt").write_text("do not touch")
    prepared = root / "data" / "prepared"
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["test", "test", "train"]):
        mask = np.zeros((40, 30), dtype=bool)
        mask[6:34, 5:24 - i] = True
        image = rng.integers(0, 40, size=(40, 30, 3), dtype=np.uint8)
        image[mask] = 230
        key = f"{i:05d}"
        write_image(prepared / "images" / "eg1800" / f"{key}.png", image)
        write_mask_png(prepared / "masks" / "eg1800" / f"{key}.png", mask)
        rows.append(ManifestRow(id=f"eg1800/{key}", source="eg1800", split=split, image=f"images/eg1800/{key}.png",
                                mask=f"masks/eg1800/{key}.png", width=30, height=40))
    to_frame(rows).to_csv(prepared / "manifest.csv", index=False)
    monkeypatch.chdir(root)
    write_params(root)
    save_checkpoint(root / "models" / "hostile_bright" / "model.pt", good_checkpoint())
    return root


def write_params(root: Path, paths: dict | None = None, **evaluate) -> None:
    write_quick_params(root / "params.yaml", {
        "paths": paths or {},
        "train": {"archs": ["hostile_bright"]},
        "evaluate": {"batch_size": 2, "workers": 0, **evaluate},
    })


def run(capsys, *argv) -> tuple[int, str]:
    code = main(["--params", "params.yaml", "--quiet", *argv])
    return code, capsys.readouterr().err


def assert_one_line(err: str) -> None:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def outside_untouched(root: Path) -> bool:
    return sorted(p.name for p in (root.parent / "outside").iterdir()) == ["precious.txt"]


# ---------------------------------------------------------------- checkpoints (defect 5)


def test_the_good_checkpoint_evaluates(project, capsys):
    code, err = run(capsys)
    assert code == 0, err
    assert json.loads((project / "metrics" / "eval" / "hostile_bright.json").read_text())["n_images"] == 2


@pytest.mark.parametrize("config, key", [
    ({"gain": 1.0, "pp": 2}, "config.pp: unknown argument of hostile_bright (known: gain, num_classes)"),
    ({"num_classes": 0}, "config.num_classes: "),
    ({"num_classes": "1"}, "config.num_classes: "),
    (["gain", 1.0], "config must be a mapping"),
    ({1: 2}, "config must be a mapping"),
])
def test_a_checkpoint_config_the_builder_does_not_take_is_one_line(project, capsys, config, key):
    save_checkpoint(project / "models" / "hostile_bright" / "model.pt", good_checkpoint(config=config))
    code, err = run(capsys)
    assert code == 2
    assert str(Path("models/hostile_bright/model.pt")) in err and key in err, err
    assert_one_line(err)
    assert not (project / "metrics").exists() and not (project / "models" / "hostile_bright" / "per_image.csv").exists()


@pytest.mark.parametrize("size", ["x", -5, 0, 10**6, 2.5, True])
def test_a_checkpoint_input_size_out_of_range_is_one_line(project, capsys, size):
    save_checkpoint(project / "models" / "hostile_bright" / "model.pt", good_checkpoint(input_size=size))
    code, err = run(capsys)
    assert code == 2 and "input_size must be an integer" in err, err
    assert_one_line(err)


# ---------------------------------------------------------------- params


@pytest.mark.parametrize("values, key", [
    ({"device": "cdua"}, "evaluate.device"),
    ({"split": "tset"}, "evaluate.split"),
    ({"source": ""}, "evaluate.source"),
    ({"boundary_tolerance_px": float("inf")}, "evaluate.boundary_tolerance_px"),
    ({"threads": 10**6}, "evaluate.threads"),
    ({"workers": 10**4}, "evaluate.workers"),
    ({"prepared_dir": "data/prepared"}, "evaluate.prepared_dir"),  # paths live in `paths` only: a typo now
])
def test_hostile_evaluate_values_are_refused_at_load(values, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.") + ":"):
        parse_section(EvaluateParams, {"evaluate": quick_section("evaluate", **values)}, "evaluate", "params.yaml")


def test_an_empty_prepared_path_is_refused(project, capsys):
    write_params(project, paths={"prepared": ""})
    code, err = run(capsys)
    assert code == 2 and "paths.prepared: " in err, err


@pytest.mark.parametrize("key", ["models", "metrics"])
def test_evaluate_outputs_outside_the_project_are_refused(project, capsys, key):
    for value in ("/elsewhere", str(project.parent / "outside" / "x"), "../outside/x"):
        write_params(project, paths={key: value})
        code, err = run(capsys)
        assert code == 2 and f"paths.{key}: " in err and "outside the project" in err, err
    assert outside_untouched(project)


def test_an_unknown_source_names_what_the_manifest_holds(project, capsys):
    write_params(project, source="eg180")
    code, err = run(capsys)
    assert code == 2 and "no labelled rows of source 'eg180'" in err and "eg1800/test, eg1800/train" in err
    assert_one_line(err)


def test_an_unknown_architecture_in_train_archs_is_one_line(project, capsys):
    write_params(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["archs"] = ["hostile_brigth"]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    code, err = run(capsys)
    assert code == 2 and "unknown architecture(s) ['hostile_brigth']" in err
    assert_one_line(err)


def test_train_and_evaluate_share_one_device_resolver():
    import pipeline.stages.evaluate
    import pipeline.stages.train
    from pipeline.devices import resolve_device

    assert pipeline.stages.train.resolve_device is resolve_device
    assert pipeline.stages.evaluate.resolve_device is resolve_device


def test_evaluate_text_outputs_carry_no_absolute_path(project, capsys):
    write_params(project, paths={"prepared": str(project / "data" / "prepared")})
    code, err = run(capsys)
    assert code == 0, err
    for path in (project / "metrics" / "eval" / "hostile_bright.json",
                 project / "models" / "hostile_bright" / "per_image.csv"):
        assert str(project.parent) not in path.read_text(), path


# ---------------------------------------------------------------- complexity


@pytest.mark.parametrize("values, key", [
    ({"architectures": ["extremc3net"]}, "complexity.architectures.0"),
    ({"threads": 10**6}, "complexity.threads"),
    # was accepted, then a traceback from the FLOP count in measure
    ({"architectures": ["hostile_needs_64px"], "input_size": 32}, "complexity: Value error, input_size 32"),
])
def test_hostile_complexity_values_are_refused_at_load(values, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.") + ":"):
        parse_section(ComplexityParams, {"complexity": quick_section("complexity", **values)}, "complexity",
                      "params.yaml")


def test_complexity_outputs_outside_the_project_are_refused(project, capsys):
    write_quick_params(project / "params.yaml", {"complexity": {
        "architectures": ["extremec3net_stage1"], "input_size": 32, "latency_form": "train",
        "latency_runtime": "torch", "latency_runs": 1, "warmup_runs": 0, "threads": 1}})
    outside = project.parent / "outside"
    for option in ("--metrics", "--table"):
        for value in (str(outside / "c.out"), "../outside/c.out"):
            code = complexity_main(["--params", "params.yaml", "--quiet", option, value])
            err = capsys.readouterr().err
            assert code == 2 and f"complexity {option}: " in err and "outside the project" in err, err
    assert outside_untouched(project)
    assert complexity_main(["--params", "params.yaml", "--quiet"]) == 0  # the defaults are inside
    for name in ("complexity.json", "complexity.csv"):
        assert str(project.parent) not in (project / "metrics" / name).read_text()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["paths"]["metrics"] = "../outside/metrics"  # the default follows paths.metrics, checked like it
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    code = complexity_main(["--params", "params.yaml", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "paths.metrics: " in err and "outside the project" in err, err
    assert outside_untouched(project)


# ---------------------------------------------------------------- compare


@pytest.mark.parametrize("values, key", [
    ({"architectures": ["extremc3net"]}, "compare.architectures.0"),
    ({"architectures": ["extremec3net", "extremec3net"]}, "compare.architectures"),
    ({"architectures": ["extremec3net"], "out_dir": "reports/compare"}, "compare.out_dir"),  # now `paths` only
    ({"architectures": []}, "compare.architectures"),
])
def test_hostile_compare_values_are_refused_at_load(values, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.") + ":"):
        parse_section(CompareParams, {"compare": values}, "compare", "params.yaml")


@pytest.mark.parametrize("key, value", [("reports", "/elsewhere"), ("metrics", "../compare"),
                                        ("reports", "../outside/x")])
def test_compare_outputs_outside_the_project_are_refused(project, capsys, key, value):
    write_quick_params(project / "params.yaml", {"paths": {key: value}, "compare": {"architectures": ["extremec3net"]}})
    code = compare_main(["--params", "params.yaml", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"paths.{key}: " in err and "outside the project" in err, err
    assert outside_untouched(project)


def test_compare_text_outputs_carry_no_absolute_path(project, capsys):
    figures = {"params": 37_738, "flops_all_ops": 0.286, "flops_espnetv2": 0.128, "latency_ms": 3.0}
    (project / "metrics" / "eval").mkdir(parents=True)
    (project / "metrics" / "complexity.json").write_text(json.dumps({"extremec3net": figures}))
    (project / "metrics" / "eval" / "extremec3net.json").write_text(json.dumps({"miou": 90.0}))
    write_quick_params(project / "params.yaml", {"paths": {"metrics": str(project / "metrics")},
                                                 "compare": {"architectures": ["extremec3net"], "peers": []}})
    assert compare_main(["--params", "params.yaml"]) == 0
    for path in ((project / "reports" / "compare").glob("*.*")):
        if path.suffix in (".csv", ".md"):
            assert str(project.parent) not in path.read_text(), path
    assert str(project.parent) not in (project / "metrics" / "compare.json").read_text()
