"""Training: stage planning, validation hold-out, checkpoints, resume after a kill, real images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from params_helpers import merged, quick_section, write_params
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.data import eval_transform
from pipeline.images import write_image, write_mask_png
from pipeline.manifest import ManifestRow, read_manifest, to_frame
from pipeline.models import MODELS, register
from pipeline.stage import StageError
from pipeline.stages.train import (TrainContext, TrainSettings, fingerprint, holdout_mask, learning_rate, main,
                                   plan_stages, seeded_training_data, split_train_val, train_architecture)
from pipeline.training import Step

STAGE1_LOADS: list[int] = []


class TinyNet(nn.Module):
    """Stand-in network (tests only): two convs, one output channel."""

    def __init__(self, num_classes: int = 1, width: int = 4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.encoder(x))


class TinyTwoBranch(TinyNet):
    def __init__(self, num_classes: int = 1, width: int = 4):
        super().__init__(num_classes, width)
        self.fine = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x):
        return self.classifier(self.encoder(x)) + self.fine(x)


def load_stage1_into(full_model, stage1_state_dict):
    """Found by the trainer beside the builder: copies the encoder."""
    keys = [k for k in full_model.state_dict() if k.startswith("encoder.")]
    with torch.no_grad():
        for k in keys:
            full_model.state_dict()[k].copy_(stage1_state_dict[k])
    STAGE1_LOADS.append(len(keys))
    return keys


if "test_tiny" not in MODELS:
    register("test_tiny")(lambda num_classes=1, width=4: TinyNet(num_classes, width))
    register("test_tiny2")(lambda num_classes=1, width=4: TinyTwoBranch(num_classes, width))
    register("test_tiny2_stage1")(lambda num_classes=1, width=4: TinyNet(num_classes, width))
    # the trainer looks for load_stage1_into in the builder's module: this one
    MODELS["test_tiny2"].builder.__module__ = __name__


def write_synthetic_set(root: Path, n: int = 10, size=(40, 32)) -> None:
    """Canonical dataset: dark images with a bright box that is the 'person'."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        h, w = size
        image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=bool)
        y0, x0 = int(rng.integers(2, h // 2)), int(rng.integers(2, w // 2))
        mask[y0:y0 + h // 2, x0:x0 + w // 2] = True
        image[mask] = rng.integers(180, 255, size=(int(mask.sum()), 3), dtype=np.uint8)
        source = "eg1800" if i < n - 2 else "crops"
        key = f"{i:05d}"
        write_image(root / "images" / source / f"{key}.png", image)
        write_mask_png(root / "masks" / source / f"{key}.png", mask)
        rows.append(ManifestRow(id=f"{source}/{key}", source=source, split="train",
                                image=f"images/{source}/{key}.png", mask=f"masks/{source}/{key}.png",
                                width=w, height=h))
    root.mkdir(parents=True, exist_ok=True)
    to_frame(rows).to_csv(root / "manifest.csv", index=False)


TINY_SETTINGS = {"input_size": 32, "epochs": 2, "batch_size": 4, "workers": 0, "max_steps_per_epoch": 2,
                 "val_fraction": 0.3, "lr": 0.01, "seed": 3, "device": "cpu",
                 "loss": {"kind": "lovasz", "boundary_weight": 0.5, "boundary_kernel": 3}}
TINY_KWARGS = {"test_tiny": {}, "test_tiny2": {}}


def settings(**changes) -> TrainSettings:
    """``train.settings`` of the quick profile with the tiny test values and ``changes``."""
    return TrainSettings(**merged(quick_section("train")["settings"], {**TINY_SETTINGS, **changes}))


def train_section(archs=("test_tiny",), model_kwargs=None, **changes) -> dict:
    return {"archs": list(archs), "model_kwargs": {**TINY_KWARGS, **(model_kwargs or {})},
            "settings": {**TINY_SETTINGS, **changes}}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_synthetic_set(tmp_path / "data" / "train_set")
    write_params(tmp_path / "params.yaml", {"train": train_section()})
    return tmp_path


def set_params(root: Path, archs=("test_tiny",), model_kwargs=None, **values) -> None:
    write_params(root / "params.yaml", {"train": train_section(archs, model_kwargs, **values)})


def at_epoch(epoch: int, epochs: int, batch: int = 0, batches: int = 10) -> Step:
    return Step(epoch, batch, batches, epochs)


def test_learning_rate_halves_at_half_and_five_sixths():
    params = settings(epochs=12, lr=1e-3)
    assert [learning_rate(params, at_epoch(e, 12)) for e in (0, 5, 6, 9, 10, 11)] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4,
                                                                                        2.5e-4]
    assert learning_rate(params, at_epoch(5, 12, batch=9)) == 1e-3  # per epoch: the batch does not matter
    assert learning_rate(settings(epochs=12, lr=1e-3, lr_schedule="constant"), at_epoch(11, 12)) == pytest.approx(0.001)
    assert learning_rate(settings(epochs=1, lr=1e-3), at_epoch(0, 1)) == 1e-3  # a one-epoch run keeps the full rate


def test_cosine_learning_rate_warms_up_then_anneals_to_zero_per_step():
    params = settings(epochs=4, lr=3e-3, lr_schedule="cosine", lr_warmup_epochs=1)
    rates = [learning_rate(params, at_epoch(e, 4, b)) for e in range(4) for b in range(10)]
    assert rates[:10] == pytest.approx([3e-3 * (i + 1) / 10 for i in range(10)])  # one epoch of linear rise
    assert rates[9] == pytest.approx(3e-3) and max(rates) == pytest.approx(3e-3)
    assert all(a > b for a, b in zip(rates[10:], rates[11:]))  # then strictly down, every step
    assert rates[-1] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi * 29 / 30)))  # one step short of 0
    without = settings(epochs=4, lr=3e-3, lr_schedule="cosine", lr_warmup_epochs=0)
    assert learning_rate(without, at_epoch(0, 4)) == pytest.approx(3e-3)


def test_holdout_is_deterministic_and_per_id():
    ids = pd.Series([f"eg1800/{i:05d}" for i in range(400)])
    sources = pd.Series(["eg1800"] * 300 + ["crops"] * 100)
    held = holdout_mask(ids, sources, 0.2, ["eg1800"], seed=0)
    assert not held[300:].any()  # only the named sources are held out
    assert 0.12 < held[:300].mean() < 0.28
    # the same id is held out whatever else is in the set (ablations share one validation set)
    sub = holdout_mask(ids[:150], sources[:150], 0.2, ["eg1800"], seed=0)
    assert np.array_equal(sub, held[:150])
    assert not holdout_mask(ids, sources, 0.0, [], 0).any()


def test_split_prefers_an_explicit_val_split():
    frame = pd.DataFrame({"id": ["a/1", "a/2", "a/3"], "source": ["a"] * 3, "split": ["train", "val", "train"],
                          "mask": ["m"] * 3})
    train, val = split_train_val(frame, settings(val_fraction=0.5))
    assert val["id"].tolist() == ["a/2"] and train["id"].tolist() == ["a/1", "a/3"]


def test_plan_stages():
    assert [p.arch for p in plan_stages("test_tiny2")] == ["test_tiny2_stage1", "test_tiny2"]
    assert [p.arch for p in plan_stages("test_tiny")] == ["test_tiny"]
    with pytest.raises(StageError, match="unknown architecture"):
        plan_stages("no_such_net")


def test_extremec3net_trains_in_two_stages():
    pytest.importorskip("pipeline.models.extremec3net")
    plans = plan_stages("extremec3net")
    assert [p.arch for p in plans] == ["extremec3net_stage1", "extremec3net"]
    assert plans[1].init_from_previous is not None


def test_code_digest_covers_the_network_source():
    from pipeline.stages.train import code_modules
    from pipeline.training import code_digest

    def digest(arch):
        return code_digest(code_modules(plan_stages(arch)))

    one = digest("test_tiny")
    assert one == digest("test_tiny")
    assert isinstance(one, str) and len(one) == 64
    assert "pipeline.training" in code_modules(plan_stages("test_tiny"))  # the loop decides the weights too
    pytest.importorskip("pipeline.models.extremec3net")
    assert digest("extremec3net") != digest("portraitnet")


def test_seeded_augmentation_repeats_per_epoch(project):
    from pipeline.training import derived_seed

    frame = read_manifest("data/train_set")
    data = seeded_training_data("data/train_set", frame, 32, seed=1)
    data.reseed(derived_seed(1, 1, 0))
    a = data[3]["image"]
    data.reseed(derived_seed(1, 1, 1))
    b = data[3]["image"]
    data[5]  # another sample in between changes nothing
    data.reseed(derived_seed(1, 1, 0))
    assert torch.equal(data[3]["image"], a) and not torch.equal(a, b)


def test_main_two_stage_run_writes_model_metrics_and_plots(project, monkeypatch):
    import pipeline.stages.train as train_stage

    retained = []
    monkeypatch.setattr(train_stage, "retain_freed_memory", lambda: retained.append(True))
    STAGE1_LOADS.clear()
    set_params(project, archs=["test_tiny2"], model_kwargs={"test_tiny2": {"width": 3}})
    assert main(["--params", "params.yaml", "--quiet"]) == 0
    assert retained == [True]  # on a CPU the stage keeps freed memory (pipeline.allocator), once
    assert STAGE1_LOADS == [7]  # stage 2 started from stage 1's encoder: conv (2) + batch norm (5) tensors
    state = load_checkpoint(project / "models" / "test_tiny2" / "model.pt", expected_arch="test_tiny2")
    assert state["config"] == {"width": 3} and state["input_size"] == 32
    net = TinyTwoBranch(width=3)
    net.load_state_dict(state["model"])
    metrics = json.loads((project / "metrics" / "train" / "test_tiny2.json").read_text())
    assert metrics["stages"] == 2 and metrics["stage1"]["epochs"] == 2 and metrics["stage2"]["epochs"] == 2
    assert 0 <= metrics["best_val_miou"] <= 100
    assert metrics["val_samples"] > 0 and metrics["train_samples"] + metrics["val_samples"] == 10
    plots = pd.read_csv(project / "plots" / "train" / "test_tiny2.csv")
    assert plots["epoch"].tolist() == [1, 2, 3, 4] and plots["stage"].tolist() == [1, 1, 2, 2]
    assert list(plots.columns[:5]) == ["epoch", "stage", "stage_epoch", "train_loss", "val_miou"]
    for stage in (1, 2):
        for kind in ("last", "best"):
            assert (project / "models" / "test_tiny2" / "checkpoints" / f"stage{stage}_{kind}.pt").is_file()


def make_context(root: Path, params: TrainSettings, log: list[str], stop_after: int | None = None) -> TrainContext:
    frame = read_manifest(root / "data" / "train_set")
    train_rows, val_rows = split_train_val(frame, params)
    train_data = seeded_training_data(root / "data" / "train_set", train_rows, params.input_size, params.seed)
    from pipeline.data import ManifestDataset

    val_data = ManifestDataset(root / "data" / "train_set", val_rows, transform=eval_transform(params.input_size))

    def on_epoch(history):
        if stop_after is not None and len(history) == stop_after:
            raise KeyboardInterrupt  # the kill

    return TrainContext(train_data, val_data, root / "out", fingerprint(params, "x", {}, "digest"),
                        on_epoch=on_epoch, log=log.append, progress=False)


def test_resume_after_a_kill_continues_and_matches_an_uninterrupted_run(project, tmp_path_factory):
    params = settings(epochs=2)
    other = tmp_path_factory.mktemp("uninterrupted")
    write_synthetic_set(other / "data" / "train_set")
    reference = train_architecture("test_tiny2", params, {}, make_context(other, params, []))

    log: list[str] = []
    with pytest.raises(KeyboardInterrupt):  # killed after stage 2's first epoch (3rd overall)
        train_architecture("test_tiny2", params, {}, make_context(project, params, log, stop_after=3))
    saved = torch.load(project / "out" / "checkpoints" / "stage2_last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["stage"] == 2 and "optimizer" in saved and "rng" in saved
    resumed = train_architecture("test_tiny2", params, {}, make_context(project, params, log))
    assert any("resuming from" in line and "after epoch 1 of 2" in line for line in log)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    for key, value in reference["model"]["model"].items():
        assert torch.equal(value, resumed["model"]["model"][key]), key  # the same weights, bit for bit
    assert resumed["history"][-1]["train_loss"] == pytest.approx(reference["history"][-1]["train_loss"], rel=1e-5)


def test_changed_settings_start_over(project):
    assert main(["--params", "params.yaml", "--quiet"]) == 0
    set_params(project, lr=0.02)
    log: list[str] = []
    params = settings(lr=0.02)
    ctx = make_context(project, params, log)
    ctx.out_dir = project / "models" / "test_tiny"
    result = train_architecture("test_tiny", params, {}, ctx)
    assert any("starts over" in line for line in log)
    assert len(result["history"]) == 2


def test_checkpoint_of_another_architecture_is_refused(project, capsys):
    foreign = {"arch": "extremec3net", "config": {}, "model": {"w": torch.zeros(1)}}
    save_checkpoint(project / "models" / "test_tiny" / "checkpoints" / "stage1_last.pt", foreign)
    assert main(["--params", "params.yaml", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'extremec3net'" in err and "'test_tiny'" in err


def test_unknown_architecture_and_bad_params_are_clear_errors(project, capsys):
    assert main(["--params", "params.yaml", "--arch", "nope"]) == 2
    assert "unknown architecture 'nope'" in capsys.readouterr().err
    set_params(project, loss={"kind": "lovasz", "boundary_weight": 0.5, "boundary_kernel": 4})
    assert main(["--params", "params.yaml"]) == 2
    assert "train.settings.loss.boundary_kernel" in capsys.readouterr().err


def load_real_eg1800(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A few real EG1800 portraits: from data/prepared if built, else the raw release."""
    import cv2
    from scipy.io import loadmat

    from pipeline.data import to_tensor
    from pipeline.images import read_mask_png, read_rgb

    repo = Path(__file__).resolve().parents[1]
    prepared = repo / "data" / "prepared"
    pairs = []
    if (prepared / "manifest.csv").is_file():
        frame = read_manifest(prepared)
        frame = frame[(frame["source"] == "eg1800") & (frame["mask"] != "")].head(n)
        pairs = [(read_rgb(prepared / r["image"]), read_mask_png(prepared / r["mask"])) for _, r in frame.iterrows()]
    if len(pairs) < n:
        raw = repo.parent / "shared" / "datasets" / "eg1800"
        if not raw.is_dir():
            pytest.skip("no EG1800 data")
        pairs = []
        for image_path in sorted((raw / "images_data_crop").glob("*.jpg")):
            mask_path = raw / "images_mask" / f"{image_path.stem}_mask.mat"
            if mask_path.is_file():
                pairs.append((read_rgb(image_path), loadmat(mask_path)["mask"] > 0))
            if len(pairs) == n:
                break
    images = torch.stack([to_tensor(cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)) for im, _ in pairs])
    masks = torch.stack([torch.from_numpy(cv2.resize(m.astype(np.uint8), (size, size),
                                                     interpolation=cv2.INTER_NEAREST).astype(np.float32))
                         for _, m in pairs])
    return images, masks


@pytest.mark.realdata
def test_a_few_steps_lower_the_loss_on_real_portraits():
    from pipeline.losses import SegmentationLoss
    from pipeline.models import available_models, build_model

    images, masks = load_real_eg1800(6, 96)
    assert masks.mean() > 0.1  # real portraits: a sizeable person
    torch.set_num_threads(1)  # on a crowded machine one thread is many times faster than two
    torch.manual_seed(0)
    arch = "extremec3net" if "extremec3net" in available_models() else "test_tiny"
    model = build_model(arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = SegmentationLoss("lovasz", 0.5, 7)
    model.train()
    losses = []
    for _ in range(10):
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses


def test_paper_loss_kind_uses_the_architectures_own_loss():
    import torch

    from pipeline.models import build_model
    from pipeline.models.segnets import squared_l2_mask_loss
    from pipeline.stages.train import LossParams, training_loss

    def loss(kind: str) -> LossParams:  # the quick profile's loss with another kind
        return LossParams(**{**quick_section("train")["settings"]["loss"], "kind": kind})

    torch.manual_seed(0)
    segnet = build_model("simple_seg_net").eval()
    images = torch.randn(2, 3, 48, 48)
    masks = (torch.rand(2, 48, 48) > 0.5).float()
    own = training_loss(segnet, loss("paper"))(segnet, images, masks)
    assert torch.isclose(own, squared_l2_mask_loss(segnet.forward_native(images), masks))
    lovasz = training_loss(segnet, loss("lovasz"))(segnet, images, masks)
    assert not torch.isclose(own, lovasz)
    # a network without a paper loss of its own falls back to the Lovasz loss
    ext = build_model("extremec3net").eval()
    x = torch.randn(1, 3, 64, 64)
    m = (torch.rand(1, 64, 64) > 0.5).float()
    assert torch.isclose(training_loss(ext, loss("paper"))(ext, x, m),
                         training_loss(ext, loss("lovasz"))(ext, x, m))
