"""The GPU paper run's code paths, on the CPU: packing, GPU-style augmentation, the driver, resume.

No GPU is used (CI has none): the driver runs with ``--device cpu`` and overrides that make it
a few seconds long. What stays untested here is only what needs CUDA itself (bf16 autocast on
the GPU, cudnn, the device's speed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.images import write_image, write_mask_png
from pipeline.manifest import ManifestRow, to_frame

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "gpu"))
import pack_data
import paper_run

SMOKE = ["--device", "cpu", "--epochs", "1", "--limit", "4", "--input-size", "32", "--batch-size", "2"]


def drawn_train_set(root: Path, n_train: int = 10, n_val: int = 3) -> Path:
    """A training manifest of drawn portraits (a bright ellipse on a dark textured background)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_train + n_val):
        h, w = (120, 90) if i % 3 else (100, 100)
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy - h * 0.6) / (h * 0.35)) ** 2 + ((xx - w / 2) / (w * 0.3)) ** 2 < 1
        image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        image[mask] = (220, 180, 150)
        source = "eg1800" if i % 2 == 0 else "ccp_crops"
        key = f"{i:04d}"
        write_image(root / "images" / source / f"{key}.png", image)
        write_mask_png(root / "masks" / source / f"{key}.png", mask)
        rows.append(ManifestRow(id=f"{source}/{key}", source=source, split="val" if i >= n_train else "train",
                                image=f"images/{source}/{key}.png", mask=f"masks/{source}/{key}.png", width=w,
                                height=h))
    to_frame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu")
    out = root / "pack.npz"
    meta = pack_data.pack(REPO / "profiles" / "paper.yaml", out, train_set=drawn_train_set(root / "train_set"),
                          short_side=72, progress=False)
    assert meta["train_images"] == 10 and meta["val_images"] == 3 and meta["short_side"] == 72
    return out


def test_pack_holds_shrunk_images_masks_and_the_train_stages_validation_rows(pack):
    with np.load(pack, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        hw, val_hw, sources = z["train_hw"], z["val_hw"], z["train_sources"]
        assert z["val_ids"].tolist() == ["eg1800/0010", "ccp_crops/0011", "eg1800/0012"]  # the 'val' split rows
    assert meta["input_size"] == 224 and meta["profile"].endswith("paper.yaml") and len(meta["manifest_sha256"]) == 64
    assert hw.min(axis=1).max() == 72  # short side shrunk to 72, aspect kept: 120x90 -> 96x72
    assert {tuple(v) for v in hw} == {(96, 72), (72, 72)}
    assert (val_hw == 224).all()  # validation rows at the square training size, as the train stage validates
    assert set(sources) == {"eg1800", "ccp_crops"}
    data = paper_run.load_pack(pack, "cpu")
    assert data.images.shape == (10, 3, 96, 72) and data.images.dtype == torch.uint8
    first = data.masks[1, 0, :96, :72].numpy().astype(bool)  # a 120x90 portrait, its ellipse kept
    assert 0.2 < first.mean() < 0.5 and not data.masks[0, 0, 72:].any()  # the 100x100 one: zero padding below
    assert data.val_images.shape == (3, 3, 224, 224) and data.val_masks.dtype == torch.bool


def test_a_pack_over_its_budget_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="over --max-mib"):
        pack_data.pack(REPO / "profiles" / "paper.yaml", tmp_path / "p.npz",
                       train_set=drawn_train_set(tmp_path / "ts", 4, 2), max_mib=0.001, progress=False)
    assert not (tmp_path / "p.npz").exists()


# ---------------------------------------------------------------- augmentation


def _one(images, masks, hw, size, **draws):
    theta = paper_run.affine_theta(torch.tensor([hw], dtype=torch.float32), tuple(images.shape[2:]),
                                   torch.tensor([draws.get("angle", 0.0)]), torch.tensor([draws.get("scale", [1., 1.])]),
                                   torch.tensor([draws.get("shift", [0., 0.])]), torch.tensor([draws.get("flip", False)]))
    grid = torch.nn.functional.affine_grid(theta, (1, 3, size, size), align_corners=False)
    image = torch.nn.functional.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)
    mask = torch.nn.functional.grid_sample(masks.float(), grid, mode="nearest", align_corners=False)
    return image[0].permute(1, 2, 0).numpy(), mask[0, 0].numpy()


def test_identity_warp_is_the_plain_resize_and_ignores_the_padding():
    import cv2

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, size=(12, 9, 3)).astype(np.uint8)
    image = cv2.resize(small, (90, 120), interpolation=cv2.INTER_CUBIC)  # smooth, 120x90
    canvas = np.zeros((3, 130, 100), np.uint8)  # padded beyond the image, as in the pack
    canvas[:, :120, :90] = image.transpose(2, 0, 1)
    mask = np.zeros((1, 1, 130, 100), np.uint8)
    mask[0, 0, 30:90, 20:70] = 1
    warped, warped_mask = _one(torch.from_numpy(canvas)[None], torch.from_numpy(mask), (120, 90), 60)
    expected = cv2.resize(image, (60, 60), interpolation=cv2.INTER_LINEAR).astype(float)
    assert np.abs(warped - expected).max() < 2.0  # the same resize (no padding pixel leaks in)
    resized = cv2.resize(mask[0, 0, :120, :90], (60, 60), interpolation=cv2.INTER_NEAREST) > 0
    ours = warped_mask > 0.5  # nearest at pixel centres; OpenCV's nearest floors: they differ on the edge only
    assert (ours & resized).sum() / (ours | resized).sum() > 0.93 and set(np.unique(warped_mask)) == {0.0, 1.0}
    flipped, _ = _one(torch.from_numpy(canvas)[None], torch.from_numpy(mask), (120, 90), 60, flip=True)
    assert np.abs(flipped - warped[:, ::-1]).max() < 1e-3


def test_warp_rotates_zooms_and_shifts_about_the_centre():
    square = np.zeros((1, 1, 40, 40), np.uint8)
    square[0, 0, 5:15, 10:30] = 1  # a bar near the top
    mask = torch.from_numpy(square)
    image = mask.expand(1, 3, 40, 40).contiguous() * 255
    _, turned = _one(image, mask, (40, 40), 40, angle=90.0)
    centre = np.argwhere(turned > 0.5).mean(0)  # the bar's centre (9.5, 19.5) turns about (19.5, 19.5)
    assert min(np.hypot(*(centre - (19.5, 29.5))), np.hypot(*(centre - (19.5, 9.5)))) < 0.6
    assert np.ptp(np.argwhere(turned > 0.5)[:, 0]) > np.ptp(np.argwhere(turned > 0.5)[:, 1])  # now upright
    middle = np.zeros((1, 1, 40, 40), np.uint8)
    middle[0, 0, 15:25, 15:25] = 1
    _, zoomed = _one(torch.from_numpy(middle).expand(1, 3, 40, 40) * 255, torch.from_numpy(middle), (40, 40), 40,
                     scale=[2.0, 2.0])
    assert zoomed.sum() == pytest.approx(400, rel=0.1)  # 10x10 -> 20x20 about the centre
    assert np.argwhere(zoomed > 0.5).mean(0) == pytest.approx((19.5, 19.5), abs=0.6)
    _, shifted = _one(image, mask, (40, 40), 40, shift=[0.25, 0.0])
    assert np.argwhere(shifted > 0.5)[:, 1].mean() == pytest.approx(np.argwhere(square[0, 0])[:, 1].mean() + 10, abs=1)


def test_augmentation_is_seeded_by_epoch_and_indices(pack):
    data = paper_run.load_pack(pack, "cpu")
    aug = paper_run.GpuAugmentation(data.images, data.masks, data.hw, 64, seed=0)
    aug.reseed(5)
    a_images, a_masks = aug.augment([3, 1, 4])
    b_images, b_masks = aug.augment([3, 1, 4])
    assert torch.equal(a_images, b_images) and torch.equal(a_masks, b_masks)  # a resumed epoch redraws the same
    aug.reseed(6)
    assert not torch.equal(aug.augment([3, 1, 4])[0], a_images)
    assert a_images.shape == (3, 3, 64, 64) and set(a_masks.unique().tolist()) <= {0.0, 1.0}
    items = aug.__getitems__([0, 2])  # what the training loop's DataLoader asks for
    assert len(items) == 2 and items[0]["image"].shape == (3, 64, 64) and items[0]["mask"].shape == (64, 64)


def test_validation_miou_uses_the_empty_conventions():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.where(x[:, :1] > 0, 1.0, -1.0)

    images = torch.full((3, 3, 4, 4), -1.0)
    images[0, :, :2] = 1.0  # predicts the top half
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :1] = True  # truth: the top quarter -> IoU 0.5
    masks[1, 0, 0] = True  # nothing predicted, something true -> 0
    # image 2: nothing predicted, nothing true -> 1
    assert paper_run.validation_miou(Fixed(), images, masks, 2) == pytest.approx(50.0)


# ---------------------------------------------------------------- the recipe and the driver


def test_recipe_is_the_paper_profile_itself():
    from pipeline.params import load_section
    from pipeline.stages.train import TrainParams

    recipe = paper_run.read_recipe(REPO / "profiles" / "paper.yaml")
    parsed = load_section(TrainParams, "train", REPO / "profiles" / "paper.yaml")
    assert recipe["settings"]["epochs"] == parsed.settings.epochs == 300 and recipe["settings"]["batch_size"] == 60
    assert recipe["settings"] == {k: parsed.settings.model_dump()[k] for k in paper_run.RECIPE_KEYS}
    assert recipe["model_kwargs"] == parsed.model_kwargs["extremec3net"] and recipe["base_source"] == "eg1800"
    ce = paper_run.run_settings(recipe, "ce_loss", {})
    assert ce["loss"]["kind"] == "ce" and {k: v for k, v in ce.items() if k != "loss"} == {
        k: v for k, v in recipe["settings"].items() if k != "loss"}
    assert paper_run.run_settings(recipe, "paper", {"epochs": 1, "batch_size": None})["batch_size"] == 60


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    MISSING = ('albumentations', 'segmentation_models_pytorch', 'dvc', 'fiftyone')
    class _Missing(importlib.abc.MetaPathFinder):  # what the GPU machine does not have
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in MISSING:
                raise ImportError(f'{name} is not installed on the GPU machine')
    sys.meta_path.insert(0, _Missing())
    sys.argv = ['paper_run.py'] + sys.argv[1:]
    sys.path.insert(0, REPO)
    import runpy
    runpy.run_path(SCRIPT, run_name='__main__')
""")


def _driver(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = BLOCKER.replace("REPO", repr(str(REPO))).replace("SCRIPT", repr(str(REPO / "scripts" / "gpu" /
                                                                                   "paper_run.py")))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(cwd)})


def test_smoke_run_of_all_three_runs_without_the_missing_packages(pack, tmp_path):
    out = tmp_path / "out"
    done = _driver(["--profile", str(REPO / "profiles" / "paper.yaml"), "--pack", str(pack), "--out", str(out),
                    "--work", str(tmp_path / "work"), *SMOKE], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["ce_loss.pt", "checkpoints.tar", "history.csv", "no_generated.pt", "paper.pt", "summary.json"]
    assert len(files) + 1 <= paper_run.MAX_OUT_FILES  # + the shell's log.txt
    assert all((out / f).stat().st_size < 16 * 2**20 for f in files)
    from pipeline.inference import load_trained_model

    trained = load_trained_model(out / "paper.pt", "extremec3net")
    assert trained.input_size == 32
    history = pd.read_csv(out / "history.csv")
    assert history.groupby("run").size().to_dict() == {"ce_loss": 2, "no_generated": 2, "paper": 2}  # 1 + 1 epochs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overrides"] == {"epochs": 1, "batch_size": 2, "input_size": 32, "limit": 4}
    assert summary["runs"]["no_generated"]["training_images"] == 2  # eg1800 rows of the first 4 only
    assert summary["runs"]["ce_loss"]["settings"]["loss"]["kind"] == "ce" and summary["device"] == "cpu"


def test_a_budget_stop_resumes_to_the_weights_of_an_unbroken_run(pack, tmp_path):
    common = ["--profile", str(REPO / "profiles" / "paper.yaml"), "--pack", str(pack), "--runs", "paper", *SMOKE]
    unbroken = _driver([*common, "--out", str(tmp_path / "a"), "--work", str(tmp_path / "wa")], tmp_path)
    assert unbroken.returncode == 0, unbroken.stderr
    stopped = _driver([*common, "--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb"), "--budget-s", "0"],
                      tmp_path)
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr  # stopped after stage 1, checkpoint kept
    assert "rerun with --resume-from" in stopped.stdout and not (tmp_path / "b" / "paper.pt").exists()
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["runs"]["paper"]["finished"] is False
    resumed = _driver([*common, "--out", str(tmp_path / "c"), "--work", str(tmp_path / "wc"),
                       "--resume-from", str(tmp_path / "b")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    a = torch.load(tmp_path / "a" / "paper.pt", weights_only=True)["model"]
    c = torch.load(tmp_path / "c" / "paper.pt", weights_only=True)["model"]
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    history = pd.read_csv(tmp_path / "c" / "history.csv")  # stage 1 trained by the earlier call, stage 2 now
    assert history["stage"].tolist() == [1, 2] and json.loads((tmp_path / "c" / "summary.json").read_text())[
        "runs"]["paper"]["epochs_trained_this_call"] == 1


def test_no_cuda_is_a_one_line_error(pack, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _driver(["--pack", str(pack), "--out", str(tmp_path / "o")], tmp_path)
    assert done.returncode == 2 and "no CUDA device here" in done.stderr
