"""Hostile params and checkpoints for the ``train`` stage (issue "Hostile input", defects 4 and 5).

Every value of the ``train`` section is checked when the section is loaded, before any data
is read: builder arguments against the builder's signature and by building the network on
the meta device, architectures against the registry, devices, paths, numbers. What only the
data can tell (a validation source the training set lacks, an empty validation set) stops
the stage with one line. The general rule "every builder argument is checked" is applied to
every registered architecture, not only ExtremeC3Net.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from params_helpers import merged, quick_section, write_params
from pipeline.checkpoint import CheckpointError, build_from_checkpoint, save_checkpoint
from pipeline.images import write_image, write_mask_png
from pipeline.manifest import ManifestRow, to_frame
from pipeline.models import MODELS, available_models, build_model, register
from pipeline.models.registry import ModelArgumentError, builder_arguments, check_forward, check_model_kwargs
from pipeline.params import ParamsError, parse_section
from pipeline.stage import StageError
from pipeline.stages.train import TrainParams, TrainSettings, fingerprint, main, split_train_val
from pipeline.training import epoch_order


class PooledBatchNormNet(nn.Module):
    """Stand-in (tests only) with batch norm over a 1x1 map, like BiSeNet's and DeconvNet's:
    it cannot train on a batch of one image."""

    def __init__(self, num_classes: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.BatchNorm2d(4)
        self.classifier = nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        features = self.conv(x)
        return self.classifier(features * self.norm(self.pool(features)))


class SmallNet(nn.Module):
    def __init__(self, num_classes: int = 1, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 1))

    def forward(self, x):
        return self.body(x)


if "hostile_pooled_bn" not in MODELS:
    register("hostile_pooled_bn")(lambda num_classes=1: PooledBatchNormNet(num_classes))
    register("hostile_small")(lambda num_classes=1, width=4: SmallNet(num_classes, width))


def write_set(root: Path, splits: list[str], sources: list[str] | None = None, size=(24, 20)) -> None:
    """A canonical training set: dark images with a bright box that is the person."""
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(splits):
        source = (sources or ["eg1800"] * len(splits))[i]
        h, w = size
        image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=bool)
        mask[4:h - 4, 3:w - 5] = True
        image[mask] = 220
        key = f"{i:05d}"
        write_image(root / "images" / source / f"{key}.png", image)
        write_mask_png(root / "masks" / source / f"{key}.png", mask)
        rows.append(ManifestRow(id=f"{source}/{key}", source=source, split=split, image=f"images/{source}/{key}.png",
                                mask=f"masks/{source}/{key}.png", width=w, height=h))
    to_frame(rows).to_csv(root / "manifest.csv", index=False)


SMALL_SETTINGS = {"input_size": 24, "epochs": 1, "batch_size": 4, "workers": 0, "max_steps_per_epoch": 0,
                  "val_fraction": 0.3, "lr": 0.01, "seed": 0, "device": "cpu",
                  "loss": {"kind": "lovasz", "boundary_weight": 0.5, "boundary_kernel": 3}}


def quick(archs=("hostile_small",), model_kwargs=None, **settings) -> dict:
    """The quick profile's ``train`` section training the small stand-ins, with ``settings`` changed."""
    return {"archs": list(archs), "model_kwargs": {"hostile_small": {}, "hostile_pooled_bn": {}, **(model_kwargs or {})},
            "settings": {**SMALL_SETTINGS, **settings}}


def small_settings(**changes) -> TrainSettings:
    return TrainSettings(**merged(quick_section("train")["settings"], {**SMALL_SETTINGS, **changes}))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project beside an outside folder with a sentinel that must never change."""
    root = tmp_path / "proj"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious.txt").write_text("do not touch")
    root.mkdir()
    monkeypatch.chdir(root)
    write_set(root / "data" / "train_set", ["train"] * 8 + ["train"] * 2, ["eg1800"] * 8 + ["crops"] * 2)
    return root


def run_train(root: Path, capsys, paths: dict | None = None, **values) -> tuple[int, str]:
    write_params(root / "params.yaml", {"paths": paths or {}, "train": quick(**values)})
    code = main(["--params", "params.yaml", "--quiet"])
    return code, capsys.readouterr().err


def parse(values: dict) -> TrainParams:
    """The quick profile's ``train`` section with ``values`` merged in, validated as a stage loads it."""
    return parse_section(TrainParams, {"train": merged(quick_section("train"), values)}, "train", "params.yaml")


def outside_untouched(root: Path) -> bool:
    outside = root.parent / "outside"
    return sorted(p.name for p in outside.iterdir()) == ["precious.txt"]


# ---------------------------------------------------------------- builder arguments (defect 4)


def test_a_misspelt_builder_argument_is_named_with_the_known_ones():
    with pytest.raises(ParamsError) as caught:
        parse({"model_kwargs": {"extremec3net": {"num_classes": 1, "pp": 1}}})
    assert ("train.model_kwargs.extremec3net.pp: unknown argument of extremec3net (known: num_classes, p, q)"
            in str(caught.value))


@pytest.mark.parametrize("value", [-1, 0, "x", 1.5, True, None, 1000])
def test_a_bad_extremec3net_depth_is_refused_naming_the_key(value):
    with pytest.raises(ParamsError, match=r"train\.model_kwargs\.extremec3net\.p: "):
        parse({"model_kwargs": {"extremec3net": {"p": value, "q": 5}}})


@pytest.mark.parametrize("value", [0, -2, 2.0, "two", False])
def test_a_bad_number_of_classes_is_refused(value):
    with pytest.raises(ParamsError, match=r"train\.model_kwargs\.extremec3net\.num_classes: "):
        parse({"model_kwargs": {"extremec3net": {"num_classes": value}}})


def test_kwargs_under_a_misspelt_architecture_are_an_error_not_ignored():
    with pytest.raises(ParamsError, match=r"train\.model_kwargs\.extremc3net: not a registered architecture"):
        parse({"model_kwargs": {"extremc3net": {"p": 2}}})


def test_kwargs_of_an_architecture_that_is_not_trained_are_checked_too():
    # the quick profile keeps kwargs for the full comparison list; a typo there is still a typo
    with pytest.raises(ParamsError, match=r"train\.model_kwargs\.deconvnet\.widht: unknown argument"):
        parse({"model_kwargs": {"deconvnet": {"widht": 0.0625}}})
    with pytest.raises(ParamsError, match=r"train\.model_kwargs\.deconvnet\.width: .*must be a finite number"):
        parse({"model_kwargs": {"deconvnet": {"width": "wide"}}})


def test_kwargs_of_an_architecture_that_is_not_trained_are_not_built(monkeypatch):
    # building (on the meta device) and running every listed network made loading params slow;
    # the ones not trained now have only their argument names and types checked
    import pipeline.models.registry as registry

    built = []
    real = registry._meta_model
    monkeypatch.setattr(registry, "_meta_model", lambda name, kwargs: built.append(name) or real(name, kwargs))
    registry._CHECKED.clear()
    parse({"archs": ["hostile_small"], "model_kwargs": {"hostile_small": {}, "deconvnet": {"width": 0.125}},
           "settings": {"input_size": 32}})
    assert set(built) == {"hostile_small"}
    # a value that does not build is found once that network is trained
    with pytest.raises(ParamsError, match=r"train\.model_kwargs\.deconvnet\.width: "):
        parse({"archs": ["deconvnet"], "model_kwargs": {"deconvnet": {"width": 1e9}}, "settings": {"input_size": 32}})


def test_a_trained_architecture_without_kwargs_is_named():
    with pytest.raises(ParamsError, match=r"train\.archs\.1: hostile_small has no train\.model_kwargs entry"):
        parse_section(TrainParams, {"train": {**quick_section("train"), "archs": ["extremec3net", "hostile_small"]}},
                      "train", "params.yaml")


def test_an_arch_on_the_command_line_needs_kwargs_and_is_checked_at_the_configured_size(project, capsys):
    write_params(project / "params.yaml", {"train": {**quick(), "model_kwargs": {"hostile_small": {}}}})
    assert main(["--params", "params.yaml", "--arch", "hostile_pooled_bn", "--quiet"]) == 2
    assert "--arch hostile_pooled_bn: no train.model_kwargs entry" in capsys.readouterr().err
    write_params(project / "params.yaml", {"train": quick(batch_size=1)})
    assert main(["--params", "params.yaml", "--arch", "hostile_pooled_bn", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--arch hostile_pooled_bn: " in err and "batch of 1 image" in err and "Traceback" not in err
    # kwargs of an architecture not in archs were only name-checked at load: --arch builds them
    write_params(project / "params.yaml", {"train": quick(model_kwargs={"deconvnet": {"width": 1e9}})})
    assert main(["--params", "params.yaml", "--arch", "deconvnet", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--arch deconvnet: train.model_kwargs.deconvnet.width: " in err and len(err.strip().splitlines()) == 1


def test_forwarded_builder_arguments_are_followed_into_the_class():
    # build_contextnet12_quarter(num_classes, **kwargs) -> ContextNet(num_classes, width=0.25, **kwargs)
    assert set(builder_arguments("contextnet12_0p25")) == {"num_classes", "context_scale"}
    with pytest.raises(ModelArgumentError, match="unknown argument of contextnet12_0p25") as caught:
        check_model_kwargs("contextnet12_0p25", {"width": 0.5})  # bound by the builder: passing it again is a TypeError
    assert caught.value.argument == "width"


def test_every_registered_builder_has_resolvable_arguments():
    """The general rule needs every builder's full argument list: no ``**kwargs`` left unresolved."""
    unresolved = [name for name in available_models() if builder_arguments(name) is None]
    assert unresolved == []


@pytest.mark.parametrize("name", [n for n in available_models() if not n.startswith(("hostile_", "test_"))])
def test_every_architecture_refuses_an_unknown_or_ill_typed_argument(name):
    with pytest.raises(ModelArgumentError, match="unknown argument") as caught:
        check_model_kwargs(name, {"no_such_argument": 1})
    assert caught.value.argument == "no_such_argument"
    for value in (0, -1, 1.5, "2", True):
        with pytest.raises(ModelArgumentError) as caught:
            check_model_kwargs(name, {"num_classes": value})
        assert caught.value.argument == "num_classes"
    for argument, parameter in builder_arguments(name).items():
        annotation = str(parameter.annotation)
        if annotation in ("int", "float"):
            with pytest.raises(ModelArgumentError, match="must be"):
                check_model_kwargs(name, {argument: "x"})


@pytest.mark.parametrize("build", [
    lambda: build_model("extremec3net", num_classes=0),
    lambda: build_model("extremec3net_stage1", num_classes=0),
    lambda: build_model("extremec3net", q=1.5),
    lambda: build_model("extremec3net", p=10_000),
    lambda: build_model("portraitnet", num_classes=0),
    lambda: build_model("simple_seg_net", dropout=-0.5),
    lambda: build_model("dilated_fcn2s_vgg16", width=0.0625, dropout=-1.0),
    lambda: build_model("espnet", q=10_000),
])
def test_builders_refuse_values_that_built_a_broken_net_or_stalled(build):
    # before: zero output channels, a silently disabled dropout, or minutes of module construction
    with torch.device("meta"), pytest.raises(ValueError):
        build()


# ---------------------------------------------------------------- networks at the configured size


def test_architectures_are_checked_when_params_load():
    with pytest.raises(ParamsError, match=r"train\.archs\.1: .*unknown architecture 'extremc3net'"):
        parse({"archs": ["portraitnet", "extremc3net"]})
    with pytest.raises(ParamsError, match="more than once"):
        parse({"archs": ["extremec3net", "extremec3net"]})


def test_a_network_that_cannot_run_at_input_size_is_refused_at_load():
    with pytest.raises(ParamsError, match=r"train\.archs\.0: deconvnet does not run .* 16x16.*at least 32x32"):
        parse({"archs": ["deconvnet"], "settings": {"input_size": 16, "loss": {"boundary_kernel": 7}},
               "model_kwargs": {"deconvnet": {"width": 0.0625}}})


def test_a_batch_of_one_is_refused_for_a_network_with_pooled_batch_norm():
    with pytest.raises(ParamsError, match=r"train\.archs\.0: .*batch of 1 image"):
        parse(quick(archs=["hostile_pooled_bn"], batch_size=1))
    assert parse(quick(archs=["hostile_pooled_bn"], batch_size=2)).settings.batch_size == 2
    check_forward("hostile_pooled_bn", {}, 24, batch=1, training=False)  # inference is fine


def test_a_last_batch_of_one_image_is_left_out_of_the_epoch():
    assert len(epoch_order(9, seed=1, limit=None, batch_size=4)) == 8
    assert len(epoch_order(10, seed=1, limit=None, batch_size=4)) == 10
    assert len(epoch_order(1, seed=1, limit=None, batch_size=4)) == 1
    assert sorted(epoch_order(9, seed=1, limit=None)) == list(range(9))  # unchanged without a batch size


def test_training_with_one_image_left_for_the_last_batch_does_not_crash(project, capsys):
    # 5 training images in batches of 4: the last batch held one image, and batch norm over a 1x1
    # map raised "Expected more than 1 value per channel" mid-epoch (a traceback)
    write_set(project / "data" / "train_set", ["train"] * 5 + ["val"] * 2)
    code, err = run_train(project, capsys, archs=["hostile_pooled_bn"], batch_size=4)
    assert code == 0, err
    assert (project / "models" / "hostile_pooled_bn" / "model.pt").is_file()


@pytest.mark.parametrize("values, key", [
    ({"device": "cdua"}, "train.settings.device"),
    ({"lr": float("inf")}, "train.settings.lr"),
    ({"lr": float("nan")}, "train.settings.lr"),
    ({"weight_decay": float("inf")}, "train.settings.weight_decay"),
    ({"loss": {"boundary_weight": float("inf")}}, "train.settings.loss.boundary_weight"),
    ({"loss": {"boundary_kernel": 25}}, "train.settings.loss.boundary_kernel"),
    ({"loss": {"boundary_kernel": 4}}, "train.settings.loss.boundary_kernel"),
    ({"threads": 1_000_000}, "train.settings.threads"),
    ({"workers": 10_000}, "train.settings.workers"),
    ({"input_size": 100_000}, "train.settings.input_size"),
    ({"val_sources": [""]}, "train.settings.val_sources.0"),
    ({"train_set": ""}, "train.settings.train_set"),  # no path keys in the section any more
])
def test_other_hostile_values_are_refused_at_load(values, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.") + ":"):
        parse(quick(**values))


@pytest.mark.parametrize("key", ["models", "metrics", "plots"])
def test_output_folders_outside_the_project_are_refused(project, capsys, key):
    for value in ("/elsewhere/models", str(project.parent / "outside"), "../outside"):
        code, err = run_train(project, capsys, paths={key: value})
        assert code == 2 and f"paths.{key}: " in err and "outside the project" in err, err
        assert "Traceback" not in err
    assert outside_untouched(project)
    assert not (project / "models").exists()


# ---------------------------------------------------------------- validation set (defect 4)


def test_a_validation_source_missing_from_the_training_set_is_an_error(project, capsys):
    code, err = run_train(project, capsys, val_sources=["eg180"])
    assert code == 2
    assert "train.settings.val_sources: ['eg180'] not in the training set" in err and "['crops', 'eg1800']" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (project / "models").exists() and not (project / "metrics").exists()


def test_an_empty_validation_set_is_an_error_unless_allowed(project, capsys):
    code, err = run_train(project, capsys, val_fraction=0.0)
    assert code == 2 and "no validation images" in err and "allow_empty_validation" in err
    assert not (project / "models").exists()
    code, err = run_train(project, capsys, val_fraction=0.0, allow_empty_validation=True)
    assert code == 0, err
    summary = json.loads((project / "metrics" / "train" / "hostile_small.json").read_text())
    assert summary["val_samples"] == 0 and summary["best_val_miou"] is None


def test_split_refuses_an_empty_validation_split_from_the_val_sources():
    import pandas as pd

    frame = pd.DataFrame({"id": [f"crops/{i}" for i in range(4)], "source": ["crops"] * 4,
                          "split": ["train"] * 4, "mask": ["m"] * 4})
    with pytest.raises(StageError, match="no validation images"):
        split_train_val(frame, small_settings(val_sources=["crops"], val_fraction=0.01))


def test_allow_empty_validation_does_not_change_the_resume_fingerprint():
    a = small_settings()
    b = small_settings(allow_empty_validation=True)
    assert fingerprint(a, "hostile_small", {}, "d") == fingerprint(b, "hostile_small", {}, "d")
    assert fingerprint(a, "hostile_small", {}, "d") != fingerprint(small_settings(lr=0.02), "hostile_small", {}, "d")


def test_an_unknown_arch_on_the_command_line_is_one_line(project, capsys):
    write_params(project / "params.yaml", {"train": quick()})
    assert main(["--params", "params.yaml", "--arch", "extremc3net", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown architecture 'extremc3net'" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- checkpoints (defect 5)


def test_a_resumed_checkpoint_whose_config_is_not_a_mapping_is_one_clear_line(project, capsys):
    last = project / "models" / "hostile_small" / "checkpoints" / "stage1_last.pt"
    save_checkpoint(last, {"arch": "hostile_small", "config": ["width", 4], "model": SmallNet().state_dict()})
    code, err = run_train(project, capsys, model_kwargs={"hostile_small": {"width": 4}})  # was: AttributeError
    assert code == 2 and str(Path("models/hostile_small/checkpoints/stage1_last.pt")) in err
    assert "config must be a mapping" in err and "Traceback" not in err


def test_build_from_checkpoint_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(CheckpointError, match=r"model\.pt: config\.pp: unknown argument of extremec3net"):
        build_from_checkpoint({"arch": "extremec3net", "config": {"pp": 1}, "model": {}}, path)
    with pytest.raises(CheckpointError, match=r"model\.pt: config\.q: "):
        build_from_checkpoint({"arch": "extremec3net", "config": {"q": -3}, "model": {}}, path)
    with pytest.raises(CheckpointError, match="not a registered architecture"):
        build_from_checkpoint({"arch": "nope", "config": {}, "model": {}}, path)
    model = build_from_checkpoint({"arch": "extremec3net", "config": {"num_classes": 2, "p": 1, "q": 3}}, path)
    assert model.classifier.out_channels == 2


# ---------------------------------------------------------------- text outputs (general rule)


def test_text_outputs_carry_no_absolute_path(project, capsys):
    code, err = run_train(project, capsys, paths={"train_set": str(project / "data" / "train_set")})
    assert code == 0, err
    texts = [project / "metrics" / "train" / "hostile_small.json", project / "plots" / "train" / "hostile_small.csv"]
    for path in texts:
        text = path.read_text()
        assert str(project) not in text and str(project.parent) not in text, (path, text)


def test_the_same_state_saves_to_the_same_bytes(tmp_path):
    import torch

    from pipeline.checkpoint import save_checkpoint

    state = {"arch": "x", "config": {}, "model": {"w": torch.arange(6.0)}}
    save_checkpoint(tmp_path / "a.pt", state)
    save_checkpoint(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
