"""MediaPipe's pose model as a person segmenter (pipeline.teachers.mediapipe_pose) and the PAD op it needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import StageError
from pipeline.metrics import iou
from pipeline.teachers import mediapipe_pose as mpp
from pipeline.teachers.mediapipe import TfliteNetwork, packaged_model_file
from pipeline.teachers.mediapipe_pose import INPUT_SIZE, MediaPipePoseSegmenter, frame, looks_like_a_portrait
from pipeline.teachers.tflite import TfliteGraph, TfliteOperator, TfliteTensor, read_tflite
from teacher_helpers import labelled_photos

MASK_HEAD_PARAMETERS = 1_601_697  # the ops the mask needs; the whole file (landmarks too) holds more


@pytest.fixture(scope="module")
def bodies():
    return MediaPipePoseSegmenter("full_body")


@pytest.fixture(scope="module")
def portraits():
    return MediaPipePoseSegmenter("portrait")


# ---------------------------------------------------------------- the model file


def test_it_loads_from_the_wheel_pruned_to_the_mask(bodies):
    assert sum(p.numel() for p in bodies.parameters()) == MASK_HEAD_PARAMETERS
    assert {op.kind for op in bodies.network.ops} <= {"CONV_1X1", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "PAD",
                                                      "RESIZE_BILINEAR"}  # no landmark head (MAX_POOL, RESHAPE)
    graph = read_tflite(bodies.model_file)
    assert len(graph.outputs) == 5
    with pytest.raises(StageError, match="5 outputs; name the ones wanted"):
        TfliteNetwork(graph)


def test_a_missing_or_wrong_model_file_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(StageError, match="model file not found.*pose_landmark_full"):
        MediaPipePoseSegmenter("full_body", tmp_path / "absent.tflite")
    with pytest.raises(StageError, match="not MediaPipe's pose landmark model"):
        MediaPipePoseSegmenter("full_body", packaged_model_file("general"))  # a selfie model given as the pose model
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(StageError, match="not a TFLite model"):
        MediaPipePoseSegmenter("full_body", garbage)
    changed = tmp_path / "pose_landmark_full.tflite"
    data = bytearray(Path(mpp.wheel_file(mpp.MODEL_FILE, "pose", "")).read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    monkeypatch.setattr(mpp, "wheel_file", lambda *args: changed)
    with pytest.raises(StageError, match="damaged model file"):
        MediaPipePoseSegmenter("full_body")


def test_an_unknown_framing_is_refused():
    with pytest.raises(ValueError, match="framing must be one of full_body, portrait, per_image"):
        MediaPipePoseSegmenter("selfie")
    with pytest.raises(ValueError, match="framing"):
        frame(np.zeros((10, 10, 3), np.uint8), "wide")


# ---------------------------------------------------------------- framing


def test_a_body_is_centred_and_a_portrait_sits_high_with_room_below():
    image = np.full((800, 400, 3), 200, np.uint8)  # tall: its height is the long side
    framed, (y, x, h, w) = frame(image, "full_body")
    assert framed.shape == (3, INPUT_SIZE, INPUT_SIZE) and framed.dtype == np.float32
    assert (y, x, h, w) == (0, 64, 256, 128)
    assert np.allclose(framed[:, y:y + h, x:x + w], 200 / 255) and framed[:, :, :x].max() == 0
    framed, (y, x, h, w) = frame(image, "portrait")
    assert (h, w) == (102, 51) and y == 13 and x == (INPUT_SIZE - 51) // 2  # 2.5x the long side, 5% from the top
    assert framed[:, y + h:].max() == 0 and np.allclose(framed[:, y:y + h, x:x + w], 200 / 255)


def test_a_portrait_is_a_mask_whose_bottom_band_is_mostly_person():
    torso = np.zeros((200, 100), np.float32)
    torso[120:, 20:80] = 0.9  # 60% of the bottom rows
    feet = np.zeros((200, 100), np.float32)
    feet[20:, 40:60] = 0.9  # 20%
    assert looks_like_a_portrait(torso)
    assert not looks_like_a_portrait(feet) and not looks_like_a_portrait(np.zeros((200, 100), np.float32))
    torso[-9:] = 0.0  # the band is the bottom 10 rows: 1 of them left at 60% is under half
    assert not looks_like_a_portrait(torso)


@pytest.mark.realdata
def test_per_image_framing_frames_bodies_as_bodies_and_portraits_as_portraits(shared_datasets, bodies, portraits):
    per_image = MediaPipePoseSegmenter("per_image")
    bodies_ = labelled_photos(shared_datasets, "ccp", ["0002", "0039", "0080"])
    portraits_ = labelled_photos(shared_datasets, "eg1800", ["00002", "00005", "00008"])
    images = [p[1] for p in portraits_ + bodies_]  # mixed in one batch
    chosen = per_image.predict(images, batch_size=6)
    expected = portraits.predict(images[:3], batch_size=3) + bodies.predict(images[3:], batch_size=3)
    for got, want in zip(chosen, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_forward_refuses_an_unframed_batch(bodies):
    with pytest.raises(ValueError, match=r"expected a batch \(N, 3, 256, 256\)"):
        bodies(torch.zeros(1, 3, 128, 128))


# ---------------------------------------------------------------- real photos


@pytest.mark.realdata
@pytest.mark.parametrize("source, keys, framing, floor", [
    ("ccp", ["0002", "0039", "0080"], "full_body", 0.93),      # CCP val bodies: measured 0.952-0.960
    ("eg1800", ["00002", "00005", "00008"], "portrait", 0.87),  # EG1800 test portraits: 0.895-0.975
])
def test_masks_on_real_photos_have_their_size_are_aligned_and_above_a_floor(shared_datasets, bodies, portraits,
                                                                          source, keys, framing, floor):
    model = {"full_body": bodies, "portrait": portraits}[framing]
    photos = labelled_photos(shared_datasets, source, keys)
    for (photo_id, image, truth), probability in zip(photos, model.predict([p[1] for p in photos], batch_size=2)):
        assert probability.shape == truth.shape == image.shape[:2] and probability.dtype == np.float32
        assert 0 <= probability.min() <= probability.max() <= 1
        mask = probability > 0.5
        where_it_is = iou(mask, truth)
        assert where_it_is >= floor, (photo_id, where_it_is)
        for axis in (0, 1):
            for shift in (-12, 12):
                assert iou(np.roll(mask, shift, axis=axis), truth) < where_it_is, (photo_id, axis, shift)


@pytest.mark.realdata
def test_a_portrait_framed_as_a_body_is_segmented_badly(shared_datasets, bodies, portraits):
    """Why ``framing`` exists: these portraits score 0.52-0.61 framed as bodies, 0.90-0.98 as portraits."""
    photos = labelled_photos(shared_datasets, "eg1800", ["00002", "00005", "00008"])
    images = [p[1] for p in photos]
    as_bodies = [iou(p > 0.5, t) for p, (_, _, t) in zip(bodies.predict(images, batch_size=3), photos)]
    as_portraits = [iou(p > 0.5, t) for p, (_, _, t) in zip(portraits.predict(images, batch_size=3), photos)]
    assert max(as_bodies) < 0.75 < min(as_portraits)


# ---------------------------------------------------------------- the PAD op


def _pad_graph(paddings: list[list[int]]) -> TfliteGraph:
    tensors = {0: TfliteTensor(0, "input", (1, 4, 5, 2), "FLOAT32"),
               1: TfliteTensor(1, "paddings", (4, 2), "INT32", np.array(paddings, np.int32)),
               2: TfliteTensor(2, "output", (1, 4 + sum(paddings[1]), 5 + sum(paddings[2]), 2 + sum(paddings[3])),
                               "FLOAT32")}
    return TfliteGraph(Path("pad.tflite"), tensors, [TfliteOperator("PAD", (0, 1), (2,), {})], (0,), (2,))


def test_pad_adds_zeros_where_tflite_does_and_refuses_channel_padding():
    network = TfliteNetwork(_pad_graph([[0, 0], [1, 2], [3, 0], [0, 0]]))
    x = torch.arange(40, dtype=torch.float32).reshape(1, 2, 4, 5) + 1
    y = network(x)
    expected = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 2), (3, 0)))  # NCHW: height (top, bottom), width (left, right)
    np.testing.assert_array_equal(y.numpy(), expected)
    with pytest.raises(StageError, match="only zero padding of height and width"):
        TfliteNetwork(_pad_graph([[0, 0], [1, 1], [1, 1], [0, 4]]))


# ---------------------------------------------------------------- in pseudo_label


@pytest.mark.parametrize("framing", ["full_body", "portrait", "per_image"])
def test_pseudo_label_frames_the_pose_teacher_as_its_params_say(framing):
    from params_helpers import quick_section

    import pipeline.stages.pseudo_label as pl

    settings = pl.PseudoLabelParams.model_validate(quick_section(
        "pseudo_label", teachers=["mediapipe", "mediapipe_pose"], pose_framing=framing, device="cpu"))
    teachers, info = pl.load_teachers(settings, None, None, "cpu")
    assert [t.name for t in teachers] == ["mediapipe", "mediapipe_pose"]
    assert teachers[1].segmenter.framing == framing and info["mediapipe_pose"]["framing"] == framing
    assert info["mediapipe_pose"]["trained_on"] == 0 and not teachers[1].seen_ids


def test_a_bad_pose_framing_is_refused_naming_the_key():
    from params_helpers import quick_section

    import pipeline.stages.pseudo_label as pl

    with pytest.raises(ValueError, match="pose_framing"):
        pl.PseudoLabelParams.model_validate(quick_section("pseudo_label", pose_framing="auto"))
