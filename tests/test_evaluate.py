"""Evaluation: IoU and boundary F1 on drawn masks, prediction at the original size, the stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from params_helpers import write_params
from torch import nn

from pipeline.checkpoint import save_checkpoint
from pipeline.images import write_image, write_mask_png
from pipeline.manifest import ManifestRow, to_frame
from pipeline.metrics import boundary_f1, iou, mask_outline
from pipeline.models import MODELS, register
from pipeline.stages import evaluate
from pipeline.stages.evaluate import (
    PER_IMAGE_COLUMNS,
    main,
    miou_interval,
    predict_masks,
    summarise,
)

# evaluate's keys that the quick profile may not list yet; every test here names them itself.
EVAL_KEYS = {"bootstrap_resamples": 1000, "confidence_level": 0.95, "peers": ["mediapipe"]}


class BrightnessNet(nn.Module):
    """Stand-in (tests only): person = bright pixels, through one learnable 1x1 conv."""

    def __init__(self, num_classes: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(0.0)

    def forward(self, x):
        return self.conv(x)


if "test_brightness" not in MODELS:
    register("test_brightness")(lambda num_classes=1: BrightnessNet(num_classes))


def box(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_iou_on_drawn_masks_and_empty_conventions():
    pred = box((8, 8), 0, 4, 0, 4)
    truth = box((8, 8), 2, 6, 0, 4)
    assert iou(pred, truth) == pytest.approx(8 / 24)
    empty = np.zeros((8, 8), dtype=bool)
    assert iou(empty, empty) == 1.0  # nothing to find, nothing found
    assert iou(empty, truth) == 0.0
    assert iou(pred, empty) == 0.0
    with pytest.raises(ValueError):
        iou(pred, np.zeros((4, 4), dtype=bool))


def test_outline_is_inner_four_neighbour_boundary_without_the_frame():
    square = box((10, 10), 3, 7, 3, 7)
    outline = mask_outline(square)
    assert outline.sum() == 16 - 4 and not outline[4:6, 4:6].any()
    left_half = box((8, 8), 0, 8, 0, 4)
    assert np.array_equal(np.nonzero(mask_outline(left_half))[1], np.full(8, 3))  # only the column x = 3
    assert not mask_outline(np.ones((5, 5), dtype=bool)).any()


def test_boundary_f1_hand_computed():
    truth = box((12, 12), 2, 8, 2, 8)  # 6x6 square: outline of 20 pixels
    shifted = box((12, 12), 2, 8, 3, 9)  # one pixel to the right
    assert boundary_f1(truth, truth, 0) == 1.0
    # exact match: only the top and bottom rows overlap, 5 + 5 of 20 outline pixels each way
    assert boundary_f1(shifted, truth, 0) == pytest.approx(0.5)
    assert boundary_f1(shifted, truth, 1) == 1.0  # everything within one pixel
    far = box((12, 12), 2, 8, 6, 12)  # touches the right frame: outline has no right column
    p = 4 / 16  # far's outline: rows 2,7 at x=6..11 (12) + x=6 at rows 3..6 (4); on truth's: (2|7, 6|7)
    r = 4 / 20  # truth's outline pixels on far's outline: (2,6),(2,7),(7,6),(7,7)
    assert boundary_f1(far, truth, 0) == pytest.approx(2 * p * r / (p + r))
    empty = np.zeros((12, 12), dtype=bool)
    assert boundary_f1(empty, empty) == 1.0
    assert boundary_f1(empty, truth) == 0.0 and boundary_f1(truth, empty) == 0.0
    full = np.ones((12, 12), dtype=bool)
    assert boundary_f1(full, full) == 1.0  # no outline inside the image on either side


def test_summarise_reports_percent():
    table = pd.DataFrame({"id": ["a/1", "a/2"], "image_key": ["1", "2"], "iou": [1.0, 0.5],
                          "boundary_f1": [0.2, 0.4]})
    assert summarise(table) == {"miou": 75.0, "boundary_f1": 30.0, "n_images": 2}


class HalfNet(nn.Module):
    """Logit +1 on the left half of its input, -1 on the right."""

    def forward(self, x):
        out = -torch.ones(x.shape[0], 1, *x.shape[-2:])
        out[..., : x.shape[-1] // 2] = 1.0
        return out


def test_prediction_is_upsampled_to_each_image_size():
    masks = predict_masks(HalfNet(), torch.zeros(2, 3, 32, 32), [(40, 60), (10, 8)])
    assert masks[0].shape == (40, 60) and masks[1].shape == (10, 8)
    assert masks[0][:, :29].all() and not masks[0][:, 31:].any()
    assert masks[1][:, :4].all() and not masks[1][:, 4:].any()


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepared = tmp_path / "data" / "prepared"
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["test", "test", "test", "train"]):
        h, w = 48, 36
        mask = box((h, w), 8 + i, 40, 6, 30 - i)
        image = rng.integers(0, 40, size=(h, w, 3), dtype=np.uint8)
        image[mask] = 230
        key = f"{i:05d}"
        write_image(prepared / "images" / "eg1800" / f"{key}.png", image)
        write_mask_png(prepared / "masks" / "eg1800" / f"{key}.png", mask)
        rows.append(ManifestRow(id=f"eg1800/{key}", source="eg1800", split=split,
                                image=f"images/eg1800/{key}.png", mask=f"masks/eg1800/{key}.png", width=w, height=h))
    to_frame(rows).to_csv(prepared / "manifest.csv", index=False)
    write_params(tmp_path / "params.yaml", {
        "train": {"archs": ["test_brightness"]},
        "evaluate": {**EVAL_KEYS, "boundary_tolerance_px": 2, "batch_size": 2, "workers": 0},
    })
    save_checkpoint(tmp_path / "models" / "test_brightness" / "model.pt",
                    {"arch": "test_brightness", "config": {}, "model": BrightnessNet().state_dict(),
                     "input_size": 32})
    return tmp_path


def test_stage_writes_per_image_table_and_metrics(project):
    assert main(["--params", "params.yaml"]) == 0
    table = pd.read_csv(project / "models" / "test_brightness" / "per_image.csv", dtype={"image_key": str})
    assert list(table.columns) == PER_IMAGE_COLUMNS
    assert table["id"].tolist() == ["eg1800/00000", "eg1800/00001", "eg1800/00002"]  # the test split only
    assert table["image_key"].tolist() == ["00000", "00001", "00002"]
    assert (table["iou"] > 0.9).all() and (table["iou"] <= 1).all()  # bright box found at full size
    metrics = json.loads((project / "metrics" / "eval" / "test_brightness.json").read_text())
    assert metrics["n_images"] == 3
    assert metrics["miou"] == pytest.approx(table["iou"].mean() * 100, abs=1e-3)
    assert metrics["boundary_f1"] == pytest.approx(table["boundary_f1"].mean() * 100, abs=1e-3)
    assert metrics["miou_low"] <= metrics["miou"] <= metrics["miou_high"] and metrics["confidence_level"] == 0.95


def test_inverted_model_scores_zero(project):
    inverted = BrightnessNet()
    with torch.no_grad():
        inverted.conv.weight.fill_(-1.0)
    save_checkpoint(project / "models" / "test_brightness" / "model.pt",
                    {"arch": "test_brightness", "config": {}, "model": inverted.state_dict(), "input_size": 32})
    assert main(["--params", "params.yaml", "--arch", "test_brightness"]) == 0
    metrics = json.loads((project / "metrics" / "eval" / "test_brightness.json").read_text())
    assert metrics["miou"] < 10


def test_model_of_another_architecture_is_refused(project, capsys):
    save_checkpoint(project / "models" / "test_brightness" / "model.pt",
                    {"arch": "extremec3net", "config": {}, "model": {}})
    assert main(["--params", "params.yaml"]) == 2
    assert "'extremec3net'" in capsys.readouterr().err
    assert main(["--params", "params.yaml", "--arch", "missing_net"]) == 2
    assert "unknown architecture(s) ['missing_net']" in capsys.readouterr().err
    assert main(["--params", "params.yaml", "--arch", "extremec3net"]) == 2  # registered, never trained
    assert "no trained model" in capsys.readouterr().err


def test_stage_reads_and_writes_where_the_paths_section_says(project):
    """Inputs and outputs follow ``paths`` (models, prepared, metrics), not a stage key or a code default."""
    (project / "data").rename(project / "elsewhere")
    (project / "models").rename(project / "nets")
    write_params(project / "params.yaml", {
        "paths": {"prepared": "elsewhere/prepared", "models": "nets", "metrics": "figures"},
        "train": {"archs": ["test_brightness"]},
        "evaluate": {**EVAL_KEYS, "batch_size": 2, "workers": 0},
    })
    assert main(["--params", "params.yaml", "--quiet"]) == 0
    assert (project / "nets" / "test_brightness" / "per_image.csv").is_file()
    metrics = json.loads((project / "figures" / "eval" / "test_brightness.json").read_text())
    assert metrics["n_images"] == 3
    assert not (project / "metrics").exists() and not (project / "models").exists()


def test_quiet_shows_no_progress_bar(project, capsys):
    assert main(["--params", "params.yaml", "--quiet"]) == 0
    assert "evaluate test_brightness" not in capsys.readouterr().err  # tqdm writes its bar to stderr
    assert main(["--params", "params.yaml"]) == 0
    assert "evaluate test_brightness" in capsys.readouterr().err


# ---------------------------------------------------------------- the mIoU's interval


def test_interval_brackets_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(1)
    few, many = rng.uniform(0.8, 1.0, 20), rng.uniform(0.8, 1.0, 2000)
    low, high = miou_interval(few, resamples=2000, level=0.95)
    assert low < few.mean() * 100 < high
    low_many, high_many = miou_interval(many, resamples=2000, level=0.95)
    assert high_many - low_many < (high - low) / 5  # about sqrt(100) = 10 times narrower
    assert miou_interval(few, resamples=2000, level=0.95) == (low, high)  # fixed seed: the same every run
    assert miou_interval([0.5, 0.5, 0.5], resamples=100, level=0.9) == (50.0, 50.0)
    wider = miou_interval(few, resamples=2000, level=0.99)
    assert wider[0] < low and wider[1] > high


# ---------------------------------------------------------------- a peer, on drawn images


class BrightSegmenter(nn.Module):
    """Stand-in for MediaPipe's segmenter (tests only): probability 0.9 on bright pixels, at 16x24."""

    def __init__(self, variant="general", model_file=None):
        super().__init__()
        self.input_size = (16, 24)
        self.scale = nn.Parameter(torch.ones(1), requires_grad=False)

    def forward(self, images):
        assert tuple(images.shape[2:]) == self.input_size and 0 <= images.min() and images.max() <= 1
        return (images.mean(1, keepdim=True) > 0.5).float() * 0.8 * self.scale + 0.1


def test_peer_stage_writes_its_own_files_and_leaves_the_models_alone(project, monkeypatch, capsys):
    from pipeline.teachers import mediapipe

    monkeypatch.setattr(mediapipe, "MediaPipeSelfieSegmenter", BrightSegmenter)
    write_params(project / "params.yaml", {
        "train": {"archs": ["test_brightness"]},
        "evaluate": {**EVAL_KEYS, "boundary_tolerance_px": 2, "batch_size": 2, "workers": 0},
        "complexity": {"latency_runs": 3, "warmup_runs": 1}})
    assert main(["--params", "params.yaml", "--quiet", "--peer", "mediapipe"]) == 0
    table = pd.read_csv(project / "models" / "peers" / "mediapipe" / "per_image.csv", dtype={"image_key": str})
    assert table["id"].tolist() == ["eg1800/00000", "eg1800/00001", "eg1800/00002"]  # the same rows as a model
    assert (table["iou"] > 0.8).all()  # the bright box, found through fit -> 16x24 -> resized back -> > 0.5
    metrics = json.loads((project / "metrics" / "eval" / "peer_mediapipe.json").read_text())
    assert metrics["kind"] == "peer" and metrics["params"] == 1 and metrics["input_size"] == [16, 24]
    assert metrics["latency_threads"] == 2 and metrics["miou_low"] <= metrics["miou"] <= metrics["miou_high"]
    assert not (project / "metrics" / "eval" / "test_brightness.json").exists()  # only the peer was asked for
    assert "evaluate peer mediapipe: mIoU" in capsys.readouterr().out


def test_peer_not_listed_or_with_an_arch_is_refused(project, capsys):
    write_params(project / "params.yaml", {"train": {"archs": ["test_brightness"]},
                                           "evaluate": {**EVAL_KEYS, "peers": []}})
    assert main(["--params", "params.yaml", "--peer", "mediapipe"]) == 2
    assert "not in evaluate.peers" in capsys.readouterr().err
    assert main(["--params", "params.yaml", "--peer", "mediapipe", "--arch", "test_brightness"]) == 2
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--params", "params.yaml", "--peer", "tiktok"])  # argparse names the choices


def test_peer_threshold_is_mediapipes():
    probability = torch.tensor([[[[0.49, 0.51], [0.5, 0.9]]]])
    masks = evaluate.predict_peer_masks(lambda x: probability, torch.zeros(1, 3, 2, 2), [(2, 2)])
    assert masks[0].tolist() == [[False, True], [False, True]]
