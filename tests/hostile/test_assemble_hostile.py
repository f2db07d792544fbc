"""Hostile input for ``assemble`` (issue "Hostile input"): input folders, manifests, decisions.

The training manifest points into other stages' folders (``../prepared/...``) by design;
those paths must be the same bytes in every checkout, so they never hold an absolute path
and never climb out of the project. The decisions file is validated row by row: one
decision per id, a real sha256, any extra columns a reviewer tool adds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from params_helpers import write_params
from pipeline.stages.assemble import main
from pipeline.images import write_image, write_mask_png
from pipeline.manifest import ManifestRow, to_frame
from teacher_helpers import snapshot


def _dataset(root: Path, source: str, keys: list[str], split: str = "train") -> None:
    rows = []
    for i, key in enumerate(keys):
        write_image(root / "images" / source / f"{key}.png", np.full((6, 5, 3), 40 + i, dtype=np.uint8))
        mask = np.zeros((6, 5), dtype=bool)
        mask[1:4, 1:1 + i % 4 + 1] = True
        write_mask_png(root / "masks" / source / f"{key}.png", mask)
        rows.append(ManifestRow(id=f"{source}/{key}", source=source, split=split, image=f"images/{source}/{key}.png",
                                mask=f"masks/{source}/{key}.png", width=5, height=6))
    root.mkdir(parents=True, exist_ok=True)
    to_frame(rows).to_csv(root / "manifest.csv", index=False)


def _mask_sha(root: Path, key: str) -> str:
    return hashlib.sha256((root / "masks" / "pseudo" / f"{key}.png").read_bytes()).hexdigest()


def _checkout(proj: Path) -> Path:
    """A project with prepared data, crops, pseudo-labels and an exported decisions file."""
    data = proj / "data"
    _dataset(data / "prepared", "eg1800", ["00001", "00002"])
    _dataset(data / "crops", "ccp_crops", ["0001_f0"])
    _dataset(data / "pseudo", "pseudo", ["a", "b"])
    (proj / "reviews").mkdir(parents=True)
    pd.DataFrame([{"id": "pseudo/a", "decision": "accept", "mask_sha256": _mask_sha(data / "pseudo", "a"),
                   "reviewer": "ann", "decided_at": "2026-01-01T10:00:00+00:00", "seconds_on_screen": 1.5}]
                 ).to_csv(proj / "reviews" / "decisions.csv", index=False)
    return proj


@pytest.fixture
def project(tmp_path, monkeypatch):
    """(project, sentinel): a project (the cwd) and a folder beside it that must stay untouched."""
    proj, sentinel = tmp_path / "proj", tmp_path / "outside" / "sentinel"
    sentinel.mkdir(parents=True)
    (sentinel / "precious.txt").write_text("do not touch")
    proj.mkdir()
    monkeypatch.chdir(proj)
    return _checkout(proj), sentinel


# The layout _checkout builds.
PATHS = {"prepared": "data/prepared", "crops": "data/crops", "pseudo": "data/pseudo",
         "decisions": "reviews/decisions.csv", "train_set": "data/train_set", "metrics": "metrics"}


def _run(proj: Path, capsys, paths: dict | None = None, allow_outside: list[str] | None = None,
         **section) -> tuple[int, str]:
    """Run the stage with ``assemble: section`` and ``paths`` over the checkout's layout."""
    write_params(proj / "params.yaml", {"paths": {**PATHS, **(paths or {})}, "assemble": section,
                                        "allow_outside_project": allow_outside or []})
    code = main(["--params", "params.yaml"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_manifest_and_summary_are_the_same_bytes_with_absolute_input_dirs(tmp_path, monkeypatch, capsys):
    outputs = []
    for root in (tmp_path / "one", tmp_path / "two" / "deeper"):
        proj = _checkout(root / "proj")
        monkeypatch.chdir(proj)
        code, err = _run(proj, capsys, paths={key: str(proj / value) for key, value in PATHS.items()})
        assert code == 0, err
        outputs.append({name: (proj / name).read_bytes() for name in ("data/train_set/manifest.csv",
                                                                      "metrics/assemble.json")})
    assert outputs[0] == outputs[1]
    manifest = pd.read_csv(tmp_path / "one" / "proj" / "data" / "train_set" / "manifest.csv")
    assert manifest["image"].str.startswith("../").all() and not manifest["image"].str.contains(str(tmp_path)).any()


@pytest.mark.parametrize("key", ["prepared", "crops", "pseudo"])
def test_an_input_dir_outside_the_project_is_refused(project, capsys, key):
    proj, sentinel = project
    (proj / "data" / key).rename(sentinel / key)
    before = snapshot(sentinel)
    code, err = _run(proj, capsys, paths={key: str(sentinel / key)})
    assert code == 2 and f"paths.{key}" in err and "outside the project" in err
    # allowed outside (allow_outside_project) it still cannot be named portably from the output
    code, err = _run(proj, capsys, paths={key: str(sentinel / key)}, allow_outside=[str(sentinel)])
    assert code == 2 and f"paths.{key}" in err and "differ between checkouts" in err
    assert not (proj / "data" / "train_set").exists() and snapshot(sentinel) == before


def test_a_manifest_row_with_an_absolute_path_is_refused(project, capsys):
    proj, sentinel = project
    manifest = pd.read_csv(proj / "data" / "crops" / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.loc[0, "image"] = str(sentinel / "precious.txt")
    manifest.to_csv(proj / "data" / "crops" / "manifest.csv", index=False)
    code, err = _run(proj, capsys)
    assert code == 2 and "ccp_crops/0001_f0" in err and "image" in err
    assert not (proj / "data" / "train_set").exists()


@pytest.mark.parametrize("rows,message", [
    ([{"id": "pseudo/a", "decision": "accept"}, {"id": "pseudo/a", "decision": "reject"}],
     "id 'pseudo/a' has more than one decision (rows 1, 2)"),
    ([{"id": "pseudo/a", "decision": "accept"}, {"id": "pseudo/a", "decision": "accept"}], "more than one decision"),
    ([{"id": "pseudo/a", "decision": "accept", "mask_sha256": "deadbeef"}], "row 1: mask_sha256 'deadbeef'"),
    ([{"id": " ", "decision": "accept"}], "row 1: blank id"),
    ([{"id": "pseudo/a", "decision": "acept"}], "row 1: decision 'acept'"),
])
def test_a_bad_decisions_file_is_one_line_naming_the_row(project, capsys, rows, message):
    proj, _ = project
    sha = _mask_sha(proj / "data" / "pseudo", "a")
    pd.DataFrame([{"mask_sha256": sha, **row} for row in rows]).to_csv(proj / "reviews" / "decisions.csv",
                                                                       index=False)
    code, err = _run(proj, capsys)
    assert code == 2 and message in err and "reviews/decisions.csv" in err, err
    assert not (proj / "data" / "train_set").exists()


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00garbage\x00\n\x01", b'id,decision\n"unterminated'])
def test_an_unreadable_decisions_file_is_one_line(project, capsys, content):
    proj, _ = project
    (proj / "reviews" / "decisions.csv").write_bytes(content)
    code, err = _run(proj, capsys)
    assert code == 2 and "reviews/decisions.csv" in err


def test_extra_columns_in_decisions_are_read_past(project, capsys):
    proj, _ = project
    decisions = pd.read_csv(proj / "reviews" / "decisions.csv")
    decisions["comment"] = "looks fine"
    decisions.to_csv(proj / "reviews" / "decisions.csv", index=False)
    code, err = _run(proj, capsys)
    assert code == 0, err
    summary = json.loads((proj / "metrics" / "assemble.json").read_text())
    assert summary["pseudo"]["accepted"] == 1 and summary["pseudo"]["unreviewed"] == 1


def test_missing_decisions_file_is_one_line(project, capsys):
    proj, _ = project
    (proj / "reviews" / "decisions.csv").unlink()
    code, err = _run(proj, capsys)
    assert code == 2 and "decisions.csv does not exist" in err


def test_base_split_must_be_a_split(project, capsys):
    proj, _ = project
    code, err = _run(proj, capsys, base_split="trian")
    assert code == 2 and "assemble.base_split" in err
