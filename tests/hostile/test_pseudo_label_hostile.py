"""Hostile input for ``pseudo_label`` (issue "Hostile input"): params, pool, validation, checkpoints.

The stage runs as a user would run it, on a project folder beside a sentinel folder that must
stay untouched. A bad value is one line naming the key (exit 2); an unreadable image is
skipped with a reason naming it relative to its dataset; an empty validation set or pool
fails before the old output is replaced; two pool ids never share one mask file; and the
text outputs are the same bytes in every checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

import pipeline.stages.pseudo_label as pl
from pipeline.checkpoint import save_checkpoint
from pipeline.labelling.prediction import COMPONENTS
from pipeline.params import ParamsError, parse_section
from pipeline.stages.pseudo_label import PseudoLabelParams
from pipeline.teachers.deeplab import TEACHER_ARCH, build_teacher, teacher_config
from params_helpers import quick_params, quick_section, write_params
from teacher_helpers import BrightnessTeacher, bomb_png, rectangle_image, snapshot, write_canonical

TEACHER = {"encoder_name": "mobilenet_v2", "decoder_channels": 16}
NO_WEIGHT = {c: 0.0 for c in COMPONENTS}  # weights merge key by key into the quick profile's
TEXT_OUTPUTS = ("data/pseudo/manifest.csv", "data/pseudo/scores.csv", "data/pseudo/skipped.csv",
                "metrics/pseudo_label.json", "metrics/pseudo_label_validation.csv")


def _pool(n: int = 3, source: str = "web") -> list[dict]:
    return [{"id": f"{source}/{i:03d}", "split": "unlabelled",
             "image": rectangle_image(40, 30 + i, (5, 5, 20, 30))[0]} for i in range(n)]


def _val(n: int = 2) -> list[dict]:
    out = []
    for i in range(n):
        image, mask = rectangle_image(36, 36, (4 + i, 4, 24, 30))
        out.append({"id": f"ccp/{i:04d}", "split": "val", "image": image, "mask": mask})
    return out


@pytest.fixture
def stand_in(monkeypatch):
    """The teacher marks bright pixels; it 'trained on' the ids in ``seen``."""
    seen: list[str] = []
    monkeypatch.setattr(pl, "load_teacher", lambda path, expected_config=None: (
        BrightnessTeacher().eval(), {"input_size": 32, "train_ids": seen}))
    return seen


@pytest.fixture
def project(tmp_path, monkeypatch):
    """(project, sentinel): the project (cwd) with a pool and a validation set, and a folder beside it."""
    proj, sentinel = tmp_path / "proj", tmp_path / "outside" / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "precious.txt").write_text("do not touch")
    proj.mkdir()
    monkeypatch.chdir(proj)
    write_canonical(proj / "data" / "prepared", _pool() + _val())
    return proj, sentinel


def _run(proj: Path, capsys, teacher_section: dict | None = None, paths: dict | None = None,
         allow_outside: list[str] | None = None, **section) -> tuple[int, str]:
    """Run the stage on ``pseudo_label: section``, ``paths`` (and ``teacher: teacher_section``); (exit code, stderr).

    The project's layout is the quick profile's (data/prepared holds the pool and the validation rows).
    """
    section = {"teachers": ["deeplab"], "pool_crop": "none", "batch_size": 2, "device": "cpu", "bfloat16": False, "channels_last": False,
               "validation": {"data": [{"dataset": "prepared", "splits": ["val"], "sources": ["ccp"]}]}, **section}
    write_params(proj / "params.yaml", {"teacher": teacher_section or TEACHER, "pseudo_label": section,
                                        "paths": paths or {}, "allow_outside_project": allow_outside or []})
    code = pl.main(["--params", "params.yaml"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# ---------------------------------------------------------------------------- params


def test_device_takes_every_documented_spelling_and_refuses_others():
    for name in ("auto", "cpu", "cuda", "cuda:0"):
        assert PseudoLabelParams.model_validate(quick_section("pseudo_label", device=name)).device == name
    with pytest.raises(ParamsError, match="pseudo_label.device"):
        parse_section(PseudoLabelParams, {"pseudo_label": quick_section("pseudo_label", device="cdua")}, "pseudo_label")


@pytest.mark.parametrize("section,named", [
    ({"score": {"weights": NO_WEIGHT}}, "pseudo_label.score.weights"),
    ({"score": {"weights": {"confidence": -1.0, "presence": 1.0}}}, "pseudo_label.score.weights"),
    ({"score": {"weights": {"confidence": float("nan")}}}, "pseudo_label.score.weights"),
    ({"score": {"weights": {**NO_WEIGHT, "flip_agreement": 1.0}}, "flip_tta": False}, "only flip_agreement"),
    ({"pool_splits": ["unlabeled"]}, "pseudo_label.pool_splits"),
    ({"pool_splits": []}, "pseudo_label.pool_splits"),
    ({"pool_sources": []}, "pseudo_label.pool_sources"),
    ({"input_size": 100}, "pseudo_label.input_size"),
    ({"source_name": "a/b"}, "pseudo_label.source_name"),
    ({"validation": {"data": [{"dataset": "data/prepared", "splits": ["val"]}]}}, "pseudo_label.validation.data.0"),
    ({"paths": {"metrics": "data/pseudo/metrics"}}, "paths.metrics 'data/pseudo/metrics' lies inside paths.pseudo"),
    ({"paths": {"metrics": "data/pseudo"}}, "lies inside paths.pseudo"),
])
def test_bad_values_are_refused_naming_the_key(project, stand_in, capsys, section, named):
    proj, _ = project
    code, err = _run(proj, capsys, **section)
    assert code == 2 and named in err, err
    assert not (proj / "data" / "pseudo").exists()


@pytest.mark.parametrize("key", ["score", "validation", "validation.iou_threshold", "pool_sources", "input_size"])
def test_every_key_must_be_given_params_yaml_is_the_one_source(project, stand_in, capsys, key):
    proj, _ = project
    params = quick_params()
    section = params["pseudo_label"]
    *parents, last = key.split(".")
    for name in parents:
        section = section[name]
    del section[last]
    (proj / "params.yaml").write_text(__import__("yaml").safe_dump(params))
    assert pl.main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert f"pseudo_label.{key}: Field required" in err, err
    assert not (proj / "data" / "pseudo").exists()


def test_a_source_name_cannot_write_outside_the_output(project, stand_in, capsys):
    proj, sentinel = project
    before = snapshot(sentinel.parent)
    code, err = _run(proj, capsys, source_name="../../../../outside/sentinel")
    assert code == 2 and "pseudo_label.source_name" in err
    assert snapshot(sentinel.parent) == before


def test_a_pool_source_the_manifest_lacks_is_an_error_not_a_smaller_pool(project, stand_in, capsys):
    proj, _ = project
    code, err = _run(proj, capsys, pool_sources=["web", "wbe"])
    assert code == 2 and "pseudo_label.pool_sources" in err and "wbe" in err
    assert not (proj / "data" / "pseudo").exists()


# ---------------------------------------------------------------------------- empty sets


def test_an_empty_validation_set_fails_before_the_output_is_replaced(project, stand_in, capsys):
    proj, _ = project
    assert _run(proj, capsys)[0] == 0
    before = snapshot(proj / "data" / "pseudo")

    code, err = _run(proj, capsys, validation={"data": []})
    assert code == 2 and "no validation image" in err and "allow_empty_validation" in err
    stand_in.extend(["ccp/0000", "ccp/0001"])  # every validation image was seen in training
    code, err = _run(proj, capsys)
    assert code == 2 and "2 excluded as seen in training" in err
    assert snapshot(proj / "data" / "pseudo") == before

    code, err = _run(proj, capsys, validation={"data": [], "allow_empty_validation": True})
    assert code == 0
    metrics = pd.read_json(proj / "metrics" / "pseudo_label.json", typ="series")
    assert metrics["validation"]["images"] == 0 and "no validation image" in metrics["validation"]["notes"][0]


def test_a_pool_of_unreadable_images_is_an_error_not_an_empty_output(project, stand_in, capsys):
    proj, _ = project
    for i in range(3):
        (proj / "data" / "prepared" / "images" / "web" / f"{i:03d}.png").write_bytes(b"broken")
    code, err = _run(proj, capsys)
    assert code == 2 and "none of the 3 pool image(s)" in err and "images/web/000.png" in err
    assert not (proj / "data" / "pseudo").exists()


# ---------------------------------------------------------------------------- bad files, ids


def test_unreadable_images_and_masks_are_skipped_with_relative_reasons(project, stand_in, capsys):
    proj, _ = project
    prepared = proj / "data" / "prepared"
    (prepared / "images" / "web" / "000.png").write_bytes(b"not a png")
    bomb_png(prepared / "images" / "web" / "001.png")  # claims 20000 x 20000 pixels
    (prepared / "masks" / "ccp" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, err = _run(proj, capsys, paths={"prepared": str(prepared)})  # absolute: reasons still relative
    assert code == 0, err
    skipped = pd.read_csv(proj / "data" / "pseudo" / "skipped.csv")
    assert skipped["id"].tolist() == ["web/000", "web/001"]
    assert skipped["reason"].iloc[0].startswith("images/web/000.png: ")
    assert skipped["reason"].iloc[1].startswith("images/web/001.png: ") and "too large" in skipped["reason"].iloc[1]
    metrics = pd.read_json(proj / "metrics" / "pseudo_label.json", typ="series")
    assert metrics["validation"]["images"] == 1
    (bad_mask,) = metrics["validation"]["skipped_images"]
    assert bad_mask["id"] == "ccp/0001" and bad_mask["reason"].startswith("masks/ccp/0001.png: ")
    for name in TEXT_OUTPUTS:
        assert str(proj) not in (proj / name).read_text(), name


def test_two_pool_ids_never_share_a_mask_file(project, stand_in, capsys):
    proj, _ = project
    image = rectangle_image(20, 20, (2, 2, 10, 10))[0]
    write_canonical(proj / "data" / "prepared", _val() + [
        {"id": "a_b/c", "split": "unlabelled", "image": image}, {"id": "a/b_c", "split": "unlabelled", "image": image}])
    code, err = _run(proj, capsys)
    assert code == 2 and "'a/b_c'" in err and "'a_b/c'" in err and "images/a/b_c.png" in err
    assert not (proj / "data" / "pseudo").exists()


# ---------------------------------------------------------------------------- portable outputs


def test_a_pool_outside_the_project_is_refused(project, stand_in, capsys):
    proj, sentinel = project
    write_canonical(sentinel / "pool", _pool() + _val())
    before = snapshot(sentinel)
    code, err = _run(proj, capsys, paths={"prepared": str(sentinel / "pool")})
    assert code == 2 and "paths.prepared" in err and "outside the project" in err
    # allowed outside (allow_outside_project), the pseudo manifest still could not point into it portably
    code, err = _run(proj, capsys, paths={"prepared": str(sentinel / "pool")}, allow_outside=[str(sentinel)])
    assert code == 2 and "paths.prepared" in err and "differ between checkouts" in err
    assert not (proj / "data" / "pseudo").exists() and snapshot(sentinel) == before


def test_text_outputs_are_the_same_bytes_in_two_checkouts(tmp_path, monkeypatch, stand_in, capsys):
    """Each checkout keeps its data on another disk (data/prepared is a symlink) and names it absolutely."""
    outputs = []
    for root in (tmp_path / "one", tmp_path / "two" / "deeper"):
        disk, proj = root / "disk" / "prepared", root / "checkout" / "proj"
        write_canonical(disk, _pool() + _val())
        (disk / "images" / "web" / "002.png").write_bytes(b"broken")
        (proj / "data").mkdir(parents=True)
        os.symlink(disk, proj / "data" / "prepared")
        monkeypatch.chdir(proj)
        code, err = _run(proj, capsys, paths={"prepared": str(proj / "data" / "prepared"),
                                              "pseudo": str(proj / "data" / "pseudo")})
        assert code == 0, err
        outputs.append({name: (proj / name).read_bytes() for name in TEXT_OUTPUTS})
    assert outputs[0] == outputs[1]
    manifest = pd.read_csv(tmp_path / "one" / "checkout" / "proj" / "data" / "pseudo" / "manifest.csv")
    assert manifest["image"].tolist() == ["../prepared/images/web/000.png", "../prepared/images/web/001.png"]


# ---------------------------------------------------------------------------- checkpoints


def _checkpoint(path: Path, config: dict | None = None, model: dict | None = None, **extra) -> Path:
    config = config or teacher_config(TEACHER["encoder_name"], 1, TEACHER["decoder_channels"])
    if model is None:
        model = build_teacher(config).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"arch": TEACHER_ARCH, "config": config, "model": model, **extra})
    return path


@pytest.mark.parametrize("config,extra,message", [
    ({**teacher_config("mobilenet_v2", 1, 16), "activation": "relu"}, {}, "unknown key(s) activation"),
    (None, {"input_size": "large"}, "input_size"),
    (None, {"input_size": 100}, "input_size"),
    (None, {"train_ids": "ccp/0000"}, "train_ids"),
])
def test_a_checkpoint_that_is_not_this_teacher_is_one_line(project, capsys, config, extra, message):
    proj, _ = project
    teacher = _checkpoint(proj / "models" / "teacher" / "teacher.pt", config, **extra)
    code, err = _run(proj, capsys, paths={"teacher": str(teacher)})
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (proj / "data" / "pseudo").exists()


def test_a_checkpoint_of_an_encoder_this_installation_cannot_build_is_one_line(project, capsys):
    proj, _ = project
    config = teacher_config("resnet9000", 1, 16)
    teacher = _checkpoint(proj / "models" / "teacher" / "teacher.pt", config, model={"w": torch.zeros(1)})
    code, err = _run(proj, capsys, teacher_section={"encoder_name": "resnet9000", "decoder_channels": 16},
                     paths={"teacher": str(teacher)})
    assert code == 2 and "resnet9000" in err and len(err.strip().splitlines()) == 1, err
