"""The student training loop as it was before ``pipeline.training`` (frozen; tests only).

A verbatim copy of ``pipeline/stages/train.py`` at commit ccaa89a (``train_stage`` and
``train_architecture`` with the helpers they call), with its params read from a plain
namespace of the old flat ``train`` keys. ``tests/test_training.py`` trains the same tiny
networks with it and with the one training loop, side by side, and requires bit-identical
weights: the refactor must not change a student's seeds, sample order, augmentation draws
or RNG consumption. Do not "fix" or modernise this file; it is the reference. One deliberate
change since: it steps with the stage's optimizer (``pipeline.training.adam``, fused Adam), which
rounds differently from torch's per-tensor Adam; what it pins is the loop around the optimizer.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from pipeline.data import ManifestDataset
from pipeline.losses import SegmentationLoss
from pipeline.models.registry import get_spec
from pipeline.stage import StageError
from pipeline.training import adam


@dataclass(frozen=True)
class StagePlan:
    index: int  # 1-based
    arch: str  # registry name trained in this stage
    init_from_previous: Callable | None = None  # load_stage1_into(full_model, stage1_state_dict)


def plan_stages(arch: str) -> list[StagePlan]:
    """Two stages when ``<arch>_stage1`` exists and the builder's module offers ``load_stage1_into``."""
    from pipeline.models import available_models

    known = available_models()
    if arch not in known:
        raise StageError(f"unknown architecture {arch!r}; known: {', '.join(known)}")
    stage1 = f"{arch}_stage1"
    loader = getattr(importlib.import_module(get_spec(arch).builder.__module__), "load_stage1_into", None)
    if stage1 in known and loader is not None:
        return [StagePlan(1, stage1), StagePlan(2, arch, loader)]
    return [StagePlan(1, arch)]


def learning_rate(params: TrainParams, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``; a pure function of the epoch so resuming needs no scheduler state."""
    if params.lr_schedule == "constant":
        return params.lr
    milestones = [m for m in (params.epochs // 2, params.epochs - params.epochs // 6) if m > 0]
    return params.lr * 0.5 ** sum(epoch >= m for m in milestones)


class SeededAugmentDataset(ManifestDataset):
    """ManifestDataset whose augmentation of sample i in epoch e depends only on (seed, e, i)."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.epoch_seed = seed

    def set_epoch(self, stage: int, epoch: int) -> None:
        self.epoch_seed = derived_seed(self.seed, stage, epoch)

    def __getitem__(self, index: int) -> dict:
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed((self.epoch_seed * 1_000_003 + int(index)) % 2**32)
        return super().__getitem__(index)


def derived_seed(seed: int, stage: int, epoch: int) -> int:
    return int(hashlib.sha256(f"{seed}/{stage}/{epoch}".encode()).hexdigest()[:8], 16)


def epoch_order(n: int, seed: int, limit: int | None, batch_size: int | None = None) -> list[int]:
    """This epoch's sample order. With ``batch_size``, a last batch of a single image is left out
    (that image comes at another place next epoch): batch norm cannot train on one image."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    order = order[:limit] if limit else order
    if batch_size and batch_size > 1 and len(order) > 1 and len(order) % batch_size == 1:
        order = order[:-1]
    return order



def validation_miou(model: torch.nn.Module, loader, device: str) -> float:
    """Mean per-image foreground IoU (x100) at the loader's resolution."""
    from pipeline.metrics import iou
    from pipeline.models import foreground_logit

    model.eval()
    scores = []
    with torch.inference_mode():
        for batch in loader:
            predicted = (foreground_logit(model(batch["image"].to(device))) > 0).cpu().numpy()
            truth = batch["mask"].numpy() > 0.5
            scores += [iou(p, t) for p, t in zip(predicted, truth)]
    return float(np.mean(scores) * 100) if scores else float("nan")


@dataclass
class TrainContext:
    """What a training run needs besides params: data and where to write."""

    train_data: SeededAugmentDataset
    val_data: Dataset | None
    out_dir: Path  # models/<arch>
    fingerprint: str
    device: str = "cpu"
    on_epoch: Callable[[list[dict]], None] | None = None  # called with the history after each epoch
    log: Callable[[str], None] = print
    progress: bool = True  # tqdm bar per epoch


def _checkpoint_paths(out_dir: Path, stage: int) -> tuple[Path, Path]:
    return out_dir / "checkpoints" / f"stage{stage}_last.pt", out_dir / "checkpoints" / f"stage{stage}_best.pt"


def _load_resumable(path: Path, plan: StagePlan, kwargs: dict, ctx: TrainContext) -> dict | None:
    """The last checkpoint of a stage if it may be continued; None to start the stage over."""
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path, expected_arch=plan.arch, expected_config=kwargs)
    except CheckpointError as exc:
        raise StageError(f"{exc}. Delete {path.parent} to train from scratch.") from None
    if state.get("fingerprint") != ctx.fingerprint:
        ctx.log(f"{path}: made with other settings or another training set; stage {plan.index} starts over")
        return None
    return state


def training_loss(model: torch.nn.Module, loss: LossParams):
    """``f(model, images, masks) -> loss``: the configured loss, or the architecture's own."""
    if loss.kind == "paper":
        own = getattr(inspect.getmodule(type(model)), "paper_loss", None)
        if own is not None:
            return own
    segmentation = SegmentationLoss("lovasz" if loss.kind == "paper" else loss.kind, loss.boundary_weight,
                                    loss.boundary_kernel)
    return lambda net, images, masks: segmentation(net(images), masks)


def train_stage(plan: StagePlan, params: TrainParams, kwargs: dict, ctx: TrainContext, history: list[dict],
                previous_weights: dict | None, global_offset: int) -> tuple[dict, list[dict]]:
    """Train (or resume, or skip if finished) one stage; returns (exported state, history)."""
    from pipeline.models import build_model

    last_path, best_path = _checkpoint_paths(ctx.out_dir, plan.index)
    torch.manual_seed(derived_seed(params.seed, plan.index, -1))  # same initial weights fresh or resumed
    model = build_model(plan.arch, **kwargs).to(ctx.device)
    # the optimizer of today's stage (fused Adam since 2026-12-02): this copy pins the loop, not the optimizer
    optimizer = adam(model.parameters(), params.lr, params.weight_decay)
    loss_fn = training_loss(model, params.loss)
    state = _load_resumable(last_path, plan, kwargs, ctx) if params.resume else None
    if state is not None:
        load_weights(model, state, last_path)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        start, best_miou, best_epoch = int(state["epoch"]), float(state["best_val_miou"]), int(state["best_epoch"])
        history = [h for h in state["history"]]
        if start < params.epochs:
            ctx.log(f"stage {plan.index} ({plan.arch}): resuming after epoch {start} of {params.epochs}")
    else:
        if previous_weights is not None and plan.init_from_previous is not None:
            plan.init_from_previous(model, previous_weights)
        start, best_miou, best_epoch = 0, -math.inf, 0
        history = [h for h in history if h["stage"] < plan.index]

    for epoch in range(start, params.epochs):
        lr = learning_rate(params, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ctx.train_data.set_epoch(plan.index, epoch)
        order = epoch_order(len(ctx.train_data), derived_seed(params.seed, plan.index, epoch),
                            params.max_steps_per_epoch * params.batch_size or None, params.batch_size)
        loader = DataLoader(ctx.train_data, batch_size=params.batch_size, sampler=order,
                            num_workers=params.workers, drop_last=False)
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"{plan.arch} epoch {epoch + 1}/{params.epochs}", unit="batch", leave=False,
                   disable=not ctx.progress)
        for batch in bar:
            loss = loss_fn(model, batch["image"].to(ctx.device), batch["mask"].to(ctx.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        if not losses or not all(math.isfinite(v) for v in losses):
            raise StageError(f"stage {plan.index} epoch {epoch + 1}: training loss is not finite ({losses[-3:]})")
        val_miou = float("nan")
        if ctx.val_data is not None and len(ctx.val_data):
            val_loader = DataLoader(ctx.val_data, batch_size=params.batch_size, num_workers=params.workers)
            val_miou = validation_miou(model, val_loader, ctx.device)
        improved = math.isnan(val_miou) or val_miou > best_miou
        if improved:
            best_miou, best_epoch = (val_miou if not math.isnan(val_miou) else best_miou), epoch + 1
        history.append({"epoch": global_offset + epoch + 1, "stage": plan.index, "stage_epoch": epoch + 1,
                        "train_loss": float(np.mean(losses)), "val_miou": val_miou, "lr": lr})
        ctx.log(f"stage {plan.index} epoch {epoch + 1}/{params.epochs}: loss {np.mean(losses):.4f}, "
                f"val mIoU {val_miou:.2f}")
        state = {"arch": plan.arch, "config": kwargs, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "stage": plan.index,
                 "rng": {"torch": torch.get_rng_state()}, "best_val_miou": best_miou, "best_epoch": best_epoch,
                 "history": history, "fingerprint": ctx.fingerprint}
        if improved:
            save_checkpoint(best_path, state)
        save_checkpoint(last_path, state)  # last after best: a kill between them loses nothing
        if ctx.on_epoch is not None:
            ctx.on_epoch(history)

    if state is None:
        raise StageError(f"stage {plan.index}: nothing trained and no checkpoint")
    if params.export == "best" and best_path.is_file():
        chosen = load_checkpoint(best_path, expected_arch=plan.arch)
        if chosen.get("fingerprint") == ctx.fingerprint:
            return chosen, history
    return state, history


def train_architecture(arch: str, params: TrainParams, ctx: TrainContext) -> dict:
    """Every stage of ``arch``; returns the final model.pt content and the summary metrics."""
    kwargs = dict(params.model_kwargs.get(arch, {}))
    history: list[dict] = []
    previous = None
    summary: dict = {"arch": arch, "epochs_per_stage": params.epochs}
    started = time.perf_counter()
    plans = plan_stages(arch)
    for plan in plans:
        chosen, history = train_stage(plan, params, kwargs, ctx, history, previous,
                                      global_offset=(plan.index - 1) * params.epochs)
        previous = chosen["model"]
        stage_rows = [h for h in history if h["stage"] == plan.index]
        summary[f"stage{plan.index}"] = {
            "arch": plan.arch, "epochs": len(stage_rows),
            "best_val_miou": _finite_or_none(chosen.get("best_val_miou")),
            "best_epoch": int(chosen.get("best_epoch", 0)),
        }
    last_rows = [h for h in history if h["stage"] == plans[-1].index]
    summary.update(
        stages=len(plans),
        final_val_miou=_finite_or_none(last_rows[-1]["val_miou"] if last_rows else None),
        best_val_miou=summary[f"stage{plans[-1].index}"]["best_val_miou"],
        exported_epoch=int(chosen["epoch"]),
        export=params.export,
        train_samples=len(ctx.train_data),
        val_samples=len(ctx.val_data) if ctx.val_data is not None else 0,
        seconds=round(time.perf_counter() - started, 1),
    )
    model_state = {"arch": arch, "config": kwargs, "model": chosen["model"], "input_size": params.input_size,
                   "stage": plans[-1].index, "epoch": int(chosen["epoch"]),
                   "val_miou": float(chosen.get("best_val_miou", float("nan")))}
    return {"model": model_state, "summary": summary, "history": history}


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None
