"""Pseudo-labelling: the quality score, its validation, and the stage's outputs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import pipeline.stages.pseudo_label as pl
from pipeline.checkpoint import save_checkpoint
from pipeline.images import read_mask_png, read_rgb
from pipeline.labelling.prediction import (ScoreParams, combine_score, score_components,
                                           teacher_disagreement)
from pipeline.manifest import read_manifest
from pipeline.metrics import failure_auc, roc_auc
from pipeline.review.pool import disagreement_path_for, read_pool
from pipeline.teachers.deeplab import TEACHER_ARCH, build_teacher, teacher_config
from params_helpers import quick_section, write_params
from teacher_helpers import BrightnessTeacher, DrawnTeacher, count_teacher_calls, rectangle_image, write_canonical

SCORE = ScoreParams(**quick_section("pseudo_label")["score"])


def soft_mask(mask: np.ndarray, confidence: float) -> np.ndarray:
    """Probabilities that agree with ``mask`` with the given margin from 0.5."""
    return np.where(mask, 0.5 + confidence / 2, 0.5 - confidence / 2).astype(np.float32)


def score_of(probability: np.ndarray, flip_iou: float = 1.0) -> float:
    return combine_score(score_components(probability, flip_iou, SCORE), SCORE.weights)


# ---------------------------------------------------------------------------- score


def test_a_clean_confident_blob_scores_above_a_fragmented_uncertain_mask():
    yy, xx = np.mgrid[:120, :80]
    blob = (yy - 60) ** 2 / 45**2 + (xx - 40) ** 2 / 25**2 < 1
    clean = soft_mask(blob, 0.98)
    clean[np.logical_xor(blob, np.roll(blob, 1, axis=0))] = 0.6  # a thin uncertain rim, as at a real edge
    rng = np.random.default_rng(0)
    fragments = rng.random((120, 80)) < 0.3
    messy = soft_mask(fragments, 0.3)

    clean_parts = score_components(clean, 0.97, SCORE)
    messy_parts = score_components(messy, 0.4, SCORE)
    assert clean_parts["components"] == 1 and clean_parts["largest_component_share"] == 1.0
    assert messy_parts["components"] > 10 and messy_parts["largest_component_share"] < 0.2
    assert clean_parts["boundary_certainty"] > 0.8 > messy_parts["boundary_certainty"]
    assert clean_parts["confidence"] > messy_parts["confidence"]
    assert score_of(clean, 0.97) > 0.8 > 0.3 > score_of(messy, 0.4)


def test_each_failure_lowers_the_score_on_its_own():
    yy, xx = np.mgrid[:100, :100]
    blob = (yy - 50) ** 2 + (xx - 50) ** 2 < 30**2
    base = score_of(soft_mask(blob, 0.98))
    assert score_of(soft_mask(blob, 0.98), flip_iou=0.5) < base  # mirror disagreement
    assert score_of(soft_mask(blob, 0.3)) < base  # unsure everywhere
    split = blob.copy()
    split[:, 45:55] = False
    assert score_of(soft_mask(split, 0.98)) < base  # broken into pieces
    empty = score_components(soft_mask(np.zeros((100, 100), bool), 0.98), 1.0, SCORE)
    assert empty["presence"] == 0.0
    assert score_of(soft_mask(np.zeros((100, 100), bool), 0.98)) < 0.1  # no person found


def test_combine_score_skips_missing_components():
    parts = {"confidence": 0.81, "boundary_certainty": 1.0, "flip_agreement": float("nan"),
             "largest_component_share": 1.0, "presence": 1.0}
    assert combine_score(parts, SCORE.weights) == pytest.approx(0.81 ** 0.25)
    assert combine_score(parts, {"confidence": 1.0}) == pytest.approx(0.81)


def test_roc_auc_and_its_failure_direction():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert roc_auc([0.5, 0.5], [True, False]) == 0.5
    assert math.isnan(roc_auc([0.3, 0.4], [True, True]))
    # low score on the bad pseudo-labels (IoU < 0.9) = a perfect failure detector
    assert failure_auc(scores=[0.1, 0.2, 0.9, 0.95], ious=[0.3, 0.5, 0.95, 0.97], threshold=0.9) == 1.0
    assert failure_auc(scores=[0.9, 0.2], ious=[0.3, 0.95], threshold=0.9) == 0.0


# ---------------------------------------------------------------------------- the stage


@pytest.fixture
def stand_in_teacher(monkeypatch, tmp_path):
    """Replace the checkpoint loader: the 'teacher' marks bright pixels, so true masks are known.

    The project is ``tmp_path`` (where stage_params writes params.yaml).
    """
    monkeypatch.chdir(tmp_path)
    seen_in_training = ["val/trained_on"]

    def fake_load(path, expected_config=None):
        return BrightnessTeacher().eval(), {"input_size": 64, "train_ids": seen_in_training}

    monkeypatch.setattr(pl, "load_teacher", fake_load)


def stage_params(tmp_path, pool_root, validate: bool = True, **overrides):
    """Params for a pool in ``pool_root`` (paths.prepared) whose split ``val`` rows validate the score."""
    paths = {"teacher": str(tmp_path / "teacher.pt"), "prepared": str(pool_root),
             "pseudo": str(tmp_path / "data" / "pseudo"), "metrics": str(tmp_path / "metrics")}
    section = {"teachers": ["deeplab"], "pool_crop": "none", "batch_size": 2, "flip_tta": True, "device": "cpu", "bfloat16": False,
               "validation": {"data": [{"dataset": "prepared", "splits": ["val"]}], "iou_threshold": 0.9}}
    section.update(overrides)
    if not validate:  # no validation set: allowed explicitly
        section["validation"] = {"data": [], "allow_empty_validation": True}
    return write_params(tmp_path / "params.yaml", {"paths": paths, "teacher": {"encoder_name": "resnet18"},
                                                   "pseudo_label": section})


def test_stage_writes_aligned_masks_scores_and_skips(tmp_path, stand_in_teacher):
    boxes = {"pool/a": (90, 60, (10, 5, 40, 50)), "pool/b": (50, 130, (80, 10, 120, 45)),
             "pool/c": (64, 64, (20, 20, 44, 44))}
    pool_root = tmp_path / "prepared"
    samples = [{"id": i, "split": "unlabelled", "image": rectangle_image(h, w, box)[0]} for i, (h, w, box) in boxes.items()]
    samples.append({"id": "other/x", "split": "train", "image": rectangle_image(8, 8, (0, 0, 4, 4))[0],
                    "mask": np.zeros((8, 8), bool)})
    # validation: two right masks, one wrong one, one the teacher was trained on
    val = []
    for key, box, wrong in (("good1", (5, 5, 30, 30), False), ("good2", (10, 0, 50, 40), False),
                            ("bad", (0, 0, 20, 60), True), ("trained_on", (5, 5, 30, 30), False)):
        image, mask = rectangle_image(60, 60, box)
        val.append({"id": f"val/{key}", "split": "val", "image": image, "mask": ~mask if wrong else mask})
    write_canonical(pool_root, samples + val + [{"id": "pool/broken", "split": "unlabelled",
                                                 "image": np.zeros((8, 8, 3), np.uint8)}])
    (pool_root / "images" / "pool" / "broken.png").write_bytes(b"not a png")

    assert pl.main(["--params", str(stage_params(tmp_path, pool_root)), "--quiet"]) == 0
    out = tmp_path / "data" / "pseudo"
    manifest = read_manifest(out)
    assert sorted(manifest["origin"]) == ["pool/a", "pool/b", "pool/c"]
    assert set(manifest["split"]) == {"train"} and set(manifest["source"]) == {"pseudo"}
    for row in manifest.to_dict("records"):
        h, w, box = boxes[row["origin"]]
        mask = read_mask_png(out / row["mask"])
        image = read_rgb(out / row["image"])  # the image path points back into the pool
        assert mask.shape == image.shape[:2] == (h, w) == (row["height"], row["width"])
        _, truth = rectangle_image(h, w, box)
        assert (mask & truth).sum() / (mask | truth).sum() > 0.85

    scores = pd.read_csv(out / "scores.csv")
    assert scores["score"].is_monotonic_increasing and len(scores) == 3  # likely failures first
    for row in scores.to_dict("records"):
        mask_file = out / manifest.set_index("id").loc[row["id"], "mask"]
        assert row["mask_sha256"] == hashlib.sha256(mask_file.read_bytes()).hexdigest()
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["id"].tolist() == ["pool/broken"] and "not an image" in skipped["reason"].iloc[0]

    metrics = json.loads((tmp_path / "metrics" / "pseudo_label.json").read_text())
    assert metrics["pool"] == {**metrics["pool"], "images": 3, "skipped": 1, "flip_tta": True, "fusion": "mean"}
    assert metrics["pool"]["teachers"]["deeplab"]["input_size"] == 64
    validation = metrics["validation"]
    assert validation["images"] == 3 and validation["excluded_seen_in_training"] == 1
    assert validation["below_threshold"] == 1
    per_image = pd.read_csv(tmp_path / "metrics" / "pseudo_label_validation.csv").set_index("id")
    assert per_image.loc["val/bad", "iou"] < 0.2 < 0.85 < per_image.loc["val/good1", "iou"]
    assert (per_image["evidence"] == "val/val").all() and (per_image["origin"] == per_image.index).all()
    assert per_image["deeplab_iou"].tolist() == per_image["iou"].tolist()  # one teacher: fused = alone
    assert per_image["teacher_agreement"].isna().all()  # NaN with one teacher (the contract with score_pool)
    assert (scores["deeplab_mask_fraction"] == scores["mask_fraction"]).all()
    assert not (out / "disagreement").exists()  # one teacher: no disagreement map (the view says so)


def test_stage_respects_max_images_and_no_tta(tmp_path, stand_in_teacher):
    pool_root = tmp_path / "prepared"
    write_canonical(pool_root, [{"id": f"pool/{i}", "split": "unlabelled",
                                 "image": rectangle_image(40, 40, (i, i, 20 + i, 30))[0]} for i in range(4)])
    params = stage_params(tmp_path, pool_root, validate=False, max_images=2, flip_tta=False)
    assert pl.main(["--params", str(params)]) == 0
    scores = pd.read_csv(tmp_path / "data" / "pseudo" / "scores.csv")
    assert sorted(scores["origin"]) == ["pool/0", "pool/1"]
    assert scores["flip_agreement"].isna().all() and scores["score"].notna().all()


def test_stage_refuses_a_teacher_checkpoint_of_another_encoder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = teacher_config("resnet18", 1, 16)
    save_checkpoint(tmp_path / "teacher.pt", {"arch": TEACHER_ARCH, "config": config,
                                              "model": build_teacher(config).state_dict()})
    params = write_params(tmp_path / "params.yaml", {
        "teacher": {"encoder_name": "mobilenet_v2", "decoder_channels": 16},
        "pseudo_label": {"teachers": ["deeplab"], "pool_crop": "none"},
        "paths": {"teacher": str(tmp_path / "teacher.pt"), "pseudo": str(tmp_path / "pseudo")}})
    assert pl.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "encoder_name" in err and "mobilenet_v2" in err
    assert not (tmp_path / "pseudo").exists()


@pytest.mark.realdata
def test_real_unlabelled_photos_get_masks_of_their_own_size(tmp_path, shared_datasets, stand_in_teacher):
    ccp = shared_datasets / "ccp"
    labelled = {p.stem for p in (ccp / "annotations" / "pixel-level").glob("*.mat")}
    photos = [p for p in sorted((ccp / "photos").glob("*.jpg")) if p.stem not in labelled][:3]
    pool_root = tmp_path / "prepared"
    write_canonical(pool_root, [{"id": f"ccp/{p.stem}", "split": "unlabelled",
                                 "image": np.asarray(Image.open(p).convert("RGB"))} for p in photos])
    assert pl.main(["--params", str(stage_params(tmp_path, pool_root, validate=False))]) == 0
    manifest = read_manifest(tmp_path / "data" / "pseudo")
    assert len(manifest) == 3
    for row in manifest.to_dict("records"):
        width, height = Image.open(ccp / "photos" / (row["origin"].split("/")[1] + ".jpg")).size
        assert read_mask_png(tmp_path / "data" / "pseudo" / row["mask"]).shape == (height, width)


def test_every_pseudo_label_key_comes_from_params():
    """No code default can disagree with params.yaml (it had the IoU threshold at 0.9 vs 0.4)."""
    from pipeline.stages.pseudo_label import PseudoLabelParams, RayParams, ValidationParams

    for model in (PseudoLabelParams, ScoreParams, ValidationParams, RayParams):
        assert all(info.is_required() for info in model.model_fields.values()), model
    section = quick_section("pseudo_label")
    assert PseudoLabelParams.model_validate(section).validation.iou_threshold == section["validation"]["iou_threshold"]


def test_quiet_turns_the_progress_bars_off(tmp_path, stand_in_teacher, capsys):
    pool_root = tmp_path / "prepared"
    write_canonical(pool_root, [{"id": f"pool/{i}", "split": "unlabelled",
                                 "image": rectangle_image(40, 40, (i, i, 20 + i, 30))[0]} for i in range(2)])
    params = str(stage_params(tmp_path, pool_root, validate=False))
    assert pl.main(["--params", params]) == 0
    assert "pseudo-label" in capsys.readouterr().err  # tqdm writes to stderr
    assert pl.main(["--params", params, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------- teacher-disagreement maps


def test_teacher_disagreement_marks_pixels_where_not_all_teachers_agree():
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[1, 0, 1, 0]], bool)
    c = np.array([[1, 1, 1, 0]], bool)
    assert teacher_disagreement([a]) is None
    assert teacher_disagreement([a, b]).tolist() == [[False, True, True, False]]
    assert teacher_disagreement([a, a]).tolist() == [[False] * 4]
    assert teacher_disagreement([a, b, c]).tolist() == [[False, True, True, False]]
    assert teacher_disagreement([a, c, c]).tolist() == [[False, False, True, False]]  # one dissenter is enough


@pytest.fixture
def two_drawn_teachers(monkeypatch, tmp_path):
    """``deeplab`` = the bright rectangle, ``mediapipe`` = the left half; returns the batch sizes labelled."""
    monkeypatch.chdir(tmp_path)

    def fake_load_teachers(settings, paths, teacher_settings, device):
        teachers = {"deeplab": DrawnTeacher("deeplab", None), "mediapipe": DrawnTeacher("mediapipe", 0.5)}
        return [teachers[n] for n in settings.teachers], {n: {"trained_on": 0} for n in settings.teachers}

    monkeypatch.setattr(pl, "load_teachers", fake_load_teachers)
    return count_teacher_calls(monkeypatch)


def test_two_teachers_write_a_disagreement_map_beside_each_mask(tmp_path, two_drawn_teachers):
    boxes = {"pool/a": (40, 60, (10, 5, 50, 30)), "pool/b": (50, 30, (2, 10, 12, 45))}
    pool_root = tmp_path / "prepared"
    write_canonical(pool_root, [{"id": i, "split": "unlabelled", "image": rectangle_image(h, w, box)[0]}
                                for i, (h, w, box) in boxes.items()])
    params = str(stage_params(tmp_path, pool_root, validate=False, teachers=["deeplab", "mediapipe"],
                              flip_tta=False, work_dir=str(tmp_path / "work")))
    assert pl.main(["--params", params, "--quiet"]) == 0
    out = tmp_path / "data" / "pseudo"
    manifest = read_manifest(out)
    assert sorted(manifest["origin"]) == sorted(boxes)
    maps = {}
    for row in manifest.to_dict("records"):
        h, w, box = boxes[row["origin"]]
        _, bright = rectangle_image(h, w, box)
        left = np.zeros((h, w), bool)
        left[:, : w // 2] = True
        path = disagreement_path_for(out, row["mask"])  # where the review view looks
        assert path == out / "disagreement" / "pseudo" / Path(row["mask"]).name
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == read_mask_png(out / row["mask"]).shape == (h, w)
        assert set(np.unique(pixels)) == {0, 255}
        assert np.array_equal(pixels == 255, bright ^ left)
        maps[row["id"]] = path.read_bytes()
    items, _ = read_pool(out)  # what the review view is handed
    assert {i.id: Path(i.disagreement_path).read_bytes() for i in items} == maps

    # a torn map in the work folder: that item is redone, and the outputs come out the same
    torn = sorted((tmp_path / "work").glob("*/items/*/*/*.disagreement.png"))
    assert len(torn) == 2
    torn[0].write_bytes(torn[0].read_bytes()[:10])
    two_drawn_teachers.clear()
    assert pl.main(["--params", params, "--quiet"]) == 0
    assert sum(two_drawn_teachers) == 1
    manifest = read_manifest(out)
    assert {r["id"]: disagreement_path_for(out, r["mask"]).read_bytes() for r in manifest.to_dict("records")} == maps

    # one teacher: the same pool gets no map at all
    one = str(stage_params(tmp_path, pool_root, validate=False, teachers=["deeplab"], flip_tta=False,
                           work_dir=str(tmp_path / "work")))
    assert pl.main(["--params", one, "--quiet"]) == 0
    assert len(read_manifest(out)) == 2 and not (out / "disagreement").exists()
    assert [i.disagreement_path for i in read_pool(out)[0]] == ["", ""]
    assert not list((tmp_path / "work").glob("*/items/*/*/*.disagreement.png"))  # old work pruned
