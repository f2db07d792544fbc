"""The DeepLabv3+ teacher: inference alignment, flip TTA, checkpoints, training and resuming."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from params_helpers import quick_section
from pipeline.checkpoint import CheckpointError, save_checkpoint
from pipeline.data import SeededAugmentation
from pipeline.losses import cross_entropy_dice
from pipeline.metrics import iou
from pipeline.teachers.deeplab import (TEACHER_ARCH, TeacherRunner, build_teacher, load_teacher, merge_flip,
                              teacher_config)
from pipeline.selection import drop_leaks
from pipeline.stages.train_teacher import TeacherParams, main, teacher_job
from pipeline.training import run
from teacher_helpers import BrightnessTeacher, LeftHalfTeacher, rectangle_image, write_canonical, write_params

TINY = {"encoder_name": "resnet18", "decoder_channels": 16}


# ---------------------------------------------------------------------------- inference


def test_prediction_has_the_image_size_and_the_mask_in_the_right_place():
    # Non-square, not a multiple of the input size: the mask must come back at 90x140.
    image, truth = rectangle_image(90, 140, box=(100, 10, 130, 70))
    runner = TeacherRunner(BrightnessTeacher(), input_size=64)
    (prediction,) = runner.predict([image])
    assert prediction.probability.shape == (90, 140)
    assert iou(prediction.mask, truth) > 0.9
    assert not prediction.mask[:, :90].any()  # nothing on the wrong side


def test_flip_tta_mirrors_the_flipped_prediction_back():
    image, truth = rectangle_image(64, 96, box=(60, 8, 90, 56))  # off-centre: mirroring moves it
    runner = TeacherRunner(BrightnessTeacher(), input_size=64, flip_tta=True)
    (prediction,) = runner.predict([image])
    assert prediction.flip_iou == pytest.approx(1.0, abs=0.02)
    assert iou(prediction.mask, truth) > 0.9

    # A network that always says "left half" disagrees completely with its mirror image.
    (left,) = TeacherRunner(LeftHalfTeacher(), input_size=64, flip_tta=True).predict([image])
    assert left.flip_iou == pytest.approx(0.0, abs=0.05)
    assert np.allclose(left.probability, 0.5, atol=1e-4)  # +5 and -5 averaged


def test_bfloat16_runner_gives_the_same_mask():
    image, truth = rectangle_image(48, 80, box=(30, 6, 70, 40))
    (fp32,) = TeacherRunner(BrightnessTeacher(), input_size=32, flip_tta=True).predict([image])
    (bf16,) = TeacherRunner(BrightnessTeacher(), input_size=32, flip_tta=True, bfloat16=True).predict([image])
    assert bf16.probability.dtype == np.float32
    assert iou(bf16.mask, fp32.mask) > 0.97 and iou(bf16.mask, truth) > 0.9


def test_merge_flip_reverses_the_last_axis_only():
    plain = torch.arange(6.0).view(1, 1, 2, 3)
    mirrored_output = torch.flip(plain, dims=[-1])  # what a perfectly equivariant network returns
    assert torch.equal(merge_flip(plain, mirrored_output), plain)


def test_batched_prediction_equals_one_at_a_time():
    images = [rectangle_image(70, 50, (5, 5, 30, 40))[0], rectangle_image(40, 120, (60, 0, 100, 30))[0]]
    runner = TeacherRunner(BrightnessTeacher(), input_size=32, flip_tta=True)
    together = runner.predict(images)
    for image, prediction in zip(images, together):
        (alone,) = runner.predict([image])
        assert np.allclose(alone.probability, prediction.probability, atol=1e-5)


def test_iou_of_two_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert iou(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert iou(a, b) == pytest.approx(4 / 12)
    with pytest.raises(ValueError):
        iou(a, b[:2])


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    config = teacher_config(TINY["encoder_name"], 1, TINY["decoder_channels"])
    model = build_teacher(config)
    save_checkpoint(path, {"arch": TEACHER_ARCH, "config": config, "model": model.state_dict(), "input_size": 64})
    return path, config


def test_load_teacher_accepts_its_own_checkpoint(tiny_checkpoint):
    path, config = tiny_checkpoint
    model, state = load_teacher(path, expected_config=config)
    assert state["input_size"] == 64
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_load_teacher_refuses_another_architecture(tiny_checkpoint, tmp_path):
    path, config = tiny_checkpoint
    with pytest.raises(CheckpointError, match="encoder_name"):
        load_teacher(path, expected_config=teacher_config("se_resnext50_32x4d", 1, 16))
    with pytest.raises(CheckpointError, match="classes"):
        load_teacher(path, expected_config=teacher_config("resnet18", 2, 16))
    foreign = tmp_path / "other.pt"
    save_checkpoint(foreign, {"arch": "extremec3net", "config": {}, "model": {}})
    with pytest.raises(CheckpointError, match="extremec3net"):
        load_teacher(foreign)


def test_train_teacher_adopts_a_matching_checkpoint_and_refuses_a_wrong_one(tiny_checkpoint, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project is the params file's folder; its outputs land there
    path, _ = tiny_checkpoint
    out = tmp_path / "models" / "teacher.pt"
    section = {**TINY, "checkpoint": str(path)}
    paths = {"teacher": str(out), "metrics": str(tmp_path / "m")}
    params = write_params(tmp_path / "params.yaml", {"paths": paths, "teacher": section})
    assert main(["--params", str(params)]) == 0
    assert out.read_bytes() == path.read_bytes()
    assert json.loads((tmp_path / "m" / "teacher" / "train.json").read_text())["source"] == "checkpoint"

    out.unlink()
    wrong = write_params(tmp_path / "wrong.yaml", {"paths": paths, "teacher": {**section, "encoder_name": "mobilenet_v2"}})
    assert main(["--params", str(wrong)]) == 2
    assert "encoder_name" in capsys.readouterr().err
    assert not out.exists()


def test_params_refuse_an_input_size_the_network_cannot_take():
    with pytest.raises(ValueError, match="multiple of 16"):
        TeacherParams(**quick_section("teacher", input_size=100))


# ---------------------------------------------------------------------------- training core


class SyntheticSquares(Dataset):
    """Deterministic bright squares on dark ground, already normalised."""

    def __init__(self, n: int, size: int = 16):
        rng = np.random.default_rng(0)
        self.items = []
        for i in range(n):
            x0, y0 = rng.integers(0, size // 2, 2)
            mask = np.zeros((size, size), np.float32)
            mask[y0:y0 + size // 2, x0:x0 + size // 2] = 1
            image = np.repeat(mask[None], 3, 0) * 2 - 1 + rng.normal(0, 0.3, (3, size, size))
            self.items.append({"image": torch.tensor(image, dtype=torch.float32), "mask": torch.tensor(mask),
                               "id": f"s/{i}"})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 1))


def tiny_teacher_job(folder, **changes):
    """The teacher's run (AdamW, cosine per step, cross-entropy + Dice) on a tiny network."""
    data = SyntheticSquares(10)
    settings = TeacherParams(**quick_section("teacher", epochs=3, batch_size=4, lr=0.01, checkpoint_every_steps=1,
                                             input_size=16))
    job = teacher_job(settings, SeededAugmentation(data, None, settings.seed), data, folder, "fp", progress=False,
                      log=lambda m: None)
    return dataclasses.replace(job, make_model=lambda fresh: tiny_net(), **changes)


def test_a_teacher_run_resumed_after_a_crash_ends_where_an_uninterrupted_run_ends(tmp_path):
    straight = run(tiny_teacher_job(tmp_path / "straight"))
    history = straight.history
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]

    class Crash(Exception):
        pass

    calls = []

    def crash_on_fifth_step(net, images, masks):
        calls.append(1)
        if len(calls) == 5:  # 4 steps done: mid-epoch 2 (3 batches per epoch)
            raise Crash
        return cross_entropy_dice(net(images), masks, 0.5)

    with pytest.raises(Crash):
        run(tiny_teacher_job(tmp_path / "crashed", loss=crash_on_fifth_step))
    saved = torch.load(tmp_path / "crashed" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["batch_in_epoch"] == 1
    resumed = run(tiny_teacher_job(tmp_path / "crashed"))
    history_resumed = resumed.history
    assert [h["step"] for h in history_resumed] == [3, 6, 9]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)  # bit for bit: the RNG state and the sample order are resumed too
    assert history_resumed[-1]["train_loss"] == history[-1]["train_loss"]


def test_the_teacher_loss_prefers_the_right_mask():
    target = torch.zeros(1, 8, 8)
    target[:, 2:6, 2:6] = 1
    good = (target * 2 - 1).unsqueeze(1) * 6
    assert cross_entropy_dice(good, target, 0.5) < cross_entropy_dice(-good, target, 0.5)
    two_class = torch.cat([-good, good], dim=1)
    assert cross_entropy_dice(two_class, target, 0.5) < cross_entropy_dice(-two_class, target, 0.5)


def test_drop_leaks_removes_validation_samples_and_crops_of_them():
    train = pd.DataFrame({"id": ["ccp/1", "crops/1_0", "ccp/2"], "origin": ["1.jpg", "ccp/9", "2.jpg"]})
    val = pd.DataFrame({"id": ["ccp/9", "ccp/1"]})
    kept, dropped = drop_leaks(train, val)
    assert kept["id"].tolist() == ["ccp/2"] and dropped == 2


# ---------------------------------------------------------------------------- the stage on real images


@pytest.fixture
def real_eg1800(tmp_path, shared_datasets):
    """Six real EG1800 portraits with their masks, shrunk to 96x128, as a canonical dataset."""
    src = shared_datasets / "eg1800"
    samples = []
    for path in sorted((src / "images_data_crop").glob("*.jpg"))[:6]:
        mask_file = src / "images_mask" / f"{path.stem}_mask.mat"
        if not mask_file.exists():
            continue
        image = np.asarray(Image.open(path).convert("RGB").resize((96, 128), Image.BILINEAR))
        mask = scipy.io.loadmat(mask_file)["mask"] > 0
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((96, 128), Image.NEAREST)) > 127
        split = "val" if len(samples) == 0 else "train"
        samples.append({"id": f"eg1800/{path.stem}", "split": split, "image": image, "mask": mask})
    assert len(samples) >= 4
    root = tmp_path / "prepared"
    write_canonical(root, samples)
    return root


@pytest.mark.realdata
def test_train_teacher_on_real_images_lowers_the_loss_and_resumes(real_eg1800, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    paths = {"prepared": str(real_eg1800), "crops": str(tmp_path / "no-crops"), "teacher": str(out / "teacher.pt"),
             "teacher_resume": str(out / "resume"), "metrics": str(out / "metrics")}
    section = {**TINY, "train_data": [{"dataset": "prepared", "splits": ["train"]},
                                      {"dataset": "crops", "optional": True}],
               "val_data": [{"dataset": "prepared", "splits": ["val"]}],
               "input_size": 64, "epochs": 1, "batch_size": 4, "lr": 0.003, "checkpoint_every_steps": 100,
               "seed": 1, "device": "cpu"}
    log_csv = out / "metrics" / "teacher" / "train_log.csv"
    assert main(["--params", str(write_params(tmp_path / "p1.yaml", {"paths": paths, "teacher": section})),
                 "--quiet"]) == 0
    first = pd.read_csv(log_csv)
    assert len(first) == 1
    assert (out / "resume" / "last.pt").is_file()

    # Rerun with more epochs: continues from the resume checkpoint instead of starting over.
    section["epochs"] = 4
    assert main(["--params", str(write_params(tmp_path / "p2.yaml", {"paths": paths, "teacher": section})),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "resuming from" in captured.out
    assert "%|" not in captured.err  # --quiet: no progress bar
    log = pd.read_csv(log_csv)
    assert log["epoch"].tolist() == [1, 2, 3, 4]
    assert log["train_loss"].iloc[0] == pytest.approx(first["train_loss"].iloc[0])
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
    metrics = json.loads((out / "metrics" / "teacher" / "train.json").read_text())
    assert metrics["train_images"] == 5 and metrics["val_images"] == 1
    assert any("no-crops" in note for note in metrics["notes"])
    model, state = load_teacher(out / "teacher.pt", expected_config=teacher_config("resnet18", 1, 16))
    manifest = pd.read_csv(real_eg1800 / "manifest.csv", dtype=str)
    assert state["input_size"] == 64
    assert state["train_ids"] == sorted(manifest.loc[manifest["split"] == "train", "id"])


def test_local_encoder_weights_are_loaded_and_a_wrong_file_is_refused(tmp_path):
    source = build_teacher(teacher_config("resnet18", 1, 16))
    weights = {**source.encoder.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(weights, tmp_path / "resnet18_imagenet.pth")  # an ImageNet file still carries its classifier
    model = build_teacher(teacher_config("resnet18", 1, 16), encoder_weights=str(tmp_path / "resnet18_imagenet.pth"))
    for name, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], value)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="do not fit the encoder"):
        build_teacher(teacher_config("resnet18", 1, 16), encoder_weights=str(tmp_path / "other.pth"))
