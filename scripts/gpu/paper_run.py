"""The paper run on one CUDA GPU: ExtremeC3Net 300 + 300 epochs at batch 60, then Table 3's ablations.

Why a driver of its own: the GPU machine has its own Python 3.12 and CUDA PyTorch but no
albumentations, DVC or FiftyOne, and reaches no registry; only the working tree travels
(64 MiB), so ../shared and the assembled training set do not. This script therefore

- reads the recipe from the one profile file (``profiles/paper.yaml``: ``train.settings`` and
  ``train.model_kwargs.extremec3net``), never from a copy of it;
- reads the training set from the pack that ``scripts/gpu/pack_data.py`` wrote here (JPEG
  images shrunk to 1.5x the training size, packed-bit masks, the ``train`` stage's own
  validation rows), decodes it once and keeps it on the GPU, zero-padded to one canvas;
- augments on the GPU, one batched warp per step (``GpuAugmentation``): the
  ``train_transform`` recipe (rotation +-45 degrees, zoom 0.5-1.5 per axis, shift +-25%, flip,
  brightness/contrast/saturation/hue jitter with p 0.8, Gaussian blur 3 or 5 with p 0.3,
  Gaussian noise std 0.02-0.06 with p 0.3) redrawn with torch; the same distribution, other
  draws than albumentations' (so not bit-identical to ``portrait-curation train``);
  the GPU never waits on a loader process;
- trains through the pipeline's own loop (``pipeline.training.run``: its checkpoints,
  resume, multistep schedule, bf16 autocast and channels-last switches) with the train
  stage's loss (``pipeline.losses.SegmentationLoss``) and two stages (CoarseNet, then the full
  net from the best stage-1 weights, as ``train`` does);
- stops cleanly at ``--budget-s`` of wall time after the epoch in flight, with every
  checkpoint saved: rerun with ``--resume-from`` pointing at the last ``checkpoints.tar``
  and it continues where it stopped (the loop's resume: the same weights as an unbroken run).

Runs, in order (``--runs``): ``paper`` (the profile as it is), ``no_generated`` (only the rows
of ``assemble.base_source``: Table 3 without generated data), ``ce_loss`` (``loss.kind: ce``:
cross-entropy instead of Lovász). What comes back in ``--out`` (at most 8 files, each well
under 16 MiB): ``<run>.pt`` per finished run (the ``train`` stage's ``model.pt`` format: put
it at ``models/extremec3net/model.pt`` and run ``portrait-curation evaluate``),
``checkpoints.tar`` (every run's resumable checkpoints), ``history.csv`` (per-epoch curves of
every run), ``summary.json`` (per run: epochs, best validation mIoU, seconds, images/s; the
device and any override) and the shell's ``log.txt``.

A CPU smoke run of the same code (what the tests do):
``python scripts/gpu/paper_run.py --pack P --out O --device cpu --epochs 1 --limit 8 --input-size 64``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARCH = "extremec3net"
RUNS = ("paper", "no_generated", "ce_loss")
RECIPE_KEYS = ("input_size", "epochs", "batch_size", "lr", "weight_decay", "lr_schedule", "lr_warmup_epochs", "export",
               "loss", "seed", "channels_last", "bf16", "fused_loss", "max_steps_per_epoch")
HISTORY_COLUMNS = ["run", "epoch", "stage", "stage_epoch", "train_loss", "val_miou", "lr"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_OUT_FILES = 8  # what the device tool brings back


class BudgetReached(Exception):
    """The wall-clock budget is spent; the last checkpoint is on disk."""


# ---------------------------------------------------------------- the recipe


def read_recipe(profile: str | Path) -> dict:
    """``train.settings``, ExtremeC3Net's kwargs and ``assemble.base_source`` from the profile file."""
    import yaml

    data = yaml.safe_load(Path(profile).read_text(encoding="utf-8")) or {}
    settings = ((data.get("train") or {}).get("settings")) or {}
    missing = [k for k in RECIPE_KEYS if k not in settings]
    if missing:
        raise SystemExit(f"paper_run: {profile}: train.settings lacks {missing}")
    kwargs = ((data.get("train") or {}).get("model_kwargs") or {}).get(ARCH)
    if kwargs is None:
        raise SystemExit(f"paper_run: {profile}: train.model_kwargs.{ARCH} is missing")
    base = (data.get("assemble") or {}).get("base_source")
    if not base:
        raise SystemExit(f"paper_run: {profile}: assemble.base_source is missing")
    return {"settings": {k: settings[k] for k in RECIPE_KEYS}, "model_kwargs": dict(kwargs), "base_source": base}


def run_settings(recipe: dict, run: str, overrides: dict) -> dict:
    """One run's settings: the profile's, the ablation's one change, then the smoke-test overrides."""
    settings = json.loads(json.dumps(recipe["settings"]))
    if run == "ce_loss":
        settings["loss"]["kind"] = "ce"
    elif run not in ("paper", "no_generated"):
        raise SystemExit(f"paper_run: unknown run {run!r} (runs: {', '.join(RUNS)})")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


# ---------------------------------------------------------------- the pack, on the device


@dataclass
class Packed:
    images: torch.Tensor  # (N, 3, Hc, Wc) uint8, each image top-left, zero padding
    masks: torch.Tensor  # (N, 1, Hc, Wc) uint8 0/1
    hw: torch.Tensor  # (N, 2) float: each image's own height, width
    sources: np.ndarray
    val_images: torch.Tensor  # (M, 3, S, S) float, normalised
    val_masks: torch.Tensor  # (M, S, S) bool
    meta: dict = field(default_factory=dict)


def _decode(jpeg: np.ndarray, offsets: np.ndarray, bits: np.ndarray, bit_offsets: np.ndarray, hw: np.ndarray,
            workers: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    import cv2

    def one(i: int):
        image = cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)[:, :, ::-1]
        h, w = (int(v) for v in hw[i])
        mask = np.unpackbits(bits[bit_offsets[i]:bit_offsets[i + 1]])[:h * w].reshape(h, w)
        if image.shape[:2] != (h, w):
            raise ValueError(f"pack: image {i} decodes to {image.shape[:2]}, its mask is {(h, w)}")
        return np.ascontiguousarray(image), mask

    with ThreadPoolExecutor(max(1, workers)) as pool:
        pairs = list(pool.map(one, range(len(hw))))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def load_pack(path: str | Path, device: str, limit: int = 0, workers: int = 8) -> Packed:
    """The pack decoded once and moved to ``device`` (uint8 canvas for training, float for validation)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    n = len(arrays["train_hw"]) if not limit else min(limit, len(arrays["train_hw"]))
    images, masks = _decode(arrays["train_jpeg"], arrays["train_jpeg_offsets"], arrays["train_mask_bits"],
                            arrays["train_mask_offsets"], arrays["train_hw"][:n], workers)
    hc, wc = max(m.shape[0] for m in masks), max(m.shape[1] for m in masks)
    canvas = np.zeros((n, 3, hc, wc), np.uint8)
    mask_canvas = np.zeros((n, 1, hc, wc), np.uint8)
    for i, (image, mask) in enumerate(zip(images, masks)):
        canvas[i, :, :image.shape[0], :image.shape[1]] = image.transpose(2, 0, 1)
        mask_canvas[i, 0, :mask.shape[0], :mask.shape[1]] = mask
    val_images, val_masks = _decode(arrays["val_jpeg"], arrays["val_jpeg_offsets"], arrays["val_mask_bits"],
                                    arrays["val_mask_offsets"], arrays["val_hw"], workers)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    if val_images:
        val = torch.from_numpy(np.stack(val_images)).permute(0, 3, 1, 2).float().div_(255.0)
        val = (val - mean) / std
        val_mask = torch.from_numpy(np.stack(val_masks)).bool()
    else:
        size = int(meta["input_size"])
        val, val_mask = torch.zeros(0, 3, size, size), torch.zeros(0, size, size, dtype=torch.bool)
    return Packed(images=torch.from_numpy(canvas).to(device), masks=torch.from_numpy(mask_canvas).to(device),
                  hw=torch.tensor(arrays["train_hw"][:n], dtype=torch.float32, device=device),
                  sources=arrays["train_sources"][:n], val_images=val.to(device), val_masks=val_mask.to(device),
                  meta=meta)


# ---------------------------------------------------------------- augmentation on the device


def batch_seed(epoch_seed: int, indices) -> int:
    """The draws of one batch follow (epoch seed, its sample indices): a resumed epoch redraws them."""
    text = f"{int(epoch_seed)}:" + ",".join(str(int(i)) for i in indices)
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def affine_theta(hw: torch.Tensor, canvas_hw: tuple[int, int], angle_deg: torch.Tensor, scale: torch.Tensor,
                 shift: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) ``affine_grid`` matrices: output square -> each image's pixels inside the padded canvas.

    As ``train_transform``: an affine warp in the image's own frame about its centre (rotation,
    per-axis zoom ``scale`` (B, 2), shift ``shift`` (B, 2) in image fractions), the result
    stretched to the square output, then mirrored where ``flip``.
    """
    b = hw.shape[0]
    h, w = hw[:, 0], hw[:, 1]
    hc, wc = canvas_hw
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a), torch.sin(a)
    rot_t = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # R^T
    inv_scale = torch.diag_embed(1.0 / scale)
    half = torch.diag_embed(torch.stack([w / 2, h / 2], -1))
    to_canvas = torch.diag_embed(torch.stack([2.0 / wc * torch.ones_like(w), 2.0 / hc * torch.ones_like(h)], -1))
    mirror = torch.diag_embed(torch.stack([torch.where(flip, -1.0, 1.0), torch.ones(b, device=hw.device)], -1))
    inverse = inv_scale @ rot_t  # output pixels (centred) -> source pixels (centred)
    linear = to_canvas @ inverse @ half @ mirror
    shift_px = torch.stack([shift[:, 0] * w, shift[:, 1] * h], -1)
    offset = -(to_canvas @ inverse @ shift_px.unsqueeze(-1)).squeeze(-1)
    offset = offset + torch.stack([w / wc - 1.0, h / hc - 1.0], -1)
    return torch.cat([linear, offset.unsqueeze(-1)], -1)


def _gaussian_kernel(size: int, device) -> torch.Tensor:
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a kernel size
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    return (k[:, None] * k[None, :]).expand(3, 1, size, size).contiguous()


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = torch.linalg.inv(_YIQ)  # once, on the CPU (no solver call on the device per batch)


def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Hue shifted by ``turns`` (fractions of the colour circle), rotating chroma in YIQ."""
    to_yiq, from_yiq = _YIQ.to(x.device), _FROM_YIQ.to(x.device)
    a = turns * 2 * math.pi
    cos, sin = torch.cos(a), torch.sin(a)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rot = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                       torch.stack([zero, sin, cos], -1)], -2)
    matrix = from_yiq @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, x)


class GpuAugmentation(torch.utils.data.Dataset):
    """The packed training images as a dataset of the training loop, augmented on their device in batches.

    The loop's loader hands a batch's indices to ``__getitems__`` (no worker processes): one
    warp of the whole batch, then the texture changes; draws depend on (epoch seed, indices).
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, hw: torch.Tensor, size: int, *, seed: int = 0,
                 rotate: float = 45.0, scale: tuple[float, float] = (0.5, 1.5), shift: float = 0.25,
                 color: float = 0.1, blur_p: float = 0.3, noise_p: float = 0.3, jitter_p: float = 0.8):
        self.images, self.masks, self.hw, self.size = images, masks, hw, int(size)
        self.epoch_seed = seed
        self.rotate, self.scale, self.shift, self.color = rotate, scale, shift, color
        self.blur_p, self.noise_p, self.jitter_p = blur_p, noise_p, jitter_p
        device = images.device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.kernels = {k: _gaussian_kernel(k, device) for k in (3, 5)}

    def reseed(self, epoch_seed: int) -> None:
        self.epoch_seed = int(epoch_seed)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices) -> list[dict]:
        images, masks = self.augment(list(indices))
        return [{"image": i, "mask": m} for i, m in zip(images, masks)]

    def augment(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) normalised images and (B, S, S) float 0/1 masks for ``indices``."""
        device = self.images.device
        g = torch.Generator().manual_seed(batch_seed(self.epoch_seed, indices))
        b = len(indices)

        def uniform(low, high, *shape):
            return (low + (high - low) * torch.rand(*shape, generator=g)).to(device)

        def chance(p):
            return (torch.rand(b, generator=g) < p).to(device)

        index = torch.tensor(indices, device=device)
        theta = affine_theta(self.hw[index], tuple(self.images.shape[2:]), uniform(-self.rotate, self.rotate, b),
                             uniform(*self.scale, b, 2), uniform(-self.shift, self.shift, b, 2), chance(0.5))
        grid = F.affine_grid(theta, (b, 3, self.size, self.size), align_corners=False)
        x = F.grid_sample(self.images[index].float().div_(255.0), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
        mask = F.grid_sample(self.masks[index].float(), grid, mode="nearest", padding_mode="zeros",
                             align_corners=False)[:, 0]
        x = self._texture(x, g, uniform, chance)
        return (x - self.mean) / self.std, (mask > 0.5).float()

    def _texture(self, x, g, uniform, chance):
        b = x.shape[0]
        c = self.color * 4
        jitter = chance(self.jitter_p).view(b, 1, 1, 1)
        brightness, contrast, saturation = (uniform(1 - c, 1 + c, b).view(b, 1, 1, 1) for _ in range(3))
        hue = uniform(-self.color / 2, self.color / 2, b)
        y = (x * brightness).clamp_(0, 1)
        mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
        y = ((y - mean) * contrast + mean).clamp_(0, 1)
        gray = _gray(y)
        y = ((y - gray) * saturation + gray).clamp_(0, 1)
        y = _rotate_hue(y, hue).clamp_(0, 1)
        x = torch.where(jitter, y, x)
        blur = chance(self.blur_p).view(b, 1, 1, 1)
        big = chance(0.5).view(b, 1, 1, 1)
        blurred = {k: F.conv2d(F.pad(x, (k // 2,) * 4, mode="reflect"), w, groups=3) for k, w in self.kernels.items()}
        x = torch.where(blur, torch.where(big, blurred[5], blurred[3]), x)
        noisy = chance(self.noise_p).view(b, 1, 1, 1)
        sigma = uniform(0.02, 0.06, b).view(b, 1, 1, 1)
        on_device = torch.Generator(device=x.device).manual_seed(int(torch.randint(2**62, (1,), generator=g)))
        noise = torch.randn(x.shape, generator=on_device, device=x.device)  # drawn where it is used
        return torch.where(noisy, (x + sigma * noise).clamp_(0, 1), x)


# ---------------------------------------------------------------- validation on the device


@torch.inference_mode()
def validation_miou(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch_size: int) -> float:
    """Mean per-image foreground IoU x100 at the training size (``pipeline.metrics.iou``'s empty cases)."""
    from pipeline.models.registry import foreground_logit

    if len(images) == 0:
        return float("nan")
    model.eval()
    scores = []
    for start in range(0, len(images), batch_size):
        predicted = foreground_logit(model(images[start:start + batch_size]).float()) > 0
        truth = masks[start:start + batch_size]
        inter = (predicted & truth).flatten(1).sum(1).float()
        union = (predicted | truth).flatten(1).sum(1).float()
        scores.append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)))
    return float(torch.cat(scores).mean().item() * 100)


# ---------------------------------------------------------------- one run


def code_fingerprint() -> str:
    from pipeline.training import code_digest

    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return digest[:16] + code_digest(["pipeline.losses", "pipeline.models.registry", "pipeline.models.extremec3net"])


def train_run(run: str, settings: dict, kwargs: dict, data: Packed, rows: torch.Tensor, work: Path, *, device: str,
              deadline: float, log, history: list[dict]) -> dict:
    """Both stages of one run through ``pipeline.training.run``; returns the model.pt state.

    ``history`` is filled with the run's per-epoch rows as they come (also when the budget stops it).
    """
    import importlib

    from pipeline.losses import SegmentationLoss
    from pipeline.models import build_model, get_spec
    from pipeline.training import TrainingJob, adam, fingerprint, native_bf16, schedule_lr
    from pipeline.training import run as run_loop

    size, epochs, batch = int(settings["input_size"]), int(settings["epochs"]), int(settings["batch_size"])
    train = GpuAugmentation(data.images[rows], data.masks[rows], data.hw[rows], size, seed=settings["seed"])
    loss_spec = settings["loss"]
    segmentation = SegmentationLoss("lovasz" if loss_spec["kind"] == "paper" else loss_spec["kind"],
                                    loss_spec["boundary_weight"], loss_spec["boundary_kernel"],
                                    fused=bool(settings["fused_loss"]))
    module = importlib.import_module(get_spec(ARCH).builder.__module__)
    own_loss = getattr(module, "paper_loss", None) if loss_spec["kind"] == "paper" else None  # as train does
    # bf16 on CUDA only: a CPU smoke run with channels_last + bf16 autocast crawls (issue 15's probe)
    autocast = torch.bfloat16 if settings["bf16"] and device.startswith("cuda") and native_bf16(device) else None
    key = fingerprint(settings, arch=ARCH, model_kwargs=kwargs, pack=data.meta.get("manifest_sha256"),
                      rows=len(rows), code=code_fingerprint())
    loader = module.load_stage1_into
    previous, chosen = None, None
    trained_epochs = 0
    started = time.perf_counter()
    for stage, arch in ((1, f"{ARCH}_stage1"), (2, ARCH)):
        earlier = list(history)

        def make_model(fresh: bool, arch=arch, stage=stage, previous=previous):
            model = build_model(arch, **kwargs)
            if fresh and stage == 2 and previous is not None:
                loader(model, previous)
            return model

        def record(rows_so_far, stage=stage, earlier=earlier):
            history[:] = earlier + [{"run": run, "epoch": (stage - 1) * epochs + h["epoch"], "stage": stage,
                                     "stage_epoch": h["epoch"], "train_loss": h["train_loss"], "val_miou": h["val"],
                                     "lr": h["lr"]} for h in rows_so_far]

        def on_epoch(rows_so_far, stage=stage, record=record):
            record(rows_so_far)
            if time.time() > deadline:
                raise BudgetReached(f"{run} stage {stage}: budget spent after epoch {rows_so_far[-1]['epoch']}")

        job = TrainingJob(
            name=f"{run} stage {stage}", arch=arch, config=kwargs, make_model=make_model,
            make_optimizer=lambda model: adam(model.parameters(), settings["lr"], settings["weight_decay"]),
            loss=own_loss or (lambda net, images, masks: segmentation(net(images), masks)),
            learning_rate=lambda step: schedule_lr(settings["lr_schedule"], settings["lr"], step,
                                                   settings["lr_warmup_epochs"]),
            epochs=epochs, batch_size=batch, train_data=train, checkpoint_dir=work / run, fingerprint=key,
            seed=int(settings["seed"]), key=stage, max_steps_per_epoch=int(settings["max_steps_per_epoch"]),
            validate=lambda model: validation_miou(model, data.val_images, data.val_masks, batch),
            checkpoint_name=f"stage{stage}_", workers=0, channels_last=bool(settings["channels_last"]),
            autocast=autocast, device=device, extra={"stage": stage}, progress=False, log=log, on_epoch=on_epoch)
        result = run_loop(job)  # a spent budget stops it after its first epoch: resumable from there
        record(result.history)  # also when an earlier call finished this stage (the loop trains nothing then)
        trained_epochs += result.trained_epochs
        chosen = result.best if settings["export"] == "best" and result.best is not None else result.last
        previous = chosen["model"]
    seconds = time.perf_counter() - started
    model_state = {"arch": ARCH, "config": kwargs, "model": chosen["model"], "input_size": size, "stage": 2,
                   "epoch": int(chosen["epoch"]), "val_miou": float(chosen.get("best_score", float("nan")))}
    return {"model": model_state, "seconds": seconds, "trained_epochs": trained_epochs}


# ---------------------------------------------------------------- the whole command


def _extract(tar_path: Path, work: Path) -> None:
    with tarfile.open(tar_path) as tar:
        tar.extractall(work, filter="data")


def _pack_checkpoints(work: Path, out: Path) -> None:
    from pipeline.atomic import atomic_path

    with atomic_path(out / "checkpoints.tar") as tmp, tarfile.open(tmp, "w") as tar:
        for path in sorted(work.rglob("*.pt")):
            tar.add(path, arcname=path.relative_to(work).as_posix())


def _write_outputs(out: Path, work: Path, summary: dict, history: list[dict]) -> None:
    import csv

    from pipeline.atomic import atomic_path

    _pack_checkpoints(work, out)
    with atomic_path(out / "history.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="paper_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="profiles/paper.yaml", help="the recipe (default profiles/paper.yaml)")
    parser.add_argument("--pack", default="tmp/gpu/pack.npz", help="scripts/gpu/pack_data.py's output")
    parser.add_argument("--out", required=True, help="folder for what comes back ($OUT on the device)")
    parser.add_argument("--work", default="tmp/gpu/work", help="checkpoints while training")
    parser.add_argument("--resume-from", help="a folder or checkpoints.tar from an earlier call (missing: start)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, in order (default {','.join(RUNS)})")
    parser.add_argument("--budget-s", type=float, default=520, help="wall-clock seconds before stopping after the "
                        "epoch in flight (default 520: under the device's 10-minute command)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    parser.add_argument("--epochs", type=int, help="override: epochs per stage (smoke runs)")
    parser.add_argument("--batch-size", type=int, help="override: batch size (smoke runs)")
    parser.add_argument("--input-size", type=int, help="override: training size (smoke runs)")
    parser.add_argument("--limit", type=int, default=0, help="override: first N packed training images")
    parser.add_argument("--workers", type=int, default=8, help="threads decoding the pack")
    args = parser.parse_args(argv)
    started = time.time()
    deadline = started + args.budget_s
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("paper_run: error: no CUDA device here (use --device cpu for a smoke run)", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    runs = [r for r in args.runs.split(",") if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        print(f"paper_run: error: unknown run(s) {unknown}; runs: {', '.join(RUNS)}", file=sys.stderr)
        return 2
    if len(runs) + 4 > MAX_OUT_FILES:  # <run>.pt each + checkpoints.tar, history.csv, summary.json, log.txt
        print("paper_run: error: too many runs for the 8 files that come back", file=sys.stderr)
        return 2
    recipe = read_recipe(args.profile)
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "input_size": args.input_size}
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if args.resume_from:
        source = Path(args.resume_from)
        tar_path = source / "checkpoints.tar" if source.is_dir() else source
        if tar_path.is_file():
            _extract(tar_path, work)
            print(f"paper_run: resuming from {tar_path}")

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f} s] {message}", flush=True)

    data = load_pack(args.pack, args.device, args.limit, args.workers)
    if args.input_size and args.input_size != data.val_images.shape[-1] and len(data.val_images):
        data.val_images = F.interpolate(data.val_images, size=(args.input_size,) * 2, mode="bilinear",
                                        align_corners=False)
        data.val_masks = F.interpolate(data.val_masks[:, None].float(), size=(args.input_size,) * 2,
                                       mode="nearest")[:, 0] > 0.5
    log(f"pack: {len(data.images)} training, {len(data.val_images)} validation images on {args.device} "
        f"(canvas {tuple(data.images.shape[2:])}, {time.time() - started:.1f} s to load)")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    summary = {"device": device_name, "torch": torch.__version__, "profile": args.profile, "pack": data.meta,
               "overrides": {k: v for k, v in {**overrides, "limit": args.limit or None}.items() if v is not None},
               "runs": {}}
    previous_summary = Path(args.resume_from or "-") / "summary.json"
    if previous_summary.is_file():
        summary["earlier_runs"] = json.loads(previous_summary.read_text()).get("runs", {})
    history: list[dict] = []
    status = 0
    for run in runs:
        settings = run_settings(recipe, run, overrides)
        rows = torch.arange(len(data.images), device=data.images.device)
        if run == "no_generated":
            keep = np.flatnonzero(data.sources == recipe["base_source"])
            rows = torch.as_tensor(keep, device=data.images.device)
        log(f"{run}: {len(rows)} training images, {settings['epochs']} + {settings['epochs']} epochs, batch "
            f"{settings['batch_size']}, loss {settings['loss']['kind']}")
        run_started = time.perf_counter()
        run_history: list[dict] = []
        try:
            result = train_run(run, settings, recipe["model_kwargs"], data, rows, work, device=args.device,
                               deadline=deadline, log=log, history=run_history)
        except BudgetReached as stop:
            log(f"{stop}; rerun with --resume-from <the returned checkpoints.tar> to continue")
            history += run_history
            summary["runs"][run] = {"finished": False, "epochs_done": len(run_history),
                                    "seconds_this_call": round(time.perf_counter() - run_started, 1)}
            status = 3
            break
        from pipeline.checkpoint import save_checkpoint

        save_checkpoint(out / f"{run}.pt", result["model"])
        history += run_history
        stage_rows = [h for h in run_history if h["stage"] == 2]
        trained_epochs = result["trained_epochs"]
        summary["runs"][run] = {
            "finished": True, "training_images": len(rows), "epochs_per_stage": settings["epochs"],
            "best_val_miou_stage2": max((h["val_miou"] for h in stage_rows if math.isfinite(h["val_miou"])),
                                        default=None),
            "exported_epoch": result["model"]["epoch"], "epochs_trained_this_call": trained_epochs,
            "seconds_this_call": round(result["seconds"], 1),
            "images_per_s_this_call": round(trained_epochs * len(rows) / max(result["seconds"], 1e-9), 1),
            "settings": settings}
        log(f"{run}: done; best stage-2 validation mIoU {summary['runs'][run]['best_val_miou_stage2']}")
        _write_outputs(out, work, summary, history)  # after each run: a kill later loses nothing
    summary["seconds"] = round(time.time() - started, 1)
    _write_outputs(out, work, summary, history)
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    log(f"wrote {', '.join(files)} to {out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
