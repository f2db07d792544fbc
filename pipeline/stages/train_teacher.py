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
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from tqdm import tqdm

from pipeline.atomic import atomic_path, write_csv, write_json
from pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.data import ManifestDataset, eval_transform, train_transform
from pipeline.devices import Device, resolve_device
from pipeline.hashing import sha256_file
from pipeline.models.registry import count_parameters, foreground_logit
from pipeline.params import InputPath, OutputPath, load_section
from pipeline.paths import shown_path
from pipeline.selection import DataSource, drop_leaks, gather_rows, keep_readable, subsample
from pipeline.stage import StageError, make_parser, run_main
from pipeline.teacher import (TEACHER_ARCH, TeacherArchitecture, build_teacher, checked_input_size, load_teacher)


class TeacherParams(TeacherArchitecture):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    encoder_weights: str | None = Field(None, min_length=1)  # null | imagenet (smp download) | local state dict
    checkpoint: InputPath | None = None  # adopt this trained teacher instead of training
    train_data: list[DataSource] = Field([DataSource(root="data/prepared", splits=["train"])], min_length=1)
    val_data: list[DataSource] = [DataSource(root="data/prepared", splits=["val"], sources=["ccp"])]
    allow_empty_validation: bool = False  # true: train without a validation IoU (val_iou null)
    max_train_images: int | None = Field(None, ge=2)
    max_val_images: int | None = Field(None, ge=1)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=2)  # BatchNorm needs at least 2 samples per batch
    lr: float = Field(3e-4, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False)
    dice_weight: float = Field(0.5, ge=0, allow_inf_nan=False)
    num_workers: int = Field(0, ge=0)
    seed: int = Field(0, ge=0)  # numpy refuses negative seeds
    device: Device = "auto"
    checkpoint_every_steps: int = Field(50, ge=1)
    output: OutputPath = "models/teacher/teacher.pt"
    resume_checkpoint: OutputPath = "models/teacher_resume/last.pt"
    metrics: OutputPath = "metrics/teacher/train.json"
    log: OutputPath = "metrics/teacher/train_log.csv"

    @model_validator(mode="after")
    def _distinct_outputs(self):
        named = {"output": self.output, "resume_checkpoint": self.resume_checkpoint, "metrics": self.metrics,
                 "log": self.log}
        seen: dict[str, str] = {}
        for key, value in named.items():
            normal = os.path.normpath(value)
            if normal in seen:
                raise ValueError(f"{key} and {seen[normal]} are the same file ({value!r}); each output needs its own")
            seen[normal] = key
        return self



# Settings that may change between a crash and the rerun without invalidating the run.
_RESUME_FREE = {"epochs", "checkpoint_every_steps", "num_workers", "device", "output", "resume_checkpoint",
                "metrics", "log", "checkpoint", "allow_empty_validation"}


def run_fingerprint(settings: TeacherParams, train_ids: list[str]) -> str:
    """Hash of everything that makes a partial run continuable (not epochs: they may grow)."""
    payload = {k: v for k, v in settings.model_dump(mode="json").items() if k not in _RESUME_FREE}
    payload["train_ids"] = sorted(train_ids)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- data


def datasets_for(frame: pd.DataFrame, transform) -> Dataset:
    parts = [ManifestDataset(root, rows.drop(columns="_root"), transform) for root, rows in frame.groupby("_root", sort=True)]
    return ConcatDataset(parts) if parts else Subset([], [])  # ConcatDataset refuses an empty list


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


_HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_iou", "lr"]
_RESUME_KEYS = ("model", "optimizer", "epoch", "batch_in_epoch", "global_step", "history", "loss_sum", "loss_count",
                "torch_rng")


def checked_history(state: dict, path: str | os.PathLike) -> list[dict]:
    history = state.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) and set(h) <= set(_HISTORY_COLUMNS)
                                                for h in history):
        raise CheckpointError(f"{path}: teacher checkpoint history is not a list of "
                              f"{{{', '.join(_HISTORY_COLUMNS)}}} records")
    return history


def adopt_checkpoint(settings: TeacherParams, project: str | os.PathLike = ".") -> dict:
    """Check an existing teacher against the configured architecture and copy it in place."""
    source = Path(settings.checkpoint)
    try:
        model, state = load_teacher(source, expected_config=settings.arch_config())
        input_size = checked_input_size(state, source)
        history = checked_history(state, source)
    except CheckpointError as exc:
        raise StageError(str(exc)) from None
    with atomic_path(settings.output) as tmp:
        shutil.copyfile(source, tmp)
    return {"source": "checkpoint", "checkpoint": shown_path(source, project),
            "checkpoint_sha256": sha256_file(source), "encoder_name": settings.encoder_name,
            "parameters": count_parameters(model), "input_size": input_size, "history": history}


def resumable_state(path: Path, config: dict, fingerprint: str) -> dict | None:
    """The resume checkpoint's state if it continues exactly this run, else None (with the reason printed)."""
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path, expected_arch=TEACHER_ARCH, expected_config=config)
    except CheckpointError as exc:
        print(f"note: not resuming: {exc}")
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"note: not resuming from {path}: data or settings changed since it was written")
        return None
    missing = [k for k in _RESUME_KEYS if k not in state]
    if missing:
        print(f"note: not resuming from {path}: it lacks {', '.join(missing)}")
        return None
    print(f"resuming from {path} (epoch {state['epoch']}, step {state['global_step']})")
    return state


def training_rows(settings: TeacherParams, notes: list[str], skipped: list[dict],
                  project: str | os.PathLike = ".") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows): selected, leak-free, subsampled and readable.

    Fails when the validation set is empty unless ``allow_empty_validation``.
    """
    val_rows = subsample(gather_rows(settings.val_data, notes, "teacher.val_data", project),
                         settings.max_val_images, settings.seed)
    val_rows = keep_readable(val_rows, skipped, project)
    train_rows, leaked = drop_leaks(gather_rows(settings.train_data, notes, "teacher.train_data", project), val_rows)
    if leaked:
        notes.append(f"dropped {leaked} training rows that are (or derive from) validation samples")
    train_rows = keep_readable(subsample(train_rows, settings.max_train_images, settings.seed), skipped, project)
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable sample(s) (see 'skipped')")
    if val_rows.empty and not settings.allow_empty_validation:
        raise StageError("teacher: the validation set is empty (teacher.val_data selects no readable labelled "
                         "image); fix val_data or set teacher.allow_empty_validation: true to train without one")
    if len(train_rows) < 2:
        raise StageError(f"teacher: need at least 2 readable labelled training images, found {len(train_rows)} "
                         "(check teacher.train_data)")
    return train_rows, val_rows


def _body(args) -> int:
    settings = load_section(TeacherParams, "teacher", args.params)
    project = os.path.dirname(os.path.abspath(args.params))
    started = time.time()
    if settings.checkpoint:
        summary = adopt_checkpoint(settings, project)
        history = summary.pop("history")
        write_csv(settings.log, pd.DataFrame(history, columns=_HISTORY_COLUMNS))
        write_json(settings.metrics, summary)
        print(f"adopted teacher {settings.checkpoint} -> {settings.output}")
        return 0

    notes: list[str] = []
    skipped: list[dict] = []
    train_rows, val_rows = training_rows(settings, notes, skipped, project)
    device = torch.device(resolve_device(settings.device))
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
    resume_path = Path(settings.resume_checkpoint)
    resume = resumable_state(resume_path, config, fingerprint)

    torch.manual_seed(settings.seed)  # the decoder's (and a weightless encoder's) initial weights
    try:
        model = build_teacher(config, encoder_weights=None if resume else settings.encoder_weights)
    except (ValueError, OSError, CheckpointError) as exc:
        raise StageError(str(exc)) from None

    def save(state: dict) -> None:
        save_checkpoint(resume_path, {"arch": TEACHER_ARCH, "config": config, "fingerprint": fingerprint, **state})

    history = fit(model, train_set, val_set, settings, resume=resume, save=save, device=device)
    model.cpu()
    save_checkpoint(settings.output, {
        "arch": TEACHER_ARCH, "config": config, "model": model.state_dict(), "input_size": settings.input_size,
        "encoder_weights": settings.encoder_weights or "", "train_ids": train_ids, "history": history,
    })
    write_csv(settings.log, pd.DataFrame(history, columns=_HISTORY_COLUMNS))
    last = history[-1]
    encoder_weights = settings.encoder_weights
    if encoder_weights not in (None, "imagenet"):
        encoder_weights = shown_path(encoder_weights, project)
    write_json(settings.metrics, {
        "source": "trained", "encoder_name": settings.encoder_name, "encoder_weights": encoder_weights,
        "parameters": count_parameters(model), "input_size": settings.input_size,
        "train_images": len(train_set), "val_images": len(val_set), "epochs": last["epoch"],
        "first_epoch_loss": history[0]["train_loss"], "final_train_loss": last["train_loss"],
        "final_val_iou": None if math.isnan(last["val_iou"]) else last["val_iou"],
        "seconds_this_run": round(time.time() - started, 1), "notes": notes, "skipped": skipped,
    })
    print(f"teacher written to {settings.output} (train loss {last['train_loss']:.4f}, val IoU {last['val_iou']:.4f})")
    return 0


def main(argv=None) -> int:
    parser = make_parser("train-teacher", __doc__.split("\n\n")[0])
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
