"""The one training loop (pipeline.training): bit-identical students, exact resume, skips and refusals."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import legacy_student_loop as legacy
from params_helpers import merged, quick_section
from pipeline.checkpoint import save_checkpoint
from pipeline.data import ManifestDataset, SeededAugmentation, eval_transform, train_transform
from pipeline.manifest import read_manifest
from pipeline.models import MODELS, register
from pipeline.stage import StageError
from pipeline.stages.train import (TrainContext, TrainSettings, seeded_training_data, split_train_val,
                                   train_architecture)
from pipeline.training import (Step, TrainingJob, adam, cosine_lr, derived_seed, epoch_order, fingerprint, multistep_lr,
                               run, schedule_lr, validation_iou, warmup_cosine_lr)
from test_train import write_synthetic_set


class DropoutNet(nn.Module):
    """Stand-in (tests only) whose forward draws from the torch RNG (dropout), so a loop that
    consumes one random number more or less than before trains different weights."""

    def __init__(self, num_classes: int = 1, width: int = 4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                     nn.Dropout2d(0.3))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.encoder(x))


class DropoutTwoBranch(DropoutNet):
    def __init__(self, num_classes: int = 1, width: int = 4):
        super().__init__(num_classes, width)
        self.fine = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x):
        return self.classifier(self.encoder(x)) + self.fine(x)


def load_stage1_into(full_model, stage1_state_dict):
    with torch.no_grad():
        for key, value in full_model.state_dict().items():
            if key.startswith("encoder."):
                value.copy_(stage1_state_dict[key])


if "test_dropout" not in MODELS:
    register("test_dropout")(lambda num_classes=1, width=4: DropoutNet(num_classes, width))
    register("test_dropout2")(lambda num_classes=1, width=4: DropoutTwoBranch(num_classes, width))
    register("test_dropout2_stage1")(lambda num_classes=1, width=4: DropoutNet(num_classes, width))
    MODELS["test_dropout2"].builder.__module__ = __name__  # load_stage1_into is found beside the builder


# ---------------------------------------------------------------- students: bit-identical to the loop before


def student_settings(**changes) -> TrainSettings:
    tiny = {"input_size": 32, "epochs": 2, "batch_size": 4, "workers": 0, "max_steps_per_epoch": 2,
            "val_fraction": 0.3, "lr": 0.01, "seed": 3, "device": "cpu",
            "loss": {"kind": "lovasz", "boundary_weight": 0.5, "boundary_kernel": 3}}
    return TrainSettings(**merged(quick_section("train")["settings"], {**tiny, **changes}))


def train_both(root: Path, arch: str, kwargs: dict, settings: TrainSettings) -> tuple[dict, dict]:
    """(the loop before, the one loop) trained on the same rows, each in its own folder."""
    rows, val_rows = split_train_val(read_manifest(root), settings)
    val = ManifestDataset(root, val_rows, transform=eval_transform(settings.input_size))

    old_params = SimpleNamespace(**settings.model_dump(), model_kwargs={arch: kwargs})
    old_params.loss = SimpleNamespace(**settings.loss.model_dump())
    old_data = legacy.SeededAugmentDataset(root, rows, transform=train_transform(settings.input_size),
                                           seed=settings.seed)
    old = legacy.train_architecture(arch, old_params, legacy.TrainContext(
        old_data, val, root.parent / "old", "fp", log=lambda m: None, progress=False))

    new_data = seeded_training_data(root, rows, settings.input_size, settings.seed)
    new = train_architecture(arch, settings, kwargs, TrainContext(new_data, val, root.parent / "new", "fp",
                                                                  log=lambda m: None, progress=False))
    return old, new


def assert_same_training(old: dict, new: dict) -> None:
    assert old["model"]["model"].keys() == new["model"]["model"].keys()
    for key, value in old["model"]["model"].items():
        assert torch.equal(value, new["model"]["model"][key]), key
    assert [h["train_loss"] for h in old["history"]] == [h["train_loss"] for h in new["history"]]
    assert [h["val_miou"] for h in old["history"]] == [h["val_miou"] for h in new["history"]]
    assert [h["lr"] for h in old["history"]] == [h["lr"] for h in new["history"]]
    assert old["model"]["epoch"] == new["model"]["epoch"] and old["model"]["val_miou"] == new["model"]["val_miou"]
    assert old["summary"]["best_val_miou"] == new["summary"]["best_val_miou"]


@pytest.mark.parametrize("arch, changes", [
    ("test_dropout2", {}),  # two stages, the second from the first's best encoder; 2 of 2 steps an epoch
    ("test_dropout", {"max_steps_per_epoch": 0, "epochs": 3, "export": "last"}),  # whole epochs; the last batch
    #                                                     of one image is left out (9 training images, batch 4)
    ("test_dropout", {"workers": 1, "lr_schedule": "constant"}),  # a loader process
])
def test_students_train_bit_identically_to_the_loop_before_it(tmp_path, arch, changes):
    root = tmp_path / "train_set"
    write_synthetic_set(root, n=12)
    old, new = train_both(root, arch, {"width": 3}, student_settings(**changes))
    assert_same_training(old, new)
    assert len(new["history"]) == (2 if arch == "test_dropout2" else 1) * new["summary"]["epochs_per_stage"]


def test_extremec3net_trains_bit_identically_to_the_loop_before_it(tmp_path):
    pytest.importorskip("pipeline.models.extremec3net")
    root = tmp_path / "train_set"
    write_synthetic_set(root, n=8, size=(64, 48))
    settings = student_settings(input_size=64, epochs=1, max_steps_per_epoch=1, batch_size=2)
    old, new = train_both(root, "extremec3net", {"num_classes": 1, "p": 1, "q": 1}, settings)
    assert_same_training(old, new)
    assert new["summary"]["stages"] == 2


# ---------------------------------------------------------------- the loop on its own


class Squares(Dataset):
    """Bright squares on dark noise (uint8 RGB), augmented by ``transform`` like a manifest dataset."""

    def __init__(self, n: int, transform, size: int = 16):
        rng = np.random.default_rng(0)
        self.transform, self.items = transform, []
        for _ in range(n):
            x0, y0 = rng.integers(0, size // 2, 2)
            mask = np.zeros((size, size), np.uint8)
            mask[y0:y0 + size // 2, x0:x0 + size // 2] = 1
            image = (rng.integers(0, 60, (size, size, 3)) + mask[..., None] * 180).astype(np.uint8)
            self.items.append((image, mask))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from pipeline.data import to_tensor

        image, mask = self.items[i]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {"image": to_tensor(image), "mask": torch.from_numpy(mask.astype(np.float32)), "id": str(i)}


def seeded_squares(n: int, seed: int = 0) -> SeededAugmentation:
    transform = train_transform(16)
    return SeededAugmentation(Squares(n, transform), transform, seed)


def make_job(folder: Path, *, loss=None, log=None, **changes) -> TrainingJob:
    values = dict(
        name="tiny", arch="dropout", config={}, make_model=lambda fresh: DropoutNet(width=4),
        make_optimizer=lambda model: torch.optim.AdamW(model.parameters(), lr=0.01),
        loss=loss or (lambda net, images, masks: nn.functional.binary_cross_entropy_with_logits(net(images)[:, 0],
                                                                                             masks)),
        learning_rate=lambda step: cosine_lr(0.01, step.global_step, step.total_steps),
        epochs=3, batch_size=4, train_data=seeded_squares(10), checkpoint_dir=folder, fingerprint="fp", seed=1,
        validate=lambda model: validation_iou(model, Squares(4, None), 4), checkpoint_every_steps=1,
        keep_best=False, progress=False, log=(log if log is not None else (lambda m: None)))
    values.update(changes)
    return TrainingJob(**values)


def test_a_run_resumed_mid_epoch_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    straight = run(make_job(tmp_path / "straight"))
    assert [h["step"] for h in straight.history] == [3, 6, 9] and straight.trained_epochs == 3

    calls = {"n": 0}

    def crash_on_fifth_step(net, images, masks):
        calls["n"] += 1
        if calls["n"] == 5:  # 4 steps done: epoch 2 (3 batches an epoch), its first batch trained
            raise KeyboardInterrupt
        return nn.functional.binary_cross_entropy_with_logits(net(images)[:, 0], masks)

    with pytest.raises(KeyboardInterrupt):
        run(make_job(tmp_path / "killed", loss=crash_on_fifth_step))
    saved = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["batch_in_epoch"] == 1 and len(saved["epoch_losses"]) == 1
    log: list[str] = []
    resumed = run(make_job(tmp_path / "killed", log=log.append))
    assert any("resuming from" in line and "step 1" in line for line in log)
    assert resumed.trained_epochs == 2 and [h["step"] for h in resumed.history] == [3, 6, 9]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key  # dropout and augmentation included
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


def test_a_finished_run_is_skipped_and_more_epochs_continue_it(tmp_path):
    first = run(make_job(tmp_path, epochs=2))
    again = run(make_job(tmp_path, epochs=2))
    assert again.trained_epochs == 0 and again.history == first.history
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    longer = run(make_job(tmp_path, epochs=3))  # epochs may grow: the fingerprint is the caller's choice
    assert longer.trained_epochs == 1 and [h["epoch"] for h in longer.history] == [1, 2, 3]


def test_another_fingerprint_starts_over_and_another_architecture_is_refused(tmp_path):
    run(make_job(tmp_path, epochs=1))
    log: list[str] = []
    result = run(make_job(tmp_path, epochs=1, fingerprint="other", log=log.append))
    assert result.trained_epochs == 1 and any("starts over" in line for line in log)
    save_checkpoint(tmp_path / "last.pt", {"arch": "extremec3net", "config": {}, "model": {}})
    with pytest.raises(StageError, match="'extremec3net'.*'dropout'.*Delete"):
        run(make_job(tmp_path, epochs=1))


def test_best_is_kept_only_when_asked_and_names_follow_the_prefix(tmp_path):
    result = run(make_job(tmp_path, epochs=2, keep_best=True, checkpoint_name="stage1_"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1_best.pt", "stage1_last.pt"]
    assert result.best is not None and result.best["best_epoch"] in (1, 2)
    assert result.best["best_score"] == max(h["val"] for h in result.history)
    assert run(make_job(tmp_path / "b", epochs=1)).best is None


def test_a_loss_that_is_not_finite_stops_at_once(tmp_path):
    def nan_on_second_step(net, images, masks, calls=[]):  # noqa: B006 - the call counter
        calls.append(1)
        value = nn.functional.binary_cross_entropy_with_logits(net(images)[:, 0], masks)
        return value * float("nan") if len(calls) == 2 else value

    with pytest.raises(StageError, match=r"tiny epoch 1, step 2: training loss is not finite"):
        run(make_job(tmp_path, loss=nan_on_second_step, checkpoint_every_steps=0))
    assert not (tmp_path / "last.pt").exists()  # nothing of the broken run is kept


def test_progress_bars_follow_the_progress_flag(tmp_path, capsys):
    run(make_job(tmp_path / "quiet", epochs=1))
    assert "%|" not in capsys.readouterr().err
    run(make_job(tmp_path / "loud", epochs=1, progress=True))
    assert "tiny epoch 1/1" in capsys.readouterr().err


def test_schedules_seeds_and_order():
    assert [multistep_lr(1.0, 12, e) for e in (0, 5, 6, 9, 10, 11)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert cosine_lr(1.0, 0, 10) == 1.0 and cosine_lr(1.0, 5, 10) == pytest.approx(0.5) and cosine_lr(1.0, 10, 10) == 0
    step = Step(epoch=2, batch=1, batches_per_epoch=3, epochs=4)
    assert step.global_step == 7 and step.total_steps == 12
    assert schedule_lr("multistep", 1.0, step) == multistep_lr(1.0, 4, 2) == 0.5
    assert schedule_lr("constant", 0.3, step) == 0.3
    assert schedule_lr("cosine", 1.0, step, warmup_epochs=1) == pytest.approx(warmup_cosine_lr(1.0, 7, 12, 3))
    assert warmup_cosine_lr(1.0, 0, 12, 3) == pytest.approx(1 / 3) and warmup_cosine_lr(1.0, 3, 12, 3) == 1.0
    assert warmup_cosine_lr(1.0, 0, 2, 5) == pytest.approx(0.5)  # a warm-up longer than the run ends with it
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        schedule_lr("step", 1.0, step)
    assert derived_seed(0, 1, 0) == derived_seed(0, 1, 0) != derived_seed(0, 2, 0)
    assert derived_seed(0, 1, 0) == derived_seed(0, "1", 0)  # a stage number and its text are one key
    order = epoch_order(10, seed=5, limit=None)
    assert sorted(order) == list(range(10)) and order == epoch_order(10, seed=5, limit=None)
    assert epoch_order(10, seed=5, limit=4) == order[:4]
    assert fingerprint({"lr": 1}, data="a") == fingerprint({"lr": 1}, data="a") != fingerprint({"lr": 2}, data="a")


def test_validation_iou_is_the_pipelines_iou():
    class Constant(nn.Module):
        def __init__(self, logit: float):
            super().__init__()
            self.logit = logit

        def forward(self, x):
            return torch.full((x.shape[0], 1, *x.shape[2:]), self.logit)

    class Half(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            mask = torch.zeros(4, 4)
            mask[:2] = 1 if i == 0 else 0
            return {"image": torch.zeros(3, 4, 4), "mask": mask}

    # everything predicted: IoU 0.5 on the half mask, 0 on the empty one
    assert validation_iou(Constant(1.0), Half(), batch_size=2) == pytest.approx(0.25)
    # nothing predicted: 0 on the half mask, 1 on the empty one (both empty: nothing to find, nothing found)
    assert validation_iou(Constant(-1.0), Half(), batch_size=1) == pytest.approx(0.5)
    assert math.isnan(validation_iou(Constant(1.0), None, batch_size=2))


# ---------------------------------------------------------------- the optimizer


def test_adam_is_fused_on_cpu_and_steps_like_torchs_per_tensor_adam():
    torch.manual_seed(0)
    target = torch.randn(3, 5)
    weights = [nn.Parameter(torch.randn(3, 5)), nn.Parameter(torch.randn(7))]
    twins = [nn.Parameter(w.detach().clone()) for w in weights]
    start = (weights[0] - target).abs().sum().item()
    fused, reference = adam(weights, 0.05, weight_decay=0.01), torch.optim.Adam(twins, lr=0.05, weight_decay=0.01)
    assert fused.defaults["fused"] is True and not reference.defaults["fused"]
    for _ in range(40):
        for params, optimizer in ((weights, fused), (twins, reference)):
            optimizer.zero_grad()
            ((params[0] - target) ** 2).sum().add(params[1].pow(2).sum()).backward()
            optimizer.step()
    moved = (weights[0] - twins[0].detach()).abs().max()
    assert moved < 1e-5 and (weights[0] - target).abs().sum() < start / 2  # the same descent, not no descent


def test_adam_resumes_a_per_tensor_adams_state_and_falls_back_where_nothing_is_fused():
    model = nn.Linear(4, 2)
    old = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.ones(1, 4)).sum().backward()
    old.step()
    resumed = adam(model.parameters(), 0.01)
    resumed.load_state_dict(old.state_dict())  # a checkpoint written before the stage used fused Adam
    model(torch.ones(1, 4)).sum().backward()
    resumed.step()
    assert int(resumed.state[model.weight]["step"]) == 2
    assert adam([nn.Parameter(torch.zeros(2, device="meta"))], 0.01).defaults["fused"] is None
