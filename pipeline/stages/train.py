"""Stage ``train``: train one segmentation network on the assembled training set.

ExtremeC3Net trains as in the paper: stage 1 fits the CoarseNet alone
(``extremec3net_stage1``); stage 2 fits the full network, its encoder initialised from
the best stage-1 checkpoint. Any architecture ``X`` with a registered ``X_stage1`` and a
``load_stage1_into`` beside its builder trains that way; the others train in one stage.

Training survives a kill: after every epoch ``models/<arch>/checkpoints/stage<k>_last.pt``
(model, optimizer, epoch, RNG state, history) and ``stage<k>_best.pt`` are saved
atomically, and a rerun continues from the last one. Each epoch's sample order and
augmentation are drawn from seeds derived from (seed, stage, epoch), so an interrupted and
resumed run repeats the uninterrupted one. Checkpoints made with other settings (a
fingerprint of every param that changes the result, of the training manifest and of the
training and network source files) are not resumed but started over.

Validation uses the ``val`` rows of the training manifest when there are any, otherwise a
deterministic fraction of the rows of ``val_sources`` (chosen by a hash of the id). Its
mIoU (per-image foreground IoU at the training size, x100) picks the best epoch; the
evaluate stage measures at the original resolution. A validation set that comes out empty
(a source the training set lacks, ``val_fraction: 0``) stops the stage unless
``allow_empty_validation: true`` says to train without one (the last epoch is then exported).

Params are checked when they are loaded, before any data is read: each architecture is
registered, each ``model_kwargs`` entry names a registered architecture and only arguments
its builder takes, with values it builds with, and each trained network runs (on the meta
device) at ``input_size`` on a batch of ``batch_size`` images.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.atomic import write_csv, write_json
from pipeline.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from pipeline.data import ManifestDataset, eval_transform, train_transform
from pipeline.devices import Device, resolve_device
from pipeline.hashing import sha256_file
from pipeline.losses import SegmentationLoss
from pipeline.models.registry import Architecture, ModelArgumentError, check_forward, check_model_kwargs, get_spec
from pipeline.params import InputPath, OutputPath, Section, load_section
from pipeline.stage import StageError, make_parser, run_main

HISTORY_COLUMNS = ["epoch", "stage", "stage_epoch", "train_loss", "val_miou", "lr"]


class LossParams(Section):
    # lovasz / ce: the ExtremeC3Net paper's loss (Table 3 ablation). paper: the loss the
    # architecture's own paper trains it with (``paper_loss`` in its module: the seg-nets'
    # squared L2, C-DLinkNet's refine + 0.5 x decoder losses); other networks fall back to lovasz.
    kind: Literal["lovasz", "ce", "paper"] = "lovasz"
    boundary_weight: float = Field(0.5, ge=0, allow_inf_nan=False)  # official code: 0.5 x the loss on the boundary band
    boundary_kernel: int = Field(7, ge=1)  # k x k square; odd

    @model_validator(mode="after")
    def _odd_kernel(self):
        if self.boundary_kernel % 2 == 0:
            raise ValueError(f"boundary_kernel must be odd (got {self.boundary_kernel})")
        return self


MAX_WORKERS = 64  # data-loader processes; more only exhausts the machine
MAX_THREADS = 256  # torch intra-op threads


class TrainParams(Section):
    archs: list[Architecture] = Field(default_factory=lambda: ["extremec3net"], min_length=1)
    model_kwargs: dict[str, dict] = Field(default_factory=dict)  # per-architecture builder kwargs
    train_set: InputPath = "data/train_set"
    models_dir: OutputPath = "models"
    metrics_dir: OutputPath = "metrics/train"
    plots_dir: OutputPath = "plots/train"
    input_size: int = Field(224, ge=16, le=4096)
    epochs: int = Field(300, ge=1)  # per stage (the paper: 300 + 300 for ExtremeC3Net)
    batch_size: int = Field(36, ge=1)
    workers: int = Field(2, ge=0, le=MAX_WORKERS)
    max_steps_per_epoch: int = Field(0, ge=0)  # 0 = the whole training set each epoch
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(2e-4, ge=0, allow_inf_nan=False)
    lr_schedule: Literal["multistep", "constant"] = "multistep"  # official: x0.5 at 1/2 and 5/6 of the epochs
    val_fraction: float = Field(0.1, ge=0, lt=1)
    val_sources: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=lambda: ["eg1800"])  # [] = any
    max_val_images: int = Field(0, ge=0)  # 0 = all held-out images
    allow_empty_validation: bool = False  # true: train without validation when none is left (exports the last epoch)
    export: Literal["best", "last"] = "best"  # which epoch of the last stage model.pt holds
    loss: LossParams = Field(default_factory=LossParams)
    seed: int = 0
    device: Device = "cpu"  # "auto" = cuda when available
    threads: int = Field(0, ge=0, le=MAX_THREADS)  # torch CPU threads; 0 = torch's default
    resume: bool = True

    @field_validator("archs")
    @classmethod
    def _listed_once(cls, value: list[str]) -> list[str]:
        twice = sorted({a for a in value if value.count(a) > 1})
        if twice:
            raise ValueError(f"architectures listed more than once: {twice}")
        return value

    @field_validator("model_kwargs")
    @classmethod
    def _kwargs_build(cls, value: dict[str, dict]) -> dict[str, dict]:
        errors = [error for arch, kwargs in value.items() for error in model_kwargs_errors(arch, kwargs)]
        if errors:
            raise ValidationError.from_exception_data("model_kwargs", errors)
        return value

    @model_validator(mode="after")
    def _networks_run(self) -> "TrainParams":
        errors = [InitErrorDetails(type=_error(message), loc=("archs", index), input=arch)
                  for index, arch in enumerate(self.archs)
                  for message in [architecture_problem(arch, self)] if message]
        if self.loss.boundary_kernel >= self.input_size:
            errors.append(InitErrorDetails(type=_error(f"must be smaller than input_size ({self.input_size})"),
                                           loc=("loss", "boundary_kernel"), input=self.loss.boundary_kernel))
        if errors:
            raise ValidationError.from_exception_data("train", errors)
        return self


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_architecture", "{message}", {"message": message})


def model_kwargs_errors(arch: str, kwargs) -> list[InitErrorDetails]:
    """Why ``model_kwargs[arch]`` is refused, as pydantic errors located at the bad key."""
    from pipeline.models import available_models

    if arch not in available_models():
        return [InitErrorDetails(type=_error(f"not a registered architecture; known: {', '.join(available_models())}"),
                                 loc=(arch,), input=kwargs)]
    try:
        check_model_kwargs(arch, kwargs)
    except ModelArgumentError as exc:
        if exc.argument is None:
            return [InitErrorDetails(type=_error(exc.reason), loc=(arch,), input=kwargs)]
        return [InitErrorDetails(type=_error(exc.reason), loc=(arch, exc.argument), input=kwargs.get(exc.argument))]
    return []


def architecture_problem(arch: str, params: "TrainParams") -> str | None:
    """Why a stage of ``arch`` cannot train at these settings (None when it can)."""
    kwargs = params.model_kwargs.get(arch, {})
    for plan in plan_stages(arch):
        try:
            check_forward(plan.arch, kwargs, params.input_size, batch=min(params.batch_size, 2), training=True)
        except ModelArgumentError as exc:
            return (f"{exc} (stage {plan.index}; input_size {params.input_size}, batch_size {params.batch_size}, "
                    f"model_kwargs.{arch})")
    return None


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


def holdout_mask(ids: pd.Series, sources: pd.Series, fraction: float, allowed_sources: list[str], seed: int) -> np.ndarray:
    """Deterministic validation choice: the same id is held out whatever else is in the set."""
    if fraction <= 0:
        return np.zeros(len(ids), dtype=bool)
    eligible = sources.isin(allowed_sources).to_numpy() if allowed_sources else np.ones(len(ids), dtype=bool)
    draws = np.array([int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for i in ids])
    return eligible & (draws < fraction)


def split_train_val(frame: pd.DataFrame, params: TrainParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and validation rows; a validation set that would be empty is an error unless allowed."""
    frame = frame[frame["mask"] != ""]
    if (frame["split"] == "val").any():
        train, val = frame[frame["split"] != "val"], frame[frame["split"] == "val"]
        how = "the 'val' split of the training set"
    else:
        known = sorted(frame["source"].unique())
        missing = [s for s in params.val_sources if s not in known]
        if missing:
            raise StageError(f"train.val_sources: {missing} not in the training set; its labelled sources are "
                             f"{known or 'none'}")
        held = holdout_mask(frame["id"], frame["source"], params.val_fraction, params.val_sources, params.seed)
        train, val = frame[~held], frame[held]
        how = (f"val_fraction {params.val_fraction} of "
               f"{'sources ' + str(list(params.val_sources)) if params.val_sources else 'every source'}")
    if train.empty:
        raise StageError("no training rows left after holding out the validation part")
    if params.max_val_images:
        val = val.iloc[: params.max_val_images]
    if val.empty and not params.allow_empty_validation:
        raise StageError(f"no validation images ({how} holds none): raise train.val_fraction or change "
                         "train.val_sources, or set train.allow_empty_validation: true to train without "
                         "validation (model.pt is then the last epoch)")
    return train.reset_index(drop=True), val.reset_index(drop=True)


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


def fingerprint(params: TrainParams, arch: str, train_set_digest: str, code_digest: str = "") -> str:
    """Hash of everything that changes the trained weights (not workers, device, paths, resume)."""
    relevant = params.model_dump(exclude={"archs", "model_kwargs", "train_set", "models_dir", "metrics_dir",
                                          "plots_dir", "workers", "device", "threads", "resume",
                                          "export", "allow_empty_validation"})
    relevant.update(arch=arch, model_kwargs=params.model_kwargs.get(arch, {}), train_set=train_set_digest,
                    code=code_digest)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def code_digest(plans: list[StagePlan]) -> str:
    """Hash of the source that decides the weights: a code change must not resume old checkpoints."""
    import sys

    from pipeline.models import get_spec

    modules = {"pipeline.stages.train", "pipeline.losses", "pipeline.data", "pipeline.models.registry"}
    modules |= {get_spec(p.arch).builder.__module__ for p in plans}
    digest = hashlib.sha256()
    for name in sorted(modules):
        path = getattr(sys.modules.get(name) or importlib.import_module(name), "__file__", None)
        if path:
            digest.update(name.encode() + Path(path).read_bytes())
    return digest.hexdigest()


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
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
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


def _body(args: argparse.Namespace) -> int:
    from pipeline.manifest import MANIFEST_NAME, read_manifest

    params = load_section(TrainParams, "train", args.params)
    archs = [args.arch] if args.arch else list(params.archs)
    if args.arch and args.arch not in params.archs:  # the listed ones were checked with the params
        plan_stages(args.arch)  # unknown architecture: StageError
        problem = architecture_problem(args.arch, params)
        if problem:
            raise StageError(f"--arch {args.arch}: {problem}")
    device = resolve_device(params.device)
    if params.threads:
        torch.set_num_threads(params.threads)
    try:
        frame = read_manifest(params.train_set)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    train_rows, val_rows = split_train_val(frame, params)
    digest = sha256_file(Path(params.train_set) / MANIFEST_NAME)
    for arch in archs:
        train_data = SeededAugmentDataset(params.train_set, train_rows, transform=train_transform(params.input_size),
                                          seed=params.seed)
        val_data = (ManifestDataset(params.train_set, val_rows, transform=eval_transform(params.input_size))
                    if len(val_rows) else None)
        plot_path = Path(params.plots_dir) / f"{arch}.csv"
        ctx = TrainContext(train_data, val_data, Path(params.models_dir) / arch,
                           fingerprint(params, arch, digest, code_digest(plan_stages(arch))),
                           device=device, on_epoch=lambda h, p=plot_path: write_csv(p, history_frame(h)),
                           log=lambda m: tqdm.write(m), progress=not args.quiet)
        print(f"train {arch}: {len(train_data)} training / {len(val_rows)} validation images, device {device}")
        try:
            result = train_architecture(arch, params, ctx)
        except CheckpointError as exc:
            raise StageError(str(exc)) from None
        save_checkpoint(Path(params.models_dir) / arch / "model.pt", result["model"])
        write_csv(plot_path, history_frame(result["history"]))
        write_json(Path(params.metrics_dir) / f"{arch}.json", result["summary"])
        s = result["summary"]
        print(f"train {arch}: best val mIoU {s['best_val_miou']} (epoch {s['exported_epoch']} exported), "
              f"{s['seconds']} s")
    return 0


def history_frame(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(history, columns=HISTORY_COLUMNS).round({"train_loss": 6, "val_miou": 4})


def main(argv=None) -> int:
    parser = make_parser("train", __doc__.split("\n\n")[0])
    parser.add_argument("--arch", help="train this architecture only (default: every one in train.archs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
