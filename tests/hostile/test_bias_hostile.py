"""Hostile input for ``bias_report`` and the ``attributes`` tool (issue "Hostile input").

``bias_report``'s files follow from ``paths`` and the architecture
(``<paths.reports>/bias/<arch>/``, ``<paths.metrics>/bias/<arch>.json``): those paths are
checked like any output path, a path is never a format string (braces are plain
characters), and an architecture name is one plain path component, so no architecture can
lead outside the project. Reports are the same bytes in every checkout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.attributes import annotation
from pipeline.stages import bias_report as br
from pipeline.tools.attributes import AttributesParams
from pipeline.params import ParamsError, parse_section
from params_helpers import merged, quick_params, quick_section
from teacher_helpers import bomb_png, snapshot

PEOPLE = [("a", "asian", "woman", "youth"), ("b", "caucasian", "man", "senior"), ("c", "black", "man", "youth"),
          ("d", "asian", "woman", "child"), ("e", "caucasian", "woman", "youth"), ("f", "asian", "man", "youth")]


def _checkout(proj: Path) -> Path:
    """A project with an attribute table, a prepared manifest and two architectures' per-image IoU."""
    (proj / "annotations").mkdir(parents=True)
    (proj / "data" / "prepared").mkdir(parents=True)
    pd.DataFrame({"id": [f"eg1800/{p[0]}" for p in PEOPLE], "source": "eg1800", "split": "test",
                  "image": [f"images/eg1800/{p[0]}.png" for p in PEOPLE], "mask": ""}).to_csv(
        proj / "data" / "prepared" / "manifest.csv", index=False)
    pd.DataFrame([{"image_id": i, "person": 0, "race": r, "gender": g, "age": a} for i, r, g, a in PEOPLE]).to_csv(
        proj / "annotations" / "attributes.csv", index=False)
    for arch, offset in (("net_a", 0.0), ("net_b", 0.05)):
        (proj / "models" / arch).mkdir(parents=True)
        pd.DataFrame({"id": [f"eg1800/{p[0]}" for p in PEOPLE],
                      "iou": np.linspace(0.7, 0.95, len(PEOPLE)) - offset}).to_csv(
            proj / "models" / arch / "per_image.csv", index=False)
    return proj


def _section(**changes) -> dict:
    return {"architectures": ["net_a", "net_b"], "min_group_size": 1, "bootstrap_resamples": 100, "peers": [], **changes}


def _paths(**changes) -> dict:
    return {"attributes": "annotations/attributes.csv", **changes}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """(project, sentinel): a project (the cwd) and a folder beside it that must stay untouched."""
    proj, sentinel = tmp_path / "proj", tmp_path / "outside" / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "precious.txt").write_text("do not touch")
    proj.mkdir()
    monkeypatch.chdir(proj)
    return _checkout(proj), sentinel


def _run(proj: Path, capsys, section: dict, paths: dict | None = None) -> tuple[int, str]:
    params = merged(quick_params(), {"paths": paths or _paths()})
    params["bias_report"] = merged(quick_params()["bias_report"], section)
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    code = br.main(["--params", "params.yaml", "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# ---------------------------------------------------------------------------- bias_report params


@pytest.mark.parametrize("changes,named", [
    ({"confidence_level": 0.0}, "bias_report.confidence_level"),
    ({"confidence_level": 1.0}, "bias_report.confidence_level"),
    ({"confidence_level": 95}, "bias_report.confidence_level"),
    ({"confidence_level": float("nan")}, "bias_report.confidence_level"),
    ({"seed": -1}, "bias_report.seed"),
    ({"bootstrap_resamples": 10}, "bias_report.bootstrap_resamples"),
    ({"architectures": []}, "bias_report.architectures"),
    ({"architectures": ["net_a", "net_a"]}, "bias_report.architectures"),
    ({"architectures": ["../../outside/sentinel"]}, "bias_report.architectures"),
    ({"architectures": [".."]}, "bias_report.architectures"),
    ({"per_image": "models/{arch}/per_image.csv"}, "bias_report.per_image"),  # paths live in `paths` only
    ({"report_dir": "reports/bias/{arch}"}, "bias_report.report_dir"),
    ({"metrics": "metrics/bias/{arch}.json"}, "bias_report.metrics"),
    ({"default_split": "tst"}, "bias_report.default_split"),
    ({"source": "../eg1800"}, "bias_report.source"),
])
def test_bad_values_are_refused_naming_the_key(project, capsys, changes, named):
    proj, _ = project
    code, err = _run(proj, capsys, _section(**changes))
    assert code == 2 and named in err, err
    assert not (proj / "reports").exists() and not (proj / "metrics").exists()


@pytest.mark.parametrize("key,value", [
    ("reports", "reports/../../outside/sentinel"),
    ("reports", "{outside}"),
    ("metrics", "../outside/sentinel"),
    ("models", "../outside/sentinel"),
])
def test_an_output_path_cannot_leave_the_project(project, capsys, key, value):
    proj, sentinel = project
    before = snapshot(sentinel.parent)
    value = value.replace("{outside}", str(sentinel))
    code, err = _run(proj, capsys, _section(), _paths(**{key: value}))
    assert code == 2 and f"paths.{key}" in err
    assert snapshot(sentinel.parent) == before


def test_metrics_inside_a_report_folder_are_refused_before_anything_is_written(project, capsys):
    """The report folder is replaced whole: metrics written inside it would vanish on the next run."""
    proj, _ = project
    code, err = _run(proj, capsys, _section(), _paths(metrics="reports/bias/net_a"))
    assert code == 2 and "inside the report folder" in err, err
    assert not (proj / "reports").exists()


@pytest.mark.parametrize("value", ["reports/{arch.__class__}", "reports/{arch", "reports/{arch!r}", "{0}"])
def test_braces_in_a_path_are_plain_characters(project, capsys, value):
    """No path is a format template any more: nothing in it is evaluated or substituted."""
    proj, _ = project
    code, err = _run(proj, capsys, _section(architectures=["net_a"]), _paths(reports=value))
    assert code == 0, err
    assert (proj / value / "bias" / "net_a" / "report.md").is_file()


@pytest.mark.parametrize("content,message", [
    (b"", "not a readable CSV"),
    (b'id,iou\n"eg1800/a,0.5\n', "not a readable CSV"),
    (b"id,iou\neg1800/a,1.7\n", "row 1, column 'iou'"),
    (b"id,score\neg1800/a,0.5\n", "needs columns"),
])
def test_a_bad_per_image_table_is_one_line(project, capsys, content, message):
    proj, _ = project
    (proj / "models" / "net_a" / "per_image.csv").write_bytes(content)
    code, err = _run(proj, capsys, _section(architectures=["net_a"]))
    assert code == 2 and message in err, err


def test_a_bad_manifest_is_one_line(project, capsys):
    proj, _ = project
    (proj / "data" / "prepared" / "manifest.csv").write_text(
        "id,source,split,image,mask\neg1800/a,eg1800,test,i.png,\neg1800/a,eg1800,test,i.png,\n")
    code, err = _run(proj, capsys, _section())
    assert code == 2 and "duplicate id 'eg1800/a'" in err


def test_a_missing_manifest_is_one_line(project, capsys):
    proj, _ = project
    code, err = _run(proj, capsys, _section(), _paths(prepared="data/none"))
    assert code == 2 and "no manifest" in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------- portable reports


def test_reports_are_the_same_bytes_in_two_checkouts(tmp_path, monkeypatch, capsys):
    texts = []
    for root in (tmp_path / "one", tmp_path / "two" / "deeper"):
        proj = _checkout(root / "proj")
        monkeypatch.chdir(proj)
        paths = _paths(attributes=str(proj / "annotations" / "attributes.csv"), models=str(proj / "models"),
                       reports=str(proj / "reports"), metrics=str(proj / "metrics"),
                       prepared=str(proj / "data" / "prepared"))
        code, err = _run(proj, capsys, _section(), paths)
        assert code == 0, err
        texts.append({name: (proj / name).read_bytes() for name in (
            "reports/bias/net_a/report.md", "reports/bias/net_a/groups.csv", "reports/bias/net_b/report.md",
            "metrics/bias/net_a.json", "metrics/bias/net_b.json")})
        for name, data in texts[-1].items():
            assert str(root).encode() not in data, name
    assert texts[0] == texts[1]
    metrics = json.loads(texts[0]["metrics/bias/net_a.json"])
    assert metrics["overall.images"] == len(PEOPLE)


# ---------------------------------------------------------------------------- attributes


@pytest.mark.parametrize("changes,named", [
    ({"detector_size": [-1, 0]}, "attributes.detector_size"),
    ({"splits": ["tset"]}, "attributes.splits"),
    ({"splits": []}, "attributes.splits"),
    ({"source": "eg1800/../x"}, "attributes.source"),
    ({"dataset": ""}, "attributes.dataset"),
    ({"min_face_confidence": 1.5}, "attributes.min_face_confidence"),
])
def test_attributes_params_are_validated(changes, named):
    with pytest.raises(ParamsError, match=named.replace(".", r"\.")):
        parse_section(AttributesParams, {"attributes": quick_section("attributes", **changes)}, "attributes")


class _OneFaceEach:
    """Stand-in detector: one confident face in the middle of every image."""

    def detect(self, images):
        from types import SimpleNamespace

        return [[SimpleNamespace(box=(2.0, 2.0, 6.0, 6.0), probability=0.99)] for _ in images]


def test_face_detection_skips_unreadable_images_with_a_note(tmp_path):
    from pipeline.images import write_image

    good = tmp_path / "good.png"
    write_image(good, np.zeros((8, 8, 3), dtype=np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    huge = bomb_png(tmp_path / "huge.png")
    notes: list[str] = []
    found = annotation.detect_face_boxes({"good": good, "broken": broken, "huge": huge}, _OneFaceEach(), 0.9, notes=notes)
    assert found == {"good": [(0.25, 0.25, 0.5, 0.5)]}
    assert len(notes) == 2 and notes[0].startswith("broken: image skipped") and notes[1].startswith("huge: ")


def test_attributes_export_to_outside_the_project_is_refused(project, capsys):
    """``--to`` is an output path like ``attributes.export_csv``: refused before FiftyOne is touched."""
    from pipeline.tools.attributes import main as attributes_main

    proj, sentinel = project
    before = snapshot(sentinel.parent)
    (proj / "params.yaml").write_text(yaml.safe_dump(quick_params()))
    for value in (str(sentinel / "a.csv"), "../outside/sentinel/a.csv"):
        code = attributes_main(["export", "--params", "params.yaml", "--to", value])
        err = capsys.readouterr().err
        assert code == 2 and "attributes --to: " in err and "outside the project" in err, err
    assert snapshot(sentinel.parent) == before
