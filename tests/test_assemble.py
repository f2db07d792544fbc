"""The training-set assembly: sources switched on/off, review decisions bound to mask bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from params_helpers import write_params
from pipeline.stages.assemble import AssembleParams, accepted_pseudo_labels, assemble_training_set, main, rebase_paths
from pipeline.images import write_image, write_mask_png
from pipeline.manifest import ManifestRow, read_manifest, to_frame
from pipeline.stage import StageError

# Where the fixture puts each stage's folder (paths of the project it builds).
PATHS = {"prepared": "data/prepared", "crops": "data/crops", "pseudo": "data/pseudo",
         "decisions": "reviews/decisions.csv", "train_set": "data/train_set", "metrics": "metrics"}


def write_dataset(root: Path, source: str, keys: list[str], split: str, labelled: bool = True,
                  mask_value: int = 0) -> pd.DataFrame:
    rows = []
    for i, key in enumerate(keys):
        image = np.full((6, 5, 3), 40 + i, dtype=np.uint8)
        mask = np.zeros((6, 5), dtype=bool)
        mask[1:4 + mask_value % 2, 1:4] = True
        write_image(root / "images" / source / f"{key}.png", image)
        mask_rel = ""
        if labelled:
            mask_rel = f"masks/{source}/{key}.png"
            write_mask_png(root / mask_rel, mask)
        rows.append(ManifestRow(id=f"{source}/{key}", source=source, split=split,
                                image=f"images/{source}/{key}.png", mask=mask_rel, width=5, height=6))
    frame = to_frame(rows)
    return frame


def save_manifest(root: Path, frames: list[pd.DataFrame]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_csv(root / "manifest.csv", index=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with prepared data, crops, pseudo-labels and review decisions."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    save_manifest(data / "prepared", [
        write_dataset(data / "prepared", "eg1800", ["00001", "00002", "00003"], "train"),
        write_dataset(data / "prepared", "eg1800", ["00010"], "test"),
        write_dataset(data / "prepared", "ccp", ["0001"], "train"),
    ])
    save_manifest(data / "crops", [write_dataset(data / "crops", "ccpcrop", ["0001_0", "0002_0"], "train")])
    save_manifest(data / "pseudo", [write_dataset(data / "pseudo", "ccp", ["0700", "0701", "0702", "0703"],
                                                  "unlabelled")])

    def digest(key):
        return hashlib.sha256((data / "pseudo" / "masks" / "ccp" / f"{key}.png").read_bytes()).hexdigest()

    reviews = tmp_path / "reviews"
    reviews.mkdir()
    pd.DataFrame([
        {"id": "ccp/0700", "decision": "accept", "mask_sha256": digest("0700")},
        {"id": "ccp/0701", "decision": "reject", "mask_sha256": digest("0701")},
        {"id": "ccp/0702", "decision": "accept", "mask_sha256": "0" * 64},  # reviewed an older mask
        # ccp/0703 never reviewed
    ]).to_csv(reviews / "decisions.csv", index=False)
    write_params(tmp_path / "params.yaml", {"paths": PATHS, "assemble": {
        "generated_data": True, "include_crops": True, "include_pseudo": True}})
    return tmp_path


def set_params(root: Path, **values) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["assemble"].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_accepts_only_decisions_taken_on_the_current_mask():
    pseudo = pd.DataFrame({"id": ["p/a", "p/b", "p/c", "p/d", "p/e"], "mask": ["a", "b", "c", "d", ""]})
    hashes = {m: sha(m) for m in "abcd"}
    decisions = pd.DataFrame({
        "id": ["p/a", "p/b", "p/c", "p/e", "p/gone"],
        "decision": ["accept", "Accept ", "accept", "accept", "reject"],
        "mask_sha256": [sha("a"), sha("b").upper(), sha("old"), sha("e"), sha("x")],
    })
    kept, counts = accepted_pseudo_labels(pseudo, decisions, hashes.__getitem__)
    assert kept["id"].tolist() == ["p/a", "p/b"]  # hashes and decisions compare case-blind
    assert counts == {"candidates": 4, "accepted": 2, "rejected": 0, "unreviewed": 1, "stale_decision": 1,
                      "decisions_for_other_ids": 2,  # p/e (no mask) and p/gone
                      "accepted_by_a_person": 2, "rejected_by_a_person": 0, "accepted_by_auto": 0,
                      "audited": 0, "audit_judged": 0, "audit_agreed": 0}  # no decided_by column: people's


def test_bad_decision_value_is_a_clear_error():
    pseudo = pd.DataFrame({"id": ["p/a"], "mask": ["a"]})
    decisions = pd.DataFrame({"id": ["p/a"], "decision": ["maybe"], "mask_sha256": [sha("a")]})
    with pytest.raises(StageError, match="maybe"):
        accepted_pseudo_labels(pseudo, decisions, sha)
    with pytest.raises(StageError, match="mask_sha256"):
        accepted_pseudo_labels(pseudo, decisions.drop(columns="mask_sha256"), sha)


def test_core_keeps_base_train_split_and_refuses_duplicate_ids():
    base = pd.DataFrame({"id": ["e/1", "e/2", "e/3", "c/1"], "source": ["e", "e", "e", "c"],
                         "split": ["train", "test", "train", "train"], "image": ["i"] * 4,
                         "mask": ["m", "m", "", "m"]})
    frame, summary = assemble_training_set(base, base_source="e", base_split="train")
    assert frame["id"].tolist() == ["e/1"]  # test split, unlabelled row and other sources left out
    assert summary["by_input"] == {"base": 1, "crops": 0, "pseudo": 0}
    crops = pd.DataFrame({"id": ["e/1"], "source": ["e"], "split": ["val"], "image": ["i"], "mask": ["m"]})
    with pytest.raises(StageError, match="e/1"):
        assemble_training_set(base, base_source="e", base_split="train", crops=crops)
    with pytest.raises(StageError, match="no labelled rows"):
        assemble_training_set(base, base_source="nope", base_split="train")


def test_rebase_paths_points_back_into_the_source_folder():
    frame = pd.DataFrame({"image": ["images/e/1.jpg"], "mask": [""]})
    out = rebase_paths(frame, "data/prepared", "data/train_set")
    assert out.loc[0, "image"] == "../prepared/images/e/1.jpg"
    assert out.loc[0, "mask"] == ""


def test_main_builds_the_manifest_and_summary(project):
    assert main(["--params", "params.yaml"]) == 0
    frame = read_manifest(project / "data" / "train_set")
    assert sorted(frame["id"]) == ["ccp/0700", "ccpcrop/0001_0", "ccpcrop/0002_0",
                                   "eg1800/00001", "eg1800/00002", "eg1800/00003"]
    assert set(frame["split"]) == {"train"}
    row = frame.set_index("id").loc["eg1800/00002"]
    assert row["image"] == "../prepared/images/eg1800/00002.png"
    assert row["input"] == "base" and row["origin_split"] == "train"
    for rel in list(frame["image"]) + list(frame["mask"]):
        assert (project / "data" / "train_set" / rel).is_file()
    summary = json.loads((project / "metrics" / "assemble.json").read_text())
    assert summary["by_input"] == {"base": 3, "crops": 2, "pseudo": 1}
    assert summary["by_source"] == {"ccp": 1, "ccpcrop": 2, "eg1800": 3}
    assert summary["pseudo"]["stale_decision"] == 1 and summary["pseudo"]["unreviewed"] == 1


def test_changed_mask_loses_its_acceptance(project):
    mask_path = project / "data" / "pseudo" / "masks" / "ccp" / "0700.png"
    write_mask_png(mask_path, np.ones((6, 5), dtype=bool))  # teacher re-run: a new mask
    assert main(["--params", "params.yaml"]) == 0
    frame = read_manifest(project / "data" / "train_set")
    assert "ccp/0700" not in set(frame["id"])


def test_generated_data_switch_is_the_ablation(project):
    import shutil

    shutil.rmtree(project / "data" / "crops")  # switched off: absence is fine
    (project / "reviews" / "decisions.csv").unlink()
    set_params(project, generated_data=False)
    assert main(["--params", "params.yaml"]) == 0
    frame = read_manifest(project / "data" / "train_set")
    assert set(frame["input"]) == {"base"} and len(frame) == 3


def test_switched_on_but_missing_is_a_clear_error(project, capsys):
    (project / "reviews" / "decisions.csv").unlink()
    assert main(["--params", "params.yaml"]) == 2
    assert "decisions.csv does not exist" in capsys.readouterr().err
    set_params(project, include_pseudo=False)
    import shutil

    shutil.rmtree(project / "data" / "crops")
    assert main(["--params", "params.yaml"]) == 2
    assert "crops" in capsys.readouterr().err
    assert not (project / "data" / "train_set").exists()  # nothing half-written


def test_missing_image_file_is_reported(project, capsys):
    (project / "data" / "crops" / "images" / "ccpcrop" / "0002_0.png").unlink()
    assert main(["--params", "params.yaml"]) == 2
    assert "0002_0.png" in capsys.readouterr().err


def test_every_assemble_key_comes_from_params():
    """No code default can disagree with params.yaml: each key must be given."""
    for key in AssembleParams.model_fields:
        assert AssembleParams.model_fields[key].is_required(), key
    with pytest.raises(TypeError):
        assemble_training_set(pd.DataFrame(), base_source="eg1800")  # base_split has no default either


def test_quiet_is_accepted_and_output_paths_come_from_the_paths_section(project, capsys):
    write_params(project / "params.yaml", {"paths": {**PATHS, "train_set": "elsewhere/set", "metrics": "m"},
                                           "assemble": {"generated_data": False}})
    assert main(["--params", "params.yaml", "--quiet"]) == 0
    frame = read_manifest(project / "elsewhere" / "set")
    assert frame.set_index("id").loc["eg1800/00001", "image"] == "../../data/prepared/images/eg1800/00001.png"
    assert json.loads((project / "m" / "assemble.json").read_text())["total"] == 3
    assert not (project / "data" / "train_set").exists()


def test_people_and_the_rule_are_counted_apart_with_the_audit():
    pseudo = pd.DataFrame({"id": [f"p/{k}" for k in "abcdef"], "mask": list("abcdef")})
    decisions = pd.DataFrame({
        "id": ["p/a", "p/b", "p/c", "p/d", "p/e"],
        "decision": ["accept", "accept", "reject", "accept", "accept"],
        "mask_sha256": [sha(m) for m in "abcde"],
        "reviewer": ["auto:calibrated-v1", "ann", "ann", "ann", "auto:calibrated-v1"],
        "decided_by": ["auto", "human", "human", "human", "auto"],
        "audit": ["false", "true", "true", "false", "true"],  # p/b, p/c audited by ann; p/e not judged yet
    })
    kept, counts = accepted_pseudo_labels(pseudo, decisions, sha)
    assert kept["id"].tolist() == ["p/a", "p/b", "p/d", "p/e"]
    assert (counts["accepted_by_a_person"], counts["rejected_by_a_person"], counts["accepted_by_auto"]) == (2, 1, 2)
    assert (counts["audited"], counts["audit_judged"], counts["audit_agreed"]) == (3, 2, 1)
    # a decisions file from before auto-accept (no decided_by/audit columns) holds people's decisions
    _, old = accepted_pseudo_labels(pseudo, decisions.drop(columns=["decided_by", "audit"]), sha)
    assert old["accepted_by_a_person"] == 4 and old["accepted_by_auto"] == 0 and old["audited"] == 0


@pytest.mark.parametrize("column,value,message", [("decided_by", "robot", "neither human nor auto"),
                                                  ("audit", "maybe", "neither true nor false")])
def test_bad_decided_by_or_audit_is_a_clear_error(column, value, message):
    pseudo = pd.DataFrame({"id": ["p/a"], "mask": ["a"]})
    decisions = pd.DataFrame({"id": ["p/a"], "decision": ["accept"], "mask_sha256": [sha("a")],
                              "decided_by": ["human"], "audit": ["false"]})
    decisions[column] = value
    with pytest.raises(StageError, match=message):
        accepted_pseudo_labels(pseudo, decisions, sha)
    decisions = decisions.assign(decided_by="auto", audit="false", decision="reject")
    with pytest.raises(StageError, match="only accepts"):
        accepted_pseudo_labels(pseudo, decisions, sha)
