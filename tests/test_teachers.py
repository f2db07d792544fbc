"""Teachers behind one interface (pipeline/teachers/): flip views, fusion, agreement, real photos, model files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import pipeline.stages.pseudo_label as pl
from pipeline.errors import StageError
from pipeline.images import read_mask_png, read_rgb
from pipeline.labelling.prediction import FusedTeachers, ScoreParams, feature_columns, mask_features
from pipeline.manifest import read_manifest
from pipeline.metrics import iou
from pipeline.teachers.base import predict_views
from pipeline.teachers.fusion import fuse, fusion_weights, teacher_agreement
from pipeline.teachers.registry import DeepLabTeacher, MediaPipeTeacher
from params_helpers import quick_section, write_params
from teacher_helpers import BrightnessTeacher, rectangle_image, write_canonical

SCORE = ScoreParams(**quick_section("pseudo_label")["score"])


class FixedTeacher:
    """A stand-in teacher answering ``make(height, width)`` whatever the image shows."""

    def __init__(self, name: str, make):
        self.name, self.make, self.seen_ids = name, make, frozenset()

    def probabilities(self, images):
        return [self.make(*image.shape[:2]) for image in images]


def left_columns(columns: int, value: float = 0.9):
    """Probability ``value`` on the first ``columns`` columns of the frame, 1 - value elsewhere."""
    def make(height, width):
        p = np.full((height, width), 1 - value, np.float32)
        p[:, :columns] = value
        return p
    return make


# ---------------------------------------------------------------------------- flip views


def test_the_mirrored_view_is_mirrored_back_so_a_lopsided_teacher_disagrees_with_itself():
    image = np.zeros((6, 10, 3), np.uint8)
    (views,) = predict_views(FixedTeacher("left", left_columns(3)), [image], flip_tta=True)
    assert (views.plain[:, :3] > 0.5).all() and (views.plain[:, 3:] < 0.5).all()
    assert (views.mirrored[:, 7:] > 0.5).all() and (views.mirrored[:, :7] < 0.5).all()  # the right side, mirrored back
    assert np.allclose(views.probability, 0.5 * (views.plain + views.mirrored))
    (plain_only,) = predict_views(FixedTeacher("left", left_columns(3)), [image], flip_tta=False)
    assert plain_only.mirrored is None and np.array_equal(plain_only.probability, plain_only.plain)


def test_a_teacher_answering_at_the_wrong_size_is_refused():
    wrong = FixedTeacher("wrong", lambda h, w: np.zeros((h + 1, w), np.float32))
    with pytest.raises(RuntimeError, match="own size"):
        predict_views(wrong, [np.zeros((4, 4, 3), np.uint8)], flip_tta=False)


# ---------------------------------------------------------------------------- fusion on a drawn case


def test_fusion_methods_on_values_computed_by_hand():
    a = np.array([[0.9, 0.2]], np.float32)
    b = np.array([[0.5, 0.6]], np.float32)
    names = ["mediapipe", "mediapipe_landscape"]
    assert np.allclose(fuse([a, b], "mean", fusion_weights(names, "mean", {})), [[0.7, 0.4]])
    weights = fusion_weights(names, "weighted", {"mediapipe": 3.0, "mediapipe_landscape": 1.0})
    assert np.allclose(weights, [0.75, 0.25])
    assert np.allclose(fuse([a, b], "weighted", weights), [[0.8, 0.3]])
    # logit mean: sigmoid(0.5 * logit(0.9) + 0.5 * logit(0.5)) = sigmoid(0.5 * ln 9) = 3 / 4
    even = fusion_weights(names, "logit_mean", {"mediapipe": 1.0, "mediapipe_landscape": 1.0})
    assert fuse([a, b], "logit_mean", even)[0, 0] == pytest.approx(0.75, abs=1e-6)
    assert np.array_equal(fuse([a], "mean", np.ones(1)), a)  # one teacher: its own map


def test_fusion_weights_refuse_a_missing_or_unusable_weight():
    with pytest.raises(ValueError, match="no weight for teacher"):
        fusion_weights(["deeplab", "mediapipe"], "weighted", {"mediapipe": 1.0})
    with pytest.raises(ValueError, match="not all 0"):
        fusion_weights(["deeplab", "mediapipe"], "weighted", {"deeplab": 0.0, "mediapipe": 0.0})
    with pytest.raises(ValueError, match="fusion must be one of"):
        fusion_weights(["deeplab"], "vote", {})


def test_teacher_agreement_is_the_mean_pairwise_iou_and_nan_for_one_teacher():
    first, second, third = (np.zeros((10, 10), bool) for _ in range(3))
    first[:, :4] = True   # 40 pixels
    second[:, :8] = True  # 80 pixels: IoU with first 0.5
    third[:, :4] = True   # same as first: IoU 1 with first, 0.5 with second
    assert teacher_agreement([first, second]) == pytest.approx(0.5)
    assert teacher_agreement([first, second, third]) == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert math.isnan(teacher_agreement([first]))


def test_fused_teachers_give_the_mean_mask_agreement_and_one_mask_fraction_per_teacher():
    narrow = FixedTeacher("mediapipe", left_columns(4, 0.9))
    wide = FixedTeacher("mediapipe_landscape", left_columns(8, 0.7))
    runner = FusedTeachers([narrow, wide], "mean", {}, flip_tta=False)
    (prediction,) = runner.predict([np.zeros((10, 10, 3), np.uint8)])
    # (0.9 + 0.7) / 2, (0.1 + 0.7) / 2, (0.1 + 0.3) / 2: only the narrow teacher's columns stay person
    assert np.allclose(prediction.probability[:, :4], 0.8) and np.allclose(prediction.probability[:, 4:8], 0.4)
    assert np.allclose(prediction.probability[:, 8:], 0.2)
    assert prediction.mask[:, :4].all() and not prediction.mask[:, 4:].any()
    features = mask_features(prediction, SCORE)
    assert features["teacher_agreement"] == pytest.approx(0.5)
    assert features["mediapipe_mask_fraction"] == pytest.approx(0.4)
    assert features["mediapipe_landscape_mask_fraction"] == pytest.approx(0.8)
    assert features["mask_fraction"] == pytest.approx(0.4) and math.isnan(features["flip_agreement"])
    assert set(feature_columns(runner.names)) <= set(features)


def test_the_deeplab_adapter_answers_at_the_images_own_size():
    teacher = DeepLabTeacher(BrightnessTeacher().eval(), 32, device="cpu", channels_last=False, bfloat16=False,
                             seen_ids=["ccp/0001"])
    image, truth = rectangle_image(50, 70, (10, 5, 40, 45))
    (probability,) = teacher.probabilities([image])
    assert probability.shape == (50, 70) and iou(probability > 0.5, truth) > 0.85
    assert teacher.seen_ids == {"ccp/0001"}


# ---------------------------------------------------------------------------- model files


def test_a_missing_or_broken_mediapipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="model file not found"):
        MediaPipeTeacher("mediapipe", tmp_path / "absent.tflite", device="cpu", batch_size=1)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"this is not a flatbuffer")
    with pytest.raises(StageError) as caught:
        MediaPipeTeacher("mediapipe_landscape", broken, device="cpu", batch_size=1)
    assert "broken.tflite" in str(caught.value) and "\n" not in str(caught.value)


def test_the_stage_names_a_missing_model_file_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_canonical(tmp_path / "prepared", [{"id": "pool/a", "split": "unlabelled",
                                             "image": rectangle_image(20, 20, (2, 2, 10, 10))[0]}])
    params = write_params(tmp_path / "params.yaml", {
        "paths": {"prepared": str(tmp_path / "prepared"), "pseudo": str(tmp_path / "pseudo"),
                  "metrics": str(tmp_path / "metrics")},
        "pseudo_label": {"teachers": ["mediapipe"], "pool_crop": "none", "device": "cpu",
                         "mediapipe_model_files": {"general": str(tmp_path / "gone.tflite")},
                         "validation": {"data": [], "allow_empty_validation": True}}})
    assert pl.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "gone.tflite" in err and "model file not found" in err and "Traceback" not in err
    assert not (tmp_path / "pseudo").exists()


@pytest.mark.parametrize("changes, named", [
    ({"teachers": []}, "teachers"),
    ({"teachers": ["mediapipe", "mediapipe"]}, "named more than once"),
    ({"teachers": ["sam"]}, "teachers"),
    ({"fusion": "vote"}, "fusion"),
    ({"fusion": "weighted", "fusion_weights": {"mediapipe": 0.0, "mediapipe_landscape": 0.0}}, "fusion_weights"),
])
def test_bad_teacher_params_are_refused_naming_the_key(changes, named):
    with pytest.raises(ValueError, match=named):
        pl.PseudoLabelParams.model_validate(quick_section("pseudo_label", **changes))


# ---------------------------------------------------------------------------- real photos


def _ccp_labelled(shared_datasets, count: int):
    from teacher_helpers import ccp_items

    return [(read_rgb(i.image_path), i.read_mask(None)) for i in list(ccp_items(shared_datasets).values())[:count]]


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["mediapipe", "mediapipe_landscape"])
def test_each_mediapipe_teacher_masks_real_photos_aligned_and_above_a_floor(shared_datasets, name):
    teacher = MediaPipeTeacher(name, None, device="cpu", batch_size=4)
    samples = _ccp_labelled(shared_datasets, 4)
    views = predict_views(teacher, [image for image, _ in samples], flip_tta=True)
    scores = []
    for (image, truth), view in zip(samples, views):
        assert view.probability.shape == image.shape[:2] == truth.shape
        assert view.probability.dtype == np.float32 and 0 <= view.probability.min() <= view.probability.max() <= 1
        assert iou(view.plain > 0.5, view.mirrored > 0.5) > 0.85  # the mirrored view lands on the same person
        scores.append(iou(view.probability > 0.5, truth))
        shifted = np.roll(view.probability > 0.5, 25, axis=1)  # a mask 25 px off scores clearly lower
        assert iou(shifted, truth) < scores[-1] - 0.05
    assert min(scores) > 0.6 and np.mean(scores) > 0.8, scores  # landscape on these 4: 0.68-0.97, mean 0.84


@pytest.mark.realdata
@pytest.mark.parametrize("teachers", [["mediapipe", "mediapipe_landscape"], ["mediapipe", "mediapipe_pose"]])
def test_the_stage_pseudo_labels_real_photos_with_two_fused_mediapipe_teachers(tmp_path, monkeypatch, shared_datasets,
                                                                               teachers):
    monkeypatch.chdir(tmp_path)
    samples = _ccp_labelled(shared_datasets, 6)
    write_canonical(tmp_path / "prepared",
                    [{"id": f"pool/{i}", "split": "unlabelled", "image": image} for i, (image, _) in enumerate(samples[:3])]
                    + [{"id": f"ccp/{i}", "split": "val", "image": image, "mask": mask}
                       for i, (image, mask) in enumerate(samples[3:])])
    params = write_params(tmp_path / "params.yaml", {
        "paths": {"prepared": str(tmp_path / "prepared"), "pseudo": str(tmp_path / "pseudo"),
                  "metrics": str(tmp_path / "metrics")},
        "pseudo_label": {"teachers": teachers, "pool_crop": "none", "pose_framing": "full_body", "device": "cpu",
                         "validation": {"data": [{"dataset": "prepared", "splits": ["val"]}], "max_images": None}}})
    assert pl.main(["--params", str(params), "--quiet"]) == 0
    scores = pd.read_csv(tmp_path / "pseudo" / "scores.csv")
    contract = ["id", "origin", "mask_sha256", "confidence", "boundary_certainty", "flip_agreement",
                "largest_component_share", "presence", "components", "mask_fraction", "teacher_agreement",
                *(f"{name}_mask_fraction" for name in teachers), "score"]
    assert set(contract) <= set(scores.columns) and len(scores) == 3
    shares = scores[[c for c in contract[3:] if c not in ("components",)]]
    assert ((shares >= 0) & (shares <= 1)).all().all()
    assert (scores["teacher_agreement"] > 0.7).all()
    manifest = read_manifest(tmp_path / "pseudo")
    for row in manifest.to_dict("records"):
        assert read_mask_png(tmp_path / "pseudo" / row["mask"]).shape == (row["height"], row["width"])
    validation = pd.read_csv(tmp_path / "metrics" / "pseudo_label_validation.csv")
    assert len(validation) == 3 and set(validation["evidence"]) == {"ccp/val"}
    assert validation["iou"].mean() > 0.85
    assert {*(f"{name}_iou" for name in teachers), "teacher_agreement"} <= set(validation.columns)


# ---------------------------------------------------------------------------- portrait-shaped pool


class FacesByShape:
    """Stand-in face detector: the faces of an image are looked up by its (height, width)."""

    def __init__(self, faces: dict):
        self.faces = faces

    def detect(self, images):
        return [self.faces.get(image.shape[:2], []) for image in images]


def test_pool_photos_become_face_crops_with_image_and_mask_cut_together(tmp_path, monkeypatch):
    from pipeline.crops.pool import PoolCropper
    from pipeline.detectors import Face

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pl, "load_teacher", lambda path, expected_config=None: (
        BrightnessTeacher().eval(), {"input_size": 64, "train_ids": []}))
    # a standing "person" (bright, 80 px wide, 500 high) with a face near the top; a second photo without a face
    person, _ = rectangle_image(600, 400, (160, 50, 240, 550))
    two, _ = rectangle_image(600, 420, (40, 50, 120, 550))
    two[50:550, 260:340] = 235  # a second person in the same photo, with its own face
    faceless, _ = rectangle_image(500, 400, (160, 50, 240, 450))
    faces = {(600, 400): [Face((175.0, 60.0, 225.0, 120.0), 0.99)],
             (600, 420): [Face((55.0, 60.0, 105.0, 120.0), 0.99), Face((275.0, 60.0, 325.0, 120.0), 0.98)]}
    monkeypatch.setattr(pl, "make_pool_cropper", lambda geometry, quality, detector: PoolCropper(
        FacesByShape(faces), geometry, quality))
    write_canonical(tmp_path / "prepared", [{"id": "web/one", "split": "unlabelled", "image": person},
                                            {"id": "web/two", "split": "unlabelled", "image": two},
                                            {"id": "web/none", "split": "unlabelled", "image": faceless}])
    params = write_params(tmp_path / "params.yaml", {
        "paths": {"prepared": str(tmp_path / "prepared"), "pseudo": str(tmp_path / "pseudo"),
                  "metrics": str(tmp_path / "metrics"), "teacher": str(tmp_path / "teacher.pt")},
        "teacher": {"encoder_name": "resnet18"},
        "pseudo_label": {"teachers": ["deeplab"], "pool_crop": "faces", "device": "cpu", "bfloat16": False,
                         "validation": {"data": [], "allow_empty_validation": True}}})
    assert pl.main(["--params", str(params), "--quiet"]) == 0
    out = tmp_path / "pseudo"
    manifest = read_manifest(out).set_index("id")
    assert sorted(manifest.index) == ["pseudo/web_one_f0", "pseudo/web_two_f0", "pseudo/web_two_f1"]
    assert manifest.loc["pseudo/web_two_f1", "origin"] == "web/two" and manifest["origin"].nunique() == 2
    width, height = quick_section("crop_portraits")["geometry"]["output_width"], \
        quick_section("crop_portraits")["geometry"]["output_height"]
    for sample_id, row in manifest.iterrows():
        image = read_rgb(out / row["image"])  # written into the output: a crop, not the pool photo
        mask = read_mask_png(out / row["mask"])
        assert image.shape[:2] == mask.shape == (height, width) == (row["height"], row["width"])
        bright = image.mean(axis=2) > 128
        assert iou(mask, bright) > 0.9, sample_id  # the mask lies on the person in the crop
        assert 0.2 < mask.mean() < 0.9  # a portrait: the person fills part of the frame, not all of it
        columns = np.flatnonzero(bright.any(axis=0))
        assert abs(columns.mean() - width / 2) < 0.15 * width  # cut around its own face: the person is centred
    scores = pd.read_csv(out / "scores.csv")
    assert sorted(scores["id"]) == sorted(manifest.index) and scores["id"].is_unique
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["id"].tolist() == ["web/none"] and skipped["reason"].iloc[0].startswith("no portrait crop")
    metrics = pd.read_json(tmp_path / "metrics" / "pseudo_label.json", typ="series")
    assert metrics["pool"]["images"] == 3 and metrics["pool"]["photos"] == 2


def test_a_bad_face_crop_param_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pl, "load_teacher", lambda path, expected_config=None: (
        BrightnessTeacher().eval(), {"input_size": 64, "train_ids": []}))
    write_canonical(tmp_path / "prepared", [{"id": "web/a", "split": "unlabelled",
                                             "image": rectangle_image(40, 30, (5, 5, 20, 30))[0]}])
    params = write_params(tmp_path / "params.yaml", {
        "paths": {"prepared": str(tmp_path / "prepared"), "pseudo": str(tmp_path / "pseudo"),
                  "metrics": str(tmp_path / "metrics")},
        "crop_portraits": {"geometry": {"output_width": 5}},
        "pseudo_label": {"teachers": ["deeplab"], "pool_crop": "faces", "device": "cpu", "bfloat16": False,
                         "validation": {"data": [], "allow_empty_validation": True}}})
    assert pl.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "output_width" in err and "crop_portraits" in err and "Traceback" not in err
    assert not (tmp_path / "pseudo").exists()
