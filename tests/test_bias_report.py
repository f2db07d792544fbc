"""Per-group mIoU, disparity, bootstrap intervals and the bias report stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from params_helpers import write_params

from pipeline import bias
from pipeline.attributes import UNKNOWN, normalise_table, read_table
from pipeline.stage import StageError
from pipeline.stages import bias_report as br


def _attributes(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["image_id", "person", "race", "gender", "age"])
    return normalise_table(frame, "test")


# Image c has a woman and a man; image d has two women (counts once for woman).
ATTRIBUTES = _attributes([
    ("a", 0, "asian", "woman", "youth"),
    ("b", 0, "caucasian", "man", "senior"),
    ("c", 0, "caucasian", "woman", "youth"),
    ("c", 1, "black", "man", "youth"),
    ("d", 0, "asian", "woman", "child"),
    ("d", 1, "asian", "woman", "youth"),
    ("e", 0, "unknown", "man", "youth"),
])
IOU = pd.Series({"a": 0.90, "b": 0.80, "c": 0.70, "d": 0.60, "e": 0.50})


def _summary(grouping: str, min_group_size: int = 1) -> pd.DataFrame:
    return bias.summarise_groups(IOU, bias.memberships(ATTRIBUTES, grouping), grouping, min_group_size=min_group_size,
                               resamples=200, level=0.9, seed=0).set_index("group")


def test_an_image_counts_once_in_each_distinct_group_of_its_people():
    gender = _summary("gender")
    assert gender.loc["woman", "images"] == 3  # a, c, d (d's two women count once)
    assert gender.loc["woman", "miou"] == pytest.approx((90 + 70 + 60) / 3)
    assert gender.loc["man", "images"] == 3  # b, c, e
    assert gender.loc["man", "miou"] == pytest.approx((80 + 70 + 50) / 3)
    race = _summary("race")
    assert race.loc["black", "images"] == 1 and race.loc["black", "miou"] == pytest.approx(70)
    assert race.loc["caucasian", "miou"] == pytest.approx(75)
    assert race.loc[UNKNOWN, "images"] == 1 and race.loc[UNKNOWN, "flag"].startswith("unknown")


def test_empty_groups_are_listed_not_dropped():
    gender = _summary("gender")
    assert list(gender.index) == ["man", "woman", UNKNOWN]
    assert gender.loc[UNKNOWN, "images"] == 0 and math.isnan(gender.loc[UNKNOWN, "miou"])
    classes = _summary("class")
    assert len(classes) == 19
    empty = classes.loc["18 black/woman/senior"]
    assert empty["images"] == 0 and math.isnan(empty["miou"]) and empty["flag"] == "empty"
    assert classes.loc["17 black/woman/youth", "images"] == 0
    assert classes.loc["14 black/man/youth", "miou"] == pytest.approx(70)
    assert classes.loc[bias.NO_CLASS, "images"] == 1  # e: race unknown


def test_small_groups_are_flagged():
    age = _summary("age", min_group_size=2)
    assert age.loc["senior", "flag"].startswith("small") and age.loc["child", "flag"].startswith("small")
    assert age.loc["youth", "flag"] == ""


def test_disparity_on_hand_computed_numbers():
    summary = pd.DataFrame({
        "group": ["x", "y", "z", "w", UNKNOWN],
        "images": [10, 12, 3, 0, 40],
        "miou": [90.0, 85.5, 50.0, np.nan, 10.0],
    })
    found = bias.disparity(summary, min_group_size=5)
    assert found.gap == pytest.approx(4.5)
    assert found.ratio == pytest.approx(85.5 / 90.0)
    assert (found.best, found.worst) == ("x", "y")
    assert found.compared == ["x", "y"] and found.left_out == ["z"]
    lonely = bias.disparity(summary, min_group_size=11)
    assert math.isnan(lonely.gap) and lonely.compared == ["y"]


def test_bootstrap_interval_covers_a_known_mean_about_as_often_as_its_level():
    rng = np.random.default_rng(123)
    a, b = 8.0, 2.0  # Beta(8, 2): mean 0.8, skewed like IoUs
    truth = a / (a + b)
    covered = 0
    trials = 200
    for _ in range(trials):
        sample = rng.beta(a, b, size=40)
        low, high = bias.bootstrap_interval(sample, resamples=400, level=0.9, rng=rng)
        covered += low <= truth <= high
    assert 0.84 <= covered / trials <= 0.96


def test_bootstrap_interval_edge_cases():
    rng = np.random.default_rng(0)
    assert all(math.isnan(v) for v in bias.bootstrap_interval(np.array([]), 100, 0.9, rng))
    assert bias.bootstrap_interval(np.array([0.7, 0.7, 0.7]), 100, 0.9, rng) == pytest.approx((0.7, 0.7))
    low, high = bias.bootstrap_interval(np.array([0.1, 0.9] * 20), 500, 0.5, rng)
    wide_low, wide_high = bias.bootstrap_interval(np.array([0.1, 0.9] * 20), 500, 0.99, rng)
    assert wide_low < low < 0.5 < high < wide_high


def test_gap_interval_brackets_a_clear_gap():
    rng = np.random.default_rng(5)
    n = 60
    ids = [f"i{i}" for i in range(2 * n)]
    iou = pd.Series(np.r_[rng.normal(0.9, 0.01, n), rng.normal(0.8, 0.01, n)], index=ids)
    members = pd.DataFrame({"image_id": ids, "group": ["p"] * n + ["q"] * n})
    low, high = bias.gap_interval(iou, members, ["p", "q"], resamples=500, level=0.9, rng=rng)
    assert low < 10.0 < high and high - low < 2.0


def test_class_histogram_counts_persons_per_split():
    hist = bias.class_histogram(ATTRIBUTES, {"a": "train", "b": "train", "c": "val"}, default_split="test")
    assert list(hist.columns) == ["test", "train", "val"]
    assert len(hist) == 19 and hist.to_numpy().sum() == len(ATTRIBUTES)
    assert hist.loc["11 asian/woman/youth", "train"] == 1 and hist.loc["11 asian/woman/youth", "test"] == 1
    assert hist.loc["10 asian/woman/child", "test"] == 1
    assert hist.loc[bias.NO_CLASS, "test"] == 1
    assert hist.loc["18 black/woman/senior"].sum() == 0


def test_per_image_table_keys_and_errors():
    frame = pd.DataFrame({"id": ["eg1800/00002", "eg1800/00005", "ccp/0001"], "image_key": ["00002", "00005", "0001"],
                          "iou": ["0.9", "0.8", "0.5"]})
    iou, other = bias.per_image_iou(frame, "eg1800")
    assert iou.to_dict() == {"00002": 0.9, "00005": 0.8} and other == ["ccp/0001"]
    bad = frame.assign(iou=["0.9", "1.5", "0.5"])
    with pytest.raises(StageError, match="row 2, column 'iou'"):
        bias.per_image_iou(bad, "eg1800")
    with pytest.raises(StageError, match="needs columns"):
        bias.per_image_iou(frame.drop(columns=["iou"]), "eg1800")


def test_build_report_counts_unmatched_images_and_writes_flat_metrics():
    iou = pd.concat([IOU.drop("e"), pd.Series({"z": 0.99})])
    report = bias.build_report("net", iou, ATTRIBUTES, {}, default_split="test", min_group_size=1, resamples=200,
                               level=0.9, seed=0)
    assert report.images_compared == 4
    assert report.iou_without_attributes == ["z"] and report.attributes_without_iou == ["e"]
    assert report.overall_miou == pytest.approx(75.0)
    metrics = bias.flat_metrics(report)
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["gender.woman.miou"] == pytest.approx(73.3333, abs=1e-3)
    assert metrics["gender.man.miou"] == pytest.approx(75.0)  # b and c; e has no IoU
    assert metrics["gender.disparity"] == pytest.approx(75.0 - 73.3333, abs=1e-3)
    assert metrics["gender.ratio"] == pytest.approx(73.3333 / 75.0, abs=1e-5)
    assert metrics["class.18_black_woman_senior.images"] == 0 and "class.18_black_woman_senior.miou" not in metrics
    assert metrics["coverage.iou_without_attributes"] == 1
    text = bias.render_markdown(report)
    assert "| woman | 3 | 73.33 |" in text and "| 18 black/woman/senior | 0 |  |  | empty |" in text


def _manifest(root, ids, split="test"):
    """A prepared manifest listing ``ids`` of eg1800 (the splits are all the stage reads from it)."""
    root.mkdir(parents=True)
    pd.DataFrame({"id": [f"eg1800/{i}" for i in ids], "source": "eg1800", "split": split,
                  "image": [f"images/eg1800/{i}.png" for i in ids], "mask": ""}).to_csv(root / "manifest.csv",
                                                                                      index=False)


@pytest.mark.realdata
def test_stage_runs_on_the_real_attribute_table(shared_datasets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    attributes = read_table(shared_datasets / "eg1800_test_attributes.csv")
    ids = sorted(attributes["image_id"].unique())
    seniors = set(attributes.loc[attributes["age"] == "senior", "image_id"])
    rng = np.random.default_rng(0)
    iou = np.clip(rng.normal(0.95, 0.02, len(ids)) - np.array([0.05 if i in seniors else 0 for i in ids]), 0, 1)
    models = tmp_path / "models" / "tiny"
    models.mkdir(parents=True)
    pd.DataFrame({"id": [f"eg1800/{i}" for i in ids], "image_key": ids, "iou": iou,
                  "boundary_f1": 0.5}).to_csv(models / "per_image.csv", index=False)
    _manifest(tmp_path / "data" / "prepared", ids)
    params = write_params(tmp_path / "params.yaml", {
        "paths": {"attributes": str(shared_datasets / "eg1800_test_attributes.csv")},
        "bias_report": {"architectures": ["tiny"], "peers": [], "min_group_size": 5, "bootstrap_resamples": 200}})
    assert br.main(["--params", str(params), "--quiet"]) == 0
    report_dir = tmp_path / "reports" / "bias" / "tiny"
    for name in ("groups.png", "histogram.png"):
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (report_dir / "report.md").read_text()
    assert "| senior | 6 |" in text and "![mIoU per group](groups.png)" in text
    metrics = json.loads((tmp_path / "metrics" / "bias" / "tiny.json").read_text())
    assert metrics["overall.images"] == 135 and metrics["age.senior.images"] == 6
    assert metrics["age.senior.miou"] < metrics["age.youth.miou"]  # the fabricated penalty shows
    assert metrics["race.black.images"] == 4  # below 5: flagged, not compared
    assert "race.disparity" in metrics
    groups = pd.read_csv(report_dir / "groups.csv", keep_default_na=False)
    assert groups.loc[(groups["attribute"] == "race") & (groups["group"] == "black"), "flag"].str.startswith(
        "small").all()


def test_stage_refuses_an_unknown_architecture(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"bias_report": {"architectures": ["tiny"], "peers": []}})
    assert br.main(["--params", str(params), "--arch", "other"]) == 2
    assert "other" in capsys.readouterr().err


def test_stage_reads_and_writes_where_the_paths_section_says(tmp_path, monkeypatch):
    """Per-image table, attributes, manifest, report folder and metrics all follow ``paths``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets" / "net").mkdir(parents=True)
    pd.DataFrame({"id": [f"eg1800/{i}" for i in IOU.index], "iou": IOU.to_numpy()}).to_csv(
        tmp_path / "nets" / "net" / "per_image.csv", index=False)
    ATTRIBUTES.to_csv(tmp_path / "people.csv", index=False)
    _manifest(tmp_path / "prep", ["a", "b"], split="train")
    write_params(tmp_path / "params.yaml", {
        "paths": {"models": "nets", "attributes": "people.csv", "prepared": "prep", "reports": "out",
                  "metrics": "figs"},
        "bias_report": {"architectures": ["net"], "peers": [], "min_group_size": 1, "bootstrap_resamples": 100}})
    assert br.main(["--params", "params.yaml", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "bias" / "net").iterdir() if not p.name.startswith(".")) == [
        "groups.csv", "groups.png", "histogram.png", "report.md"]
    metrics = json.loads((tmp_path / "figs" / "bias" / "net.json").read_text())
    assert metrics["overall.images"] == 5
    assert "| 11 asian/woman/youth | 1 | 1 | 2 |" in (tmp_path / "out" / "bias" / "net" / "report.md").read_text()
    assert not (tmp_path / "reports").exists() and not (tmp_path / "metrics").exists()


def test_build_report_takes_every_setting_from_its_caller():
    """No code default can disagree with params.yaml (it did: min_group_size 10 vs 5, 2000 vs 1000 resamples)."""
    with pytest.raises(TypeError, match="default_split.*min_group_size.*resamples.*level.*seed"):
        bias.build_report("net", IOU, ATTRIBUTES, {})


# ---------------------------------------------------------------- the peer beside each model


def _per_image(folder, iou: pd.Series):
    folder.mkdir(parents=True)
    pd.DataFrame({"id": [f"eg1800/{i}" for i in iou.index], "iou": iou.to_numpy()}).to_csv(
        folder / "per_image.csv", index=False)


def _project_with_a_peer(tmp_path):
    """Attributes, the prepared manifest and params naming ``net`` and the peer ``mediapipe``."""
    ATTRIBUTES.to_csv(tmp_path / "people.csv", index=False)
    _manifest(tmp_path / "data" / "prepared", list(IOU.index))
    return write_params(tmp_path / "params.yaml", {
        "paths": {"attributes": "people.csv"},
        "bias_report": {"architectures": ["net"], "peers": ["mediapipe"], "min_group_size": 1,
                        "bootstrap_resamples": 100}})


def test_every_report_shows_the_peer_and_the_peer_has_its_own(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _per_image(tmp_path / "models" / "net", IOU)
    peer_iou = pd.Series({"a": 0.99, "b": 0.97, "c": 0.95, "d": 0.93, "e": 0.91})
    params = _project_with_a_peer(tmp_path)
    assert br.main(["--params", str(params), "--quiet"]) == 2  # the peer is not evaluated yet
    assert "evaluate --peer" in capsys.readouterr().err
    _per_image(tmp_path / "models" / "peers" / "mediapipe", peer_iou)
    assert br.main(["--params", str(params), "--quiet"]) == 0
    ours = (tmp_path / "reports" / "bias" / "net" / "report.md").read_text()
    assert "## Against the peers" in ours and "| attribute | group | images | net | mediapipe (peer) |" in ours
    # man: b, c, e -> ours (80 + 70 + 50) / 3, the peer's (97 + 95 + 91) / 3
    man = next(line for line in ours.splitlines() if line.startswith("| gender | man |"))
    assert man.startswith("| gender | man | 3 | 66.67 (") and "| 94.33 (" in man
    assert "| all | all | 5 | 70.00 | 95.00 |" in ours
    theirs = (tmp_path / "reports" / "bias" / "peer_mediapipe" / "report.md").read_text()
    assert theirs.startswith("# Bias report: mediapipe (peer: a pretrained segmenter") and "Against" not in theirs
    metrics = json.loads((tmp_path / "metrics" / "bias" / "peer_mediapipe.json").read_text())
    assert metrics["overall.miou"] == pytest.approx(95.0) and metrics["gender.man.miou"] == pytest.approx(94.3333)
    assert json.loads((tmp_path / "metrics" / "bias" / "net.json").read_text())["overall.miou"] == pytest.approx(70)


def test_a_peer_alone_and_an_unlisted_peer(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _per_image(tmp_path / "models" / "peers" / "mediapipe", IOU)
    params = _project_with_a_peer(tmp_path)
    assert br.main(["--params", str(params), "--quiet", "--peer", "mediapipe"]) == 0  # net's table is not needed
    assert (tmp_path / "reports" / "bias" / "peer_mediapipe" / "groups.png").is_file()
    assert not (tmp_path / "reports" / "bias" / "net").exists()
    assert br.main(["--params", str(params), "--peer", "deeplab"]) == 2
    assert "not in bias_report.peers" in capsys.readouterr().err
