"""The DeepLabv3+ teacher on MediaPipe's pretrained selfie encoder (``pipeline.teachers.mediapipe_encoder``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from params_helpers import quick_section
from pipeline.checkpoint import save_checkpoint
from pipeline.data import to_tensor
from pipeline.stages.train_teacher import TeacherParams
from pipeline.teachers.deeplab import TEACHER_ARCH, TeacherRunner, build_teacher, load_teacher, teacher_config
from pipeline.teachers.mediapipe import MediaPipeSelfieSegmenter, TfliteNetwork, fit_image, load_selfie_graph
from pipeline.teachers.mediapipe_encoder import TAPS, MediaPipeDeepLabV3Plus, MediaPipeEncoder

CONFIG = teacher_config("mediapipe_general", 1, 16)


@pytest.fixture(scope="module")
def general():
    return MediaPipeSelfieSegmenter("general")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def test_pruning_keeps_the_values_of_what_is_kept(general, astronaut):
    """The trunk alone computes its LR-ASPP tensor as the whole graph does, and the graph's output stays MediaPipe's."""
    graph = load_selfie_graph("general")
    deep = TAPS["general"][-1][1]
    trunk = TfliteNetwork(graph, outputs=[deep])
    both = TfliteNetwork(graph, outputs=[deep, graph.outputs[0]])
    assert len(trunk.ops) < len(both.ops) == len(graph.operators)
    batch = torch.from_numpy(fit_image(astronaut, general.input_size))[None]
    with torch.no_grad():
        (alone,), (kept, output) = trunk.features(batch), both.features(batch)
        assert torch.equal(alone, kept)
        assert torch.equal(output.contiguous(), general.network(batch))
        with pytest.raises(RuntimeError, match="call features"):
            trunk(batch)


def test_the_encoder_starts_from_mediapipes_weights_and_keeps_only_the_trunk(general):
    encoder = MediaPipeEncoder("general")
    own = dict(encoder.network.named_parameters())
    theirs = dict(general.network.named_parameters())
    assert own and set(own) < set(theirs)  # the decoder's ops are left out
    assert all(torch.equal(p, theirs[name]) for name, p in own.items())
    assert all(p.requires_grad for p in own.values())  # fine-tuned, unlike the frozen segmenter


def test_the_encoder_undoes_imagenet_normalisation_and_gives_each_stride(general, astronaut):
    encoder = MediaPipeEncoder("general").eval()
    raw = torch.from_numpy(fit_image(astronaut, general.input_size))[None]  # [0, 1], as MediaPipe sees it
    normalised = to_tensor((raw[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))[None]
    with torch.no_grad():
        features = encoder(normalised)
        reference = encoder.network.features(raw)
    assert [tuple(f.shape) for f in features] == [(1, 3, 256, 256)] + [
        (1, channels, 256 // stride, 256 // stride) for stride, _, channels in TAPS["general"]]
    for own, expected in zip(features[1:], reference):
        assert torch.allclose(own, expected, atol=1e-4)


def test_other_input_sizes_work_and_odd_ones_are_refused():
    model = MediaPipeDeepLabV3Plus(1, 16).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 320, 192)).shape == (1, 1, 320, 192)
        with pytest.raises(ValueError, match="multiples of 16"):
            model(torch.zeros(1, 3, 250, 256))


def test_gradients_reach_the_pretrained_encoder():
    model = MediaPipeDeepLabV3Plus(1, 16).train()
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_a_checkpoint_round_trips_through_load_teacher(tmp_path, astronaut):
    model = build_teacher(CONFIG, encoder_weights="mediapipe").eval()
    with torch.no_grad():  # move the weights off MediaPipe's, so loading has to restore them
        for p in model.encoder.parameters():
            p.add_(0.01)
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, {"arch": TEACHER_ARCH, "config": CONFIG, "model": model.state_dict(), "input_size": 64})
    loaded, state = load_teacher(path, expected_config=CONFIG)
    ours = TeacherRunner(model, 64).predict([astronaut])[0].probability
    again = TeacherRunner(loaded, 64).predict([astronaut])[0].probability
    np.testing.assert_allclose(again, ours, atol=1e-6)


def test_weights_other_than_the_wheels_are_refused():
    with pytest.raises(ValueError, match="encoder_weights must be 'mediapipe'"):
        build_teacher(CONFIG, encoder_weights="imagenet")
    with pytest.raises(ValueError, match="goes with"):
        TeacherParams(**quick_section("teacher", encoder_name="mediapipe_general", encoder_weights=None))
    with pytest.raises(ValueError, match="goes with"):
        TeacherParams(**quick_section("teacher", encoder_weights="mediapipe"))
    TeacherParams(**quick_section("teacher", encoder_name="mediapipe_general", encoder_weights="mediapipe"))


@pytest.mark.realdata
def test_a_short_fine_tune_on_real_photos_gives_aligned_masks_above_a_floor(shared_datasets):
    """40 steps on 24 CCP train photos, then 6 CCP val photos: the pretrained encoder makes it quick.

    Measured here: IoU 0.67-0.90 per photo (floor 0.6), mean 0.767; the masks are aligned:
    moved 16 px along either axis, their mean IoU drops (to 0.683-0.755).
    """
    import cv2

    from pipeline.losses import cross_entropy_dice
    from pipeline.metrics import iou
    from pipeline.stages.prepare import decode_item
    from teacher_helpers import ccp_items

    items = ccp_items(shared_datasets)
    train_keys = sorted(k for k, i in items.items() if i.split == "train")[:24]
    val_keys = sorted(k for k, i in items.items() if i.split == "val")[:6]
    size = 192

    def fitted(key):
        decoded = decode_item(items[key], None)
        image = cv2.resize(decoded.image.rgb, (size, size), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(decoded.mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        return to_tensor(image), torch.from_numpy(mask).float()

    pairs = [fitted(k) for k in train_keys]
    images, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    torch.manual_seed(0)
    model = build_teacher(CONFIG, encoder_weights="mediapipe").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(40):
        pick = torch.randperm(len(pairs), generator=order)[:8]
        x, y = images[pick], masks[pick]
        if torch.rand(1, generator=order).item() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        optimizer.zero_grad()
        cross_entropy_dice(model(x), y, 0.5).backward()
        optimizer.step()
    runner = TeacherRunner(model, size, flip_tta=True)
    moved: dict[tuple[int, int], list[float]] = {(axis, shift): [] for axis in (0, 1) for shift in (-16, 0, 16)}
    for key in val_keys:
        decoded = decode_item(items[key], None)
        (prediction,) = runner.predict([decoded.image.rgb])
        assert prediction.probability.shape == decoded.mask.shape
        assert iou(prediction.mask, decoded.mask) >= 0.6, key
        for axis, shift in moved:
            moved[axis, shift].append(iou(np.roll(prediction.mask, shift, axis=axis), decoded.mask))
    mean = {k: float(np.mean(v)) for k, v in moved.items()}
    for axis in (0, 1):
        assert mean[axis, 0] > max(mean[axis, -16], mean[axis, 16]), mean
