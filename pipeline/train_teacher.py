"""Stage ``train_teacher``: fine-tune the DeepLabv3+ teacher on the labelled human data.

The paper pseudo-labels raw web portraits with DeepLabv3+ (SE-ResNeXt-50 encoder,
ImageNet-pretrained, fine-tuned on about 2,500 human segmentation images). Here the
labelled data are canonical manifests (``teacher.train_data``: EG1800 train, CCP train,
later the face crops). The run is resumable: a checkpoint is written atomically every
``checkpoint_every_steps`` steps and at each epoch's end, and a rerun with the same
settings continues from it. ``teacher.checkpoint`` skips training and adopts an
existing teacher after checking that it fits the configured architecture.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from tqdm import tqdm

from pipeline.atomic import atomic_path, write_csv, write_json
from pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.data import ManifestDataset, eval_transform, select, train_transform
from pipeline.manifest import read_manifest
from pipeline.models.registry import count_parameters, foreground_logit
from pipeline.params import Section, load_section
from pipeline.stage import StageError, make_parser, run_main
from pipeline.teacher import OUTPUT_STRIDE, TEACHER_ARCH, build_teacher, load_teacher, teacher_config


class DataSource(Section):
    """Rows of one canonical dataset: ``root``/manifest.csv filtered by split and source."""

    root: str
    splits: list[str] = ["train"]
    sources: list[str] | None = None  # null: every source in the manifest
    optional: bool = False  # a missing manifest is skipped with a note instead of an error


class TeacherParams(Section):
    encoder_name: str = "se_resnext50_32x4d"
    encoder_weights: str | None = None  # null | imagenet (smp download) | path to a local state dict
    decoder_channels: int = Field(256, ge=8)
    classes: Literal[1, 2] = 1
    checkpoint: str | None = None  # adopt this trained teacher instead of training
    train_data: list[DataSource] = [DataSource(root="data/prepared", splits=["train"])]
    val_data: list[DataSource] = []
    max_train_images: int | None = Field(None, ge=2)
    max_val_images: int | None = Field(None, ge=1)
    input_size: int = Field(512, ge=OUTPUT_STRIDE)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=2)  # BatchNorm needs at least 2 samples per batch
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    dice_weight: float = Field(0.5, ge=0)
    num_workers: int = Field(0, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every_steps: int = Field(50, ge=1)
    output: str = "models/teacher/teacher.pt"
    resume_checkpoint: str = "models/teacher_resume/last.pt"
    metrics: str = "metrics/teacher/train.json"
    log: str = "metrics/teacher/train_log.csv"

    @field_validator("input_size")
    @classmethod
    def _multiple_of_stride(cls, value: int) -> int:
        if value % OUTPUT_STRIDE:
            raise ValueError(f"must be a multiple of {OUTPUT_STRIDE} (DeepLabv3+ output stride)")
        return value

    def arch_config(self) -> dict:
        return teacher_config(self.encoder_name, self.classes, self.decoder_channels)


# Settings that may change between a crash and the rerun without invalidating the run.
_RESUME_FREE = {"epochs", "checkpoint_every_steps", "num_workers", "device", "output", "resume_checkpoint",
                "metrics", "log", "checkpoint"}


def run_fingerprint(settings: TeacherParams, train_ids: list[str]) -> str:
    """Hash of everything that makes a partial run continuable (not epochs: they may grow)."""
    payload = {k: v for k, v in settings.model_dump(mode="json").items() if k not in _RESUME_FREE}
    payload["train_ids"] = sorted(train_ids)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- data


def gather_rows(sources: list[DataSource], notes: list[str]) -> pd.DataFrame:
    """Labelled manifest rows of every source, with a ``_root`` column saying where they live."""
    frames = []
    for source in sources:
        root = Path(source.root)
        try:
            frame = read_manifest(root)
        except FileNotFoundError:
            if source.optional:
                notes.append(f"optional data {root} absent: skipped")
                continue
            raise
        except ValueError as exc:
            raise StageError(str(exc)) from None
        frame = select(frame, source.splits, source.sources)
        frame = frame[frame["mask"] != ""].copy()
        frame["_root"] = str(root)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["id", "origin", "mask", "_root"])
    return pd.concat(frames, ignore_index=True)


def drop_leaks(train: pd.DataFrame, val: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Remove training rows that are validation samples or derived from one (crops)."""
    val_ids = set(val["id"])
    leak = train["id"].isin(val_ids) | train["origin"].isin(val_ids)
    return train[~leak], int(leak.sum())


def subsample(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    if limit is None or len(frame) <= limit:
        return frame
    return frame.sample(n=limit, random_state=seed).sort_index()


def datasets_for(frame: pd.DataFrame, transform) -> Dataset:
    parts = [ManifestDataset(root, rows.drop(columns="_root"), transform) for root, rows in frame.groupby("_root", sort=True)]
    return ConcatDataset(parts) if parts else ConcatDataset([])


# ---------------------------------------------------------------------------- training core


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Cross-entropy (BCE for one logit, CE for two classes) plus a soft Dice term.

    Dice keeps thin limbs and small people from being outvoted by the background.
    """
    if logits.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(logits[:, 0], target)
        prob = torch.sigmoid(logits[:, 0])
    else:
        ce = F.cross_entropy(logits, target.long())
        prob = torch.softmax(logits, dim=1)[:, 1]
    inter = (prob * target).sum(dim=(1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)
    return ce + dice_weight * dice.mean()


def cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


@torch.no_grad()
def mean_iou(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> float:
    """Mean per-image foreground IoU at the network's input size."""
    if len(dataset) == 0:
        return float("nan")
    model.eval()
    ious = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        pred = foreground_logit(model(batch["image"].to(device))) > 0
        target = batch["mask"].to(device) > 0.5
        inter = (pred & target).sum(dim=(1, 2)).float()
        union = (pred | target).sum(dim=(1, 2)).float()
        ious += torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).tolist()
    return float(np.mean(ious))


def fit(model: nn.Module, train_set: Dataset, val_set: Dataset, settings: TeacherParams, *,
        resume: dict | None = None, save: Callable[[dict], None] = lambda state: None,
        device: torch.device = torch.device("cpu"), progress: bool = True) -> list[dict]:
    """Train ``model``; call ``save(state)`` at checkpoints; return the per-epoch history.

    ``state`` holds only tensors and plain containers, so it reloads with weights_only.
    Each epoch's sample order comes from ``seed`` and the epoch number, so a resumed run
    skips exactly the batches it had already trained on.
    """
    if len(train_set) < 2:
        raise StageError(f"need at least 2 labelled training images, found {len(train_set)}")
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    epoch, batch_in_epoch, global_step, history = 0, 0, 0, []
    loss_sum, loss_count = 0.0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        epoch, batch_in_epoch = int(resume["epoch"]), int(resume["batch_in_epoch"])
        global_step, history = int(resume["global_step"]), list(resume["history"])
        loss_sum, loss_count = float(resume["loss_sum"]), int(resume["loss_count"])
        torch.set_rng_state(resume["torch_rng"])

    n = len(train_set)
    batches_per_epoch = n // settings.batch_size if n % settings.batch_size == 1 else math.ceil(n / settings.batch_size)
    total_steps = batches_per_epoch * settings.epochs

    def snapshot() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "global_step": global_step, "history": history,
                "loss_sum": loss_sum, "loss_count": loss_count, "torch_rng": torch.get_rng_state()}

    bar = tqdm(total=total_steps, initial=global_step, desc="train teacher", unit="step", disable=not progress)
    while epoch < settings.epochs:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch)).tolist()
        order = order[: batches_per_epoch * settings.batch_size] if n % settings.batch_size == 1 else order
        remaining = Subset(train_set, order[batch_in_epoch * settings.batch_size:])
        loader = DataLoader(remaining, batch_size=settings.batch_size, shuffle=False,
                            num_workers=settings.num_workers)
        model.train()
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(settings.lr, global_step, total_steps)
            logits = model(batch["image"].to(device))
            loss = segmentation_loss(logits, batch["mask"].to(device), settings.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            loss_count += 1
            batch_in_epoch += 1
            global_step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / loss_count:.4f}")
            if global_step % settings.checkpoint_every_steps == 0:
                save(snapshot())
        val_iou = mean_iou(model, val_set, settings.batch_size, device)
        history.append({"epoch": epoch + 1, "step": global_step, "train_loss": loss_sum / max(loss_count, 1),
                        "val_iou": val_iou, "lr": optimizer.param_groups[0]["lr"]})
        epoch, batch_in_epoch, loss_sum, loss_count = epoch + 1, 0, 0.0, 0
        save(snapshot())
    bar.close()
    return history


# ---------------------------------------------------------------------------- stage


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("teacher.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def adopt_checkpoint(settings: TeacherParams) -> dict:
    """Check an existing teacher against the configured architecture and copy it in place."""
    source = Path(settings.checkpoint)
    try:
        model, state = load_teacher(source, expected_config=settings.arch_config())
    except CheckpointError as exc:
        raise StageError(str(exc)) from None
    with atomic_path(settings.output) as tmp:
        shutil.copyfile(source, tmp)
    return {"source": "checkpoint", "checkpoint": str(source), "encoder_name": settings.encoder_name,
            "parameters": count_parameters(model), "input_size": state.get("input_size"),
            "history": state.get("history", [])}


def _body(args) -> int:
    settings = load_section(TeacherParams, "teacher", args.params)
    started = time.time()
    if settings.checkpoint:
        summary = adopt_checkpoint(settings)
        history = summary.pop("history")
        write_csv(settings.log, pd.DataFrame(history, columns=["epoch", "step", "train_loss", "val_iou", "lr"]))
        write_json(settings.metrics, summary)
        print(f"adopted teacher {settings.checkpoint} -> {settings.output}")
        return 0

    notes: list[str] = []
    val_rows = subsample(gather_rows(settings.val_data, notes), settings.max_val_images, settings.seed)
    train_rows, leaked = drop_leaks(gather_rows(settings.train_data, notes), val_rows)
    if leaked:
        notes.append(f"dropped {leaked} training rows that are (or derive from) validation samples")
    train_rows = subsample(train_rows, settings.max_train_images, settings.seed)
    for note in notes:
        print(f"note: {note}")
    train_ids = sorted(train_rows["id"].tolist())
    augment = train_transform(settings.input_size)
    if hasattr(augment, "set_random_seed"):  # same augmentations on a rerun (num_workers: 0)
        augment.set_random_seed(settings.seed)
    train_set = datasets_for(train_rows, augment)
    val_set = datasets_for(val_rows, eval_transform(settings.input_size))

    config = settings.arch_config()
    fingerprint = run_fingerprint(settings, train_ids)
    resume = None
    resume_path = Path(settings.resume_checkpoint)
    if resume_path.is_file():
        try:
            state = load_checkpoint(resume_path, expected_arch=TEACHER_ARCH, expected_config=config)
        except CheckpointError as exc:
            print(f"note: not resuming: {exc}")
        else:
            if state.get("fingerprint") == fingerprint:
                resume = state
                print(f"resuming from {resume_path} (epoch {state['epoch']}, step {state['global_step']})")
            else:
                print(f"note: not resuming from {resume_path}: data or settings changed since it was written")

    torch.manual_seed(settings.seed)  # the decoder's (and a weightless encoder's) initial weights
    try:
        model = build_teacher(config, encoder_weights=None if resume else settings.encoder_weights)
    except (ValueError, OSError, CheckpointError) as exc:
        raise StageError(str(exc)) from None
    device = pick_device(settings.device)

    def save(state: dict) -> None:
        save_checkpoint(resume_path, {"arch": TEACHER_ARCH, "config": config, "fingerprint": fingerprint, **state})

    history = fit(model, train_set, val_set, settings, resume=resume, save=save, device=device)
    model.cpu()
    save_checkpoint(settings.output, {
        "arch": TEACHER_ARCH, "config": config, "model": model.state_dict(), "input_size": settings.input_size,
        "encoder_weights": settings.encoder_weights or "", "train_ids": train_ids, "history": history,
    })
    write_csv(settings.log, pd.DataFrame(history, columns=["epoch", "step", "train_loss", "val_iou", "lr"]))
    last = history[-1]
    write_json(settings.metrics, {
        "source": "trained", "encoder_name": settings.encoder_name, "encoder_weights": settings.encoder_weights,
        "parameters": count_parameters(model), "input_size": settings.input_size,
        "train_images": len(train_set), "val_images": len(val_set), "epochs": last["epoch"],
        "first_epoch_loss": history[0]["train_loss"], "final_train_loss": last["train_loss"],
        "final_val_iou": None if math.isnan(last["val_iou"]) else last["val_iou"],
        "seconds_this_run": round(time.time() - started, 1), "notes": notes,
    })
    print(f"teacher written to {settings.output} (train loss {last['train_loss']:.4f}, val IoU {last['val_iou']:.4f})")
    return 0


def main(argv=None) -> int:
    parser = make_parser("train-teacher", __doc__.split("\n\n")[0])
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
