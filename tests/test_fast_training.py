"""The fast training path (train.settings: cache_resized, persistent_workers, fused_loss, channels_last,
bf16) against the plain path: the same samples, the same losses up to float rounding and resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from params_helpers import merged, quick_section
from pipeline.data import CachedSamples, ManifestDataset, SeededAugmentation, eval_transform, evaluation_resize, \
    shrink_to_short_side, train_transform
from pipeline.manifest import read_manifest
from pipeline.models import MODELS, register
from pipeline.stages import train as train_stage
from pipeline.stages.train import (TrainContext, TrainSettings, autocast_dtype, seeded_training_data,
                                   split_train_val, train_architecture, validation_data)
from pipeline.training import TrainingJob, cosine_lr, run
from test_train import write_synthetic_set

FAST = {"cache_resized": True, "persistent_workers": True, "fused_loss": True, "channels_last": True}


def fast_settings(**changes) -> TrainSettings:
    tiny = {"input_size": 48, "epochs": 5, "batch_size": 4, "workers": 0, "max_steps_per_epoch": 10,
            "val_fraction": 0.2, "lr": 0.005, "seed": 5, "device": "cpu", "export": "last",
            "loss": {"kind": "lovasz", "boundary_weight": 0.5, "boundary_kernel": 3}}
    return TrainSettings(**merged(quick_section("train")["settings"], {**tiny, **changes}))


class SmallNet(nn.Module):
    """A few convolutions at two scales (tests only): ExtremeC3Net's kinds of layers, a fraction of its cost."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.PReLU(width),
                                  nn.Conv2d(width, width, 3, padding=2, dilation=2, groups=width),
                                  nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.PReLU(width))
        self.fine = nn.Conv2d(3, 1, 3, padding=1)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        coarse = nn.functional.interpolate(self.head(self.down(x)), size=x.shape[-2:], mode="bilinear",
                                           align_corners=False)
        return coarse + self.fine(x)


if "test_fast_small" not in MODELS:
    register("test_fast_small")(lambda width=6: SmallNet(width))


def train_once(root, settings: TrainSettings, out) -> dict:
    rows, val_rows = split_train_val(read_manifest(root), settings)
    train = seeded_training_data(root, rows, settings.input_size, settings.seed, settings.cache_resized)
    val = validation_data(root, val_rows, settings.input_size, settings.cache_resized)
    return train_architecture("test_fast_small", settings, {"width": 6},
                              TrainContext(train, val, out, "fp", log=lambda m: None, progress=False))


def write_smooth_set(root, n: int, size: tuple[int, int]) -> None:
    """Photo-like samples (smooth colour gradients, an elliptic 'person' of another colour): unlike
    per-pixel noise, shrinking them before the augmentation changes them only by resampling."""
    from pipeline.images import write_image, write_mask_png
    from pipeline.manifest import ManifestRow, to_frame

    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    rows = []
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.2, 0.4) * h, \
            rng.uniform(0.15, 0.35) * w
        mask = ((np.mgrid[0:h, 0:w][0] - cy) / ry) ** 2 + ((np.mgrid[0:h, 0:w][1] - cx) / rx) ** 2 < 1
        back, person = rng.uniform(0, 120, (2, 3)), rng.uniform(120, 255, (2, 3))
        image = back[0] + (back[1] - back[0]) * yy[..., None]
        image = np.where(mask[..., None], person[0] + (person[1] - person[0]) * xx[..., None], image)
        write_image(root / "images" / f"{i:03d}.png", image.astype(np.uint8))
        write_mask_png(root / "masks" / f"{i:03d}.png", mask)
        rows.append(ManifestRow(id=f"eg1800/{i:03d}", source="eg1800", split="train", image=f"images/{i:03d}.png",
                                mask=f"masks/{i:03d}.png", width=w, height=h))
    to_frame(rows).to_csv(root / "manifest.csv", index=False)


def test_the_fast_path_ends_50_steps_within_2_percent_of_the_plain_loss(tmp_path):
    """The stage's own data builders and loop; ExtremeC3Net on the real data: benchmarks/train_epoch.py."""
    root = tmp_path / "train_set"
    write_smooth_set(root, n=40, size=(160, 120))  # short side above 1.5 x input_size: the cache really shrinks
    plain = train_once(root, fast_settings(), tmp_path / "plain")
    fast = train_once(root, fast_settings(**FAST), tmp_path / "fast")
    assert len(fast["history"]) == len(plain["history"]) == 5  # 5 epochs of 10 steps: the last row is steps 41-50
    first, last = plain["history"][0]["train_loss"], plain["history"][-1]["train_loss"]
    assert last < 0.9 * first  # it learns: the comparison is not between two untrained nets
    fast_last = fast["history"][-1]["train_loss"]
    assert fast_last == pytest.approx(last, rel=0.02), (plain["history"], fast["history"])
    assert fast_last != last  # the switches really took another path (fused sums, NHWC, resampled cache)


class Squares(torch.utils.data.Dataset):
    """Bright squares on noise, augmented like a manifest dataset (a persistent loader needs a picklable
    dataset: this one is module-level)."""

    def __init__(self, n: int, transform, size: int = 24):
        rng = np.random.default_rng(1)
        self.transform, self.items = transform, []
        for _ in range(n):
            x0, y0 = rng.integers(0, size // 2, 2)
            mask = np.zeros((size, size), np.uint8)
            mask[y0:y0 + size // 2, x0:x0 + size // 2] = 1
            self.items.append(((rng.integers(0, 60, (size, size, 3)) + mask[..., None] * 180).astype(np.uint8),
                               mask))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from pipeline.data import to_tensor

        image, mask = self.items[i]
        out = self.transform(image=image, mask=mask)
        return {"image": to_tensor(out["image"]), "mask": torch.from_numpy(out["mask"].astype(np.float32)),
                "id": str(i)}


def plain_net(fresh: bool) -> nn.Module:
    """No dropout: its weights depend on the samples and their order only."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))


def squares_job(folder, **changes) -> TrainingJob:
    transform = train_transform(16)
    values = dict(
        name="squares", arch="plain", config={}, make_model=plain_net,
        make_optimizer=lambda model: torch.optim.Adam(model.parameters(), lr=0.01),
        loss=lambda net, images, masks: nn.functional.binary_cross_entropy_with_logits(net(images)[:, 0], masks),
        learning_rate=lambda step: cosine_lr(0.01, step.global_step, step.total_steps),
        epochs=3, batch_size=4, train_data=SeededAugmentation(Squares(10, transform), transform, 2),
        checkpoint_dir=folder, fingerprint="fp", seed=4, keep_best=False, progress=False, log=lambda m: None)
    values.update(changes)
    return TrainingJob(**values)


def test_a_persistent_loader_draws_every_epoch_the_samples_of_a_fresh_one(tmp_path):
    fresh = run(squares_job(tmp_path / "fresh", workers=1))
    persistent = run(squares_job(tmp_path / "persistent", workers=1, persistent_workers=True))
    in_process = run(squares_job(tmp_path / "in_process", workers=0, persistent_workers=True))
    assert fresh.trained_epochs == persistent.trained_epochs == 3
    for other in (persistent, in_process):
        assert [h["train_loss"] for h in other.history] == [h["train_loss"] for h in fresh.history]
        for key, value in fresh.model.state_dict().items():
            assert torch.equal(value, other.model.state_dict()[key]), key


def test_a_persistent_run_resumed_mid_epoch_ends_as_an_uninterrupted_one(tmp_path):
    straight = run(squares_job(tmp_path / "straight", workers=1, persistent_workers=True, checkpoint_every_steps=1))
    calls = {"n": 0}

    def crash_on_fifth_step(net, images, masks):
        calls["n"] += 1
        if calls["n"] == 5:  # 4 steps done: epoch 2 (3 batches an epoch), its first batch trained
            raise KeyboardInterrupt
        return nn.functional.binary_cross_entropy_with_logits(net(images)[:, 0], masks)

    folder = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(squares_job(folder, workers=1, persistent_workers=True, checkpoint_every_steps=1,
                        loss=crash_on_fifth_step))
    resumed = run(squares_job(folder, workers=1, persistent_workers=True, checkpoint_every_steps=1))
    assert resumed.trained_epochs == 2
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_channels_last_and_bf16_train_like_the_plain_loop_up_to_rounding(tmp_path):
    plain = run(squares_job(tmp_path / "plain"))
    nhwc = run(squares_job(tmp_path / "nhwc", channels_last=True))
    bf16 = run(squares_job(tmp_path / "bf16", autocast=torch.bfloat16))
    losses = [h["train_loss"] for h in plain.history]
    assert [h["train_loss"] for h in nhwc.history] == pytest.approx(losses, rel=1e-4)
    assert [h["train_loss"] for h in bf16.history] == pytest.approx(losses, rel=0.03)
    assert [h["train_loss"] for h in bf16.history] != losses  # the forward really ran in bf16
    assert all(v.dtype == torch.float32 for v in bf16.model.state_dict().values() if v.is_floating_point())


def test_the_validation_cache_holds_exactly_the_pixels_the_plain_path_reads(tmp_path):
    root = tmp_path / "train_set"
    write_synthetic_set(root, n=6, size=(90, 70))
    frame = read_manifest(root)
    plain = ManifestDataset(root, frame, transform=eval_transform(32))
    cached = CachedSamples.from_manifest(root, frame, evaluation_resize(32), workers=2)
    assert len(cached) == len(plain) == 6
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert a["id"] == b["id"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert cached.nbytes() == 6 * 32 * 32 * 4  # uint8: three image channels and the mask


def test_shrinking_to_the_short_side_keeps_the_geometry_and_never_enlarges():
    image = np.zeros((400, 300, 3), np.uint8)
    mask = np.zeros((400, 300), np.uint8)
    mask[100:300, 60:200] = 1
    small_image, small_mask = shrink_to_short_side(image, mask, 60)
    assert small_image.shape == (80, 60, 3) and small_mask.shape == (80, 60)
    assert set(np.unique(small_mask)) == {0, 1}  # nearest neighbour: still a 0/1 mask
    assert small_mask[20:60, 12:40].all() and small_mask.sum() == pytest.approx(mask.sum() / 25, rel=0.05)
    same_image, same_mask = shrink_to_short_side(image, mask, 300)
    assert same_image is image and same_mask is mask


def test_cached_samples_refuse_arrays_that_are_not_an_image_and_its_mask():
    image = np.zeros((8, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        CachedSamples([image.astype(np.float32)], [np.zeros((8, 6))], ["a"])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        CachedSamples([image], [np.zeros((6, 8))], ["a"])
    with pytest.raises(ValueError, match="1 images, 2 masks"):
        CachedSamples([image], [np.zeros((8, 6))] * 2, ["a"])


def test_bf16_falls_back_to_float32_with_a_line_where_the_cpu_has_no_native_bf16(monkeypatch):
    monkeypatch.setattr(train_stage, "native_bf16", lambda device: False)
    assert autocast_dtype(fast_settings(bf16=True), "cpu")[0] is None
    assert "no native bfloat16" in autocast_dtype(fast_settings(bf16=True), "cpu")[1]
    monkeypatch.setattr(train_stage, "native_bf16", lambda device: True)
    assert autocast_dtype(fast_settings(bf16=True, channels_last=False), "cpu") == (torch.bfloat16, None)
    assert autocast_dtype(fast_settings(bf16=False), "cuda") == (None, None)


def test_bf16_with_channels_last_on_cpu_trains_in_float32_with_a_line(monkeypatch):
    monkeypatch.setattr(train_stage, "native_bf16", lambda device: True)
    dtype, line = autocast_dtype(fast_settings(bf16=True, channels_last=True), "cpu")
    assert dtype is None and "channels_last" in line and "float32" in line
    assert autocast_dtype(fast_settings(bf16=True, channels_last=True), "cuda") == (torch.bfloat16, None)
