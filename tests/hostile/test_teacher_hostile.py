"""Hostile input for ``train_teacher`` (issue "Hostile input"): params, data and checkpoints.

Every case runs the stage as a user would (``main`` on a params file in a project folder):
a bad value is one line naming the key (exit 2), a bad image is skipped with a reason, a
selection that trains on less than asked (a misspelt source, an empty validation set) is
refused, and the metrics file is the same bytes in every checkout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from params_helpers import quick_section
from pipeline.checkpoint import save_checkpoint
from pipeline.params import ParamsError, parse_section
from pipeline.teachers.deeplab import TEACHER_ARCH, build_teacher, teacher_config
from pipeline.stages.train_teacher import TeacherParams, main
from teacher_helpers import bomb_png, rectangle_image, write_canonical, write_params

TINY = {"encoder_name": "mobilenet_v2", "decoder_channels": 16}  # the smallest smp encoder: fast to build and save
QUICK = {**TINY, "input_size": 32, "epochs": 1, "batch_size": 2, "device": "cpu", "checkpoint_every_steps": 100}


def _samples(source: str, split: str, n: int) -> list[dict]:
    out = []
    for i in range(n):
        image, mask = rectangle_image(32, 32, (4 + i, 4, 20 + i, 28))
        out.append({"id": f"{source}/{i:04d}", "split": split, "image": image, "mask": mask})
    return out


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project (the cwd, params.yaml's folder) with prepared data: 4 eg1800 train, 2 ccp val."""
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    write_canonical(proj / "data" / "prepared", _samples("eg1800", "train", 4) + _samples("ccp", "val", 2))
    return proj


def _run(proj: Path, section: dict, capsys, paths: dict | None = None) -> tuple[int, str]:
    write_params(proj / "params.yaml", {"paths": paths or {}, "teacher": {**QUICK, **section}})
    code = main(["--params", "params.yaml", "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


TRAIN = [{"dataset": "prepared", "splits": ["train"], "sources": ["eg1800"]}]
VAL = [{"dataset": "prepared", "splits": ["val"], "sources": ["ccp"]}]


# ---------------------------------------------------------------------------- params


def test_device_takes_every_documented_spelling_and_refuses_others():
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        assert TeacherParams(**quick_section("teacher", device=name)).device == name
    with pytest.raises(ParamsError, match="teacher.device"):
        parse_section(TeacherParams, {"teacher": quick_section("teacher", device="cdua")}, "teacher")


def test_cuda_on_a_machine_without_it_is_one_line(project, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = _run(project, {"train_data": TRAIN, "val_data": VAL, "device": "cuda:0"}, capsys)
    assert code == 2 and "CUDA is not available" in err


@pytest.mark.parametrize("location,value,named", [
    (("train_data", 0, "splits"), ["trian"], "teacher.train_data.0.splits"),
    (("train_data", 0, "splits"), [], "teacher.train_data.0.splits"),
    (("train_data", 0, "sources"), [], "teacher.train_data.0.sources"),
    (("val_data", 0, "splits"), ["val", "val"], "teacher.val_data.0.splits"),
    (("seed",), -1, "teacher.seed"),
    (("lr",), float("inf"), "teacher.lr"),
    (("train_data", 0, "dataset"), "prepard", "teacher.train_data.0.dataset"),
])
def test_bad_values_are_refused_naming_the_key(project, capsys, location, value, named):
    section = {"train_data": [dict(TRAIN[0])], "val_data": [dict(VAL[0])]}
    node = section
    for key in location[:-1]:
        node = node[key]
    node[location[-1]] = value
    code, err = _run(project, section, capsys)
    assert code == 2 and named in err, err


def test_a_source_the_manifest_lacks_is_an_error_not_less_data(project, capsys):
    # One entry right, one misspelt: before, training ran on the right one alone.
    train = [TRAIN[0], {"dataset": "prepared", "splits": ["train"], "sources": ["eg180"]}]
    code, err = _run(project, {"train_data": train, "val_data": VAL}, capsys)
    assert code == 2
    assert "teacher.train_data.1" in err and "eg180" in err and "eg1800" in err
    assert not (project / "models").exists()


NOTHING = {"dataset": "prepared", "splits": ["test"]}  # the project has no test rows


def test_an_entry_selecting_nothing_is_an_error(project, capsys):
    code, err = _run(project, {"train_data": [TRAIN[0], NOTHING], "val_data": VAL}, capsys)
    assert code == 2 and "teacher.train_data.1" in err and "no labelled rows" in err
    code, err = _run(project, {"train_data": TRAIN, "val_data": [NOTHING]}, capsys)
    assert code == 2 and "teacher.val_data.0" in err


def test_an_empty_validation_set_fails_unless_allowed(project, capsys):
    code, err = _run(project, {"train_data": TRAIN, "val_data": []}, capsys)
    assert code == 2 and "validation set is empty" in err and "allow_empty_validation" in err
    assert not (project / "models").exists()

    # Allowed, and an optional entry that selects nothing is a note, not an error.
    code, err = _run(project, {"train_data": [TRAIN[0], {**NOTHING, "optional": True}], "val_data": [],
                               "allow_empty_validation": True}, capsys)
    assert code == 0
    metrics = json.loads((project / "metrics" / "teacher" / "train.json").read_text())
    assert metrics["val_images"] == 0 and metrics["final_val_iou"] is None
    assert any("teacher.train_data.1" in n and "skipped" in n for n in metrics["notes"])


# ---------------------------------------------------------------------------- bad images


def test_unreadable_images_are_skipped_with_a_relative_reason(project, capsys):
    prepared = project / "data" / "prepared"
    (prepared / "images" / "eg1800" / "0001.png").write_bytes(b"not a png")
    bomb_png(prepared / "images" / "eg1800" / "0002.png")  # 20000 x 20000 claimed
    write_canonical(project / "data" / "more", _samples("eg1800x", "train", 2))
    train = [TRAIN[0], {"dataset": "crops", "splits": ["train"]}]
    code, err = _run(project, {"train_data": train, "val_data": VAL}, capsys,
                     paths={"prepared": str(prepared), "crops": "data/more"})
    assert code == 0, err
    metrics = json.loads((project / "metrics" / "teacher" / "train.json").read_text())
    assert metrics["train_images"] == 4  # 2 of eg1800 + 2 of eg1800x
    skipped = {s["id"]: s for s in metrics["skipped"]}
    assert set(skipped) == {"eg1800/0001", "eg1800/0002"}
    assert skipped["eg1800/0001"]["reason"].startswith("images/eg1800/0001.png: ")
    assert "too large" in skipped["eg1800/0002"]["reason"]
    assert {s["root"] for s in skipped.values()} == {"data/prepared"}  # absolute in params, relative here
    assert str(project) not in json.dumps(metrics)


# ---------------------------------------------------------------------------- checkpoints


def _checkpoint(path: Path, **changes) -> Path:
    config = teacher_config(TINY["encoder_name"], 1, TINY["decoder_channels"])
    state = {"arch": TEACHER_ARCH, "config": config, "model": build_teacher(config).state_dict(), "input_size": 32}
    for key, value in changes.items():
        if key.startswith("config."):
            state["config"] = {**state["config"], key.split(".", 1)[1]: value}
        else:
            state[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, state)
    return path


@pytest.mark.parametrize("changes,message", [
    ({"config.dropout": 0.1}, "unknown key(s) dropout"),
    ({"config": ["resnet18"]}, "mapping"),
    ({"config.encoder_output_stride": 8}, "encoder_output_stride"),
    ({"config.classes": 3}, "classes"),
    ({"model": [1, 2]}, "not a state dict"),
    ({"arch": "extremec3net"}, "extremec3net"),
    ({"input_size": "big"}, "input_size"),
    ({"history": "none"}, "history"),
])
def test_a_checkpoint_that_is_not_this_teacher_is_one_line(project, capsys, changes, message):
    source = _checkpoint(project / "incoming" / "teacher.pt", **changes)
    code, err = _run(project, {"checkpoint": str(source)}, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (project / "models").exists()


def test_a_file_that_is_no_checkpoint_is_one_line(project, capsys):
    source = project / "incoming" / "teacher.pt"
    source.parent.mkdir()
    source.write_bytes(b"PK\x03\x04 garbage")
    code, err = _run(project, {"checkpoint": str(source)}, capsys)
    assert code == 2 and "not a readable checkpoint" in err


# ---------------------------------------------------------------------------- same bytes in every checkout


def _checkout(root: Path, monkeypatch) -> Path:
    proj = root / "proj"
    proj.mkdir(parents=True)
    monkeypatch.chdir(proj)
    write_canonical(proj / "data" / "prepared", _samples("eg1800", "train", 4) + _samples("ccp", "val", 2))
    (proj / "data" / "prepared" / "images" / "eg1800" / "0003.png").write_bytes(b"broken")
    return proj


def test_adopted_checkpoint_metrics_are_the_same_bytes_in_two_checkouts(tmp_path, monkeypatch, capsys):
    original = _checkpoint(tmp_path / "teacher.pt")
    outputs = []
    for root in (tmp_path / "a", tmp_path / "b" / "deeper"):
        proj = _checkout(root, monkeypatch)
        source = proj / "incoming" / "teacher.pt"
        source.parent.mkdir()
        source.write_bytes(original.read_bytes())
        code, err = _run(proj, {"checkpoint": str(source)}, capsys)  # an absolute path inside each checkout
        assert code == 0, err
        outputs.append({name: (proj / "metrics" / "teacher" / name).read_bytes()
                        for name in ("train.json", "train_log.csv")})
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0]["train.json"])["checkpoint"] == "incoming/teacher.pt"


def test_trained_metrics_hold_no_machine_specific_text(tmp_path, monkeypatch, capsys):
    texts = []
    for root in (tmp_path / "a", tmp_path / "b" / "deeper"):
        proj = _checkout(root, monkeypatch)
        train = [TRAIN[0], {"dataset": "crops", "optional": True}]
        code, err = _run(proj, {"train_data": train, "val_data": VAL}, capsys,
                         paths={"prepared": str(proj / "data" / "prepared"), "crops": str(proj / "data" / "crops")})
        assert code == 0, err
        metrics = json.loads((proj / "metrics" / "teacher" / "train.json").read_text())
        floats = {k for k, v in metrics.items() if isinstance(v, float) and not math.isnan(v)}
        texts.append(json.dumps({k: v for k, v in metrics.items() if k not in floats}, sort_keys=True))
        assert str(root) not in texts[-1]
    assert texts[0] == texts[1]
    assert "data/crops" in texts[0] and "images/eg1800/0003.png" in texts[0]


def test_the_quick_profile_validation_is_the_ccp_val_split():
    assert [v.model_dump() for v in TeacherParams(**quick_section("teacher")).val_data] == [
        {"dataset": "prepared", "splits": ["val"], "sources": ["ccp"], "optional": False}]


@pytest.mark.parametrize("teacher", ["models/teacher_resume/last.pt", "metrics/teacher/train.json",
                                     "metrics/teacher/train_log.csv"])
def test_a_teacher_file_that_is_another_output_of_the_stage_is_refused(project, capsys, teacher):
    # before, the section's own output keys could name one file twice ("log and metrics are the same file");
    # now the stage's other files follow from paths, and paths.teacher must not be one of them
    code, err = _run(project, {"train_data": TRAIN, "val_data": VAL}, capsys, paths={"teacher": teacher})
    assert code == 2 and "paths.teacher" in err and "a file of its own" in err, err
    assert not (project / "models").exists() and not (project / "metrics").exists()


@pytest.mark.parametrize("key", ["teacher", "teacher_resume", "metrics"])
def test_teacher_outputs_outside_the_project_are_refused(project, capsys, key):
    outside = project.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "precious.txt").write_text("do not touch")
    for value in ("/elsewhere/teacher", str(outside / "teacher.pt"), "../outside/teacher.pt"):
        code, err = _run(project, {"train_data": TRAIN, "val_data": VAL}, capsys, paths={key: value})
        assert code == 2 and f"paths.{key}: " in err and "outside the project" in err, err
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert not (project / "models").exists()
