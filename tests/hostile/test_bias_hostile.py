"""Hostile input for ``bias_report`` and the ``attributes`` tool (issue "Hostile input").

``bias_report``'s paths are templates (``reports/bias/{arch}``): the template itself is a
path checked like any output path, ``{arch}`` is its only placeholder (``str.format`` would
evaluate anything else), and an architecture name is one plain path component, so no
substitution can leave the project. Reports are the same bytes in every checkout.
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
from teacher_helpers import bomb_png, snapshot

PEOPLE = [("a", "asian", "woman", "youth"), ("b", "caucasian", "man", "senior"), ("c", "black", "man", "youth"),
          ("d", "asian", "woman", "child"), ("e", "caucasian", "woman", "youth"), ("f", "asian", "man", "youth")]


def _checkout(proj: Path) -> Path:
    """A project with an attribute table and two architectures' per-image IoU."""
    (proj / "annotations").mkdir(parents=True)
    pd.DataFrame([{"image_id": i, "person": 0, "race": r, "gender": g, "age": a} for i, r, g, a in PEOPLE]).to_csv(
        proj / "annotations" / "attributes.csv", index=False)
    for arch, offset in (("net_a", 0.0), ("net_b", 0.05)):
        (proj / "models" / arch).mkdir(parents=True)
        pd.DataFrame({"id": [f"eg1800/{p[0]}" for p in PEOPLE],
                      "iou": np.linspace(0.7, 0.95, len(PEOPLE)) - offset}).to_csv(
            proj / "models" / arch / "per_image.csv", index=False)
    return proj


def _section(**changes) -> dict:
    return {"architectures": ["net_a", "net_b"], "attributes_csv": "annotations/attributes.csv", "manifest": "",
            "min_group_size": 1, "bootstrap_resamples": 100, **changes}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """(project, sentinel): a project (the cwd) and a folder beside it that must stay untouched."""
    proj, sentinel = tmp_path / "proj", tmp_path / "outside" / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "precious.txt").write_text("do not touch")
    proj.mkdir()
    monkeypatch.chdir(proj)
    return _checkout(proj), sentinel


def _run(proj: Path, capsys, section: dict) -> tuple[int, str]:
    (proj / "params.yaml").write_text(yaml.safe_dump({"bias_report": section}))
    code = br.main(["--params", "params.yaml"])
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
    ({"per_image": "models/{model}/per_image.csv"}, "bias_report.per_image"),
    ({"report_dir": "reports/{arch.__class__}"}, "bias_report.report_dir"),
    ({"metrics": "metrics/{arch"}, "bias_report.metrics"),
    ({"metrics": "metrics/{arch!r}.json"}, "bias_report.metrics"),
    ({"report_dir": "reports/bias"}, "bias_report.report_dir"),  # two architectures, one folder
    ({"metrics": "reports/bias/{arch}/metrics.json"}, "inside report_dir"),
    ({"default_split": "tst"}, "bias_report.default_split"),
    ({"source": "../eg1800"}, "bias_report.source"),
])
def test_bad_values_are_refused_naming_the_key(project, capsys, changes, named):
    proj, _ = project
    code, err = _run(proj, capsys, _section(**changes))
    assert code == 2 and named in err, err
    assert not (proj / "reports").exists() and not (proj / "metrics").exists()


@pytest.mark.parametrize("key,value", [
    ("report_dir", "reports/{arch}/../../../outside/sentinel"),
    ("report_dir", "{outside}/{arch}"),
    ("metrics", "../outside/sentinel/{arch}.json"),
])
def test_an_output_template_cannot_leave_the_project(project, capsys, key, value):
    proj, sentinel = project
    before = snapshot(sentinel.parent)
    value = value.replace("{outside}", str(sentinel))
    code, err = _run(proj, capsys, _section(**{key: value}))
    assert code == 2 and f"bias_report.{key}" in err
    assert snapshot(sentinel.parent) == before


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
    (proj / "data" / "prepared").mkdir(parents=True)
    (proj / "data" / "prepared" / "manifest.csv").write_text(
        "id,source,split,image,mask\neg1800/a,eg1800,test,i.png,\neg1800/a,eg1800,test,i.png,\n")
    code, err = _run(proj, capsys, _section(manifest="data/prepared"))
    assert code == 2 and "duplicate id 'eg1800/a'" in err


# ---------------------------------------------------------------------------- portable reports


def test_reports_are_the_same_bytes_in_two_checkouts(tmp_path, monkeypatch, capsys):
    texts = []
    for root in (tmp_path / "one", tmp_path / "two" / "deeper"):
        proj = _checkout(root / "proj")
        monkeypatch.chdir(proj)
        section = _section(attributes_csv=str(proj / "annotations" / "attributes.csv"),
                           per_image=str(proj / "models" / "{arch}" / "per_image.csv"),
                           report_dir=str(proj / "reports" / "bias" / "{arch}"),
                           metrics=str(proj / "metrics" / "bias" / "{arch}.json"))
        code, err = _run(proj, capsys, section)
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
        parse_section(AttributesParams, {"attributes": changes}, "attributes")


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
