"""Stage ``train``: train one segmentation network (a student) on the assembled training set.

ExtremeC3Net trains as in the paper: stage 1 fits the CoarseNet alone
(``extremec3net_stage1``); stage 2 fits the full network, its encoder initialised from
the best stage-1 checkpoint. Any architecture ``X`` with a registered ``X_stage1`` and a
``load_stage1_into`` beside its builder trains that way; the others train in one stage.
Each stage is one run of the pipeline's training loop (``pipeline.training``): Adam, the
multistep, constant or warm-up + cosine learning rate, the Lovász (or CE, or the network's own
paper) loss; checkpoints after every epoch, resumed after a kill with the same result, and
started over when the settings, the training manifest or the code changed.

Validation uses the ``val`` rows of the training manifest when there are any, otherwise a
deterministic fraction of the rows of ``val_sources`` (chosen by a hash of the id). Its
mIoU (per-image foreground IoU at the training size, x100) picks the best epoch; the
evaluate stage measures at the original resolution. A validation set that comes out empty
(a source the training set lacks, ``val_fraction: 0``) stops the stage unless
``allow_empty_validation: true`` says to train without one (the last epoch is then exported).

Params (``train``): ``archs``, ``model_kwargs`` (builder kwargs, one entry per architecture)
and ``settings`` (everything else; ``train@<arch>`` in dvc.yaml depends on ``settings`` and
its own ``model_kwargs`` entry only). They are checked when loaded, before any data is read:
every ``model_kwargs`` entry names a registered architecture and only arguments its builder
takes, of the annotated types; each trained architecture (``archs``, or ``--arch``) has an
entry, builds with it (on the meta device) and runs at ``input_size`` on a batch of
``batch_size`` images.

Under ``torchrun`` (``torchrun --standalone --nproc-per-node 2 -m pipeline.cli train ...``) every
process trains its share of each global batch of ``batch_size`` images (which must divide by
the number of processes) through the same loop, and rank 0 alone writes (``pipeline.distributed``).

Reads ``paths.train_set``. Writes ``<paths.models>/<arch>/model.pt`` (the exported epoch),
``<paths.models>/<arch>/checkpoints/stage<k>_{last,best}.pt``,
``<paths.metrics>/train/<arch>.json`` and ``<paths.plots>/train/<arch>.csv`` (per epoch).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
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
from torch.utils.data import Dataset
from tqdm import tqdm

from pipeline import distributed
from pipeline.allocator import retain_freed_memory
from pipeline.atomic import write_csv, write_json
from pipeline.checkpoint import CheckpointError, save_checkpoint
from pipeline.data import (CachedSamples, ManifestDataset, SeededAugmentation, cache_short_side, eval_transform,
                           evaluation_resize, shrink_to_short_side, train_transform)
from pipeline.devices import Device, resolve_device
from pipeline.hashing import sha256_file
from pipeline.losses import SegmentationLoss
from pipeline.models.registry import (Architecture, ModelArgumentError, check_argument_names, check_forward,
                                      check_model_kwargs, get_spec)
from pipeline.params import Section, load_section
from pipeline.paths import ProjectPaths
from pipeline.stage import StageError, make_parser, run_main
from pipeline.training import (Step, TrainingJob, adam, code_digest, fingerprint as hash_settings, native_bf16, run,
                               schedule_lr, validation_iou)

HISTORY_COLUMNS = ["epoch", "stage", "stage_epoch", "train_loss", "val_miou", "lr"]
MAX_WORKERS = 64  # data-loader processes; more only exhausts the machine
MAX_THREADS = 256  # torch intra-op threads


# ---------------------------------------------------------------- params


class LossParams(Section):
    # lovasz / ce: the ExtremeC3Net paper's loss (Table 3 ablation). paper: the loss the
    # architecture's own paper trains it with (``paper_loss`` in its module: the seg-nets'
    # squared L2, C-DLinkNet's refine + 0.5 x decoder losses); other networks fall back to lovasz.
    kind: Literal["lovasz", "ce", "paper"]
    boundary_weight: float = Field(ge=0, allow_inf_nan=False)  # official code: 0.5 x the loss on the boundary band
    boundary_kernel: int = Field(ge=1)  # k x k square; odd

    @field_validator("boundary_kernel")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd")
        return value


class TrainSettings(Section):
    """``train.settings``: how every architecture trains."""

    input_size: int = Field(ge=16, le=4096)
    epochs: int = Field(ge=1)  # per stage (the paper: 300 + 300 for ExtremeC3Net)
    batch_size: int = Field(ge=1)
    workers: int = Field(ge=0, le=MAX_WORKERS)
    max_steps_per_epoch: int = Field(ge=0)  # 0 = the whole training set each epoch
    lr: float = Field(gt=0, allow_inf_nan=False)  # Adam
    weight_decay: float = Field(ge=0, allow_inf_nan=False)
    lr_schedule: Literal["multistep", "constant", "cosine"]  # official: multistep, x0.5 at 1/2 and 5/6 of the epochs
    lr_warmup_epochs: float = Field(ge=0, allow_inf_nan=False)  # cosine only: linear rise over these epochs of each stage
    val_fraction: float = Field(ge=0, lt=1)
    val_sources: list[Annotated[str, Field(min_length=1)]]  # [] = any
    max_val_images: int = Field(ge=0)  # 0 = all held-out images
    allow_empty_validation: bool  # true: train without validation when none is left (exports the last epoch)
    export: Literal["best", "last"]  # which epoch of the last stage model.pt holds
    loss: LossParams
    seed: int
    device: Device  # "auto" = cuda when available
    threads: int = Field(ge=0, le=MAX_THREADS)  # torch CPU threads; 0 = torch's default
    resume: bool
    # Speed (pipeline.training, pipeline.data): all false is the plain path, bit-identical to the
    # loop before them; true changes the weights only by float rounding and resampling.
    cache_resized: bool  # decode every sample once, keep it in memory shrunk to 1.5 x input_size (short side)
    persistent_workers: bool  # one DataLoader for the run: its processes outlive the epochs
    fused_loss: bool  # both Lovász terms from one batched sort (no per-image loop)
    channels_last: bool  # model and batches in NHWC
    bf16: bool  # bfloat16 autocast of the forward (CUDA; on CPU only where it computes bf16 natively)


class TrainParams(Section):
    archs: list[Architecture] = Field(min_length=1)
    model_kwargs: dict[str, dict]  # builder kwargs of every trainable architecture ({} = its defaults)
    settings: TrainSettings

    @field_validator("archs")
    @classmethod
    def _listed_once(cls, value: list[str]) -> list[str]:
        twice = sorted({a for a in value if value.count(a) > 1})
        if twice:
            raise ValueError(f"architectures listed more than once: {twice}")
        return value

    @field_validator("model_kwargs")
    @classmethod
    def _kwargs_named_right(cls, value: dict[str, dict]) -> dict[str, dict]:
        errors = [error for arch, kwargs in value.items() for error in model_kwargs_errors(arch, kwargs, build=False)]
        if errors:
            raise ValidationError.from_exception_data("model_kwargs", errors)
        return value

    @model_validator(mode="after")
    def _trained_networks_run(self) -> "TrainParams":
        errors = [error for index, arch in enumerate(self.archs) for error in trained_arch_errors(arch, index, self)]
        if self.settings.loss.boundary_kernel >= self.settings.input_size:
            errors.append(InitErrorDetails(type=_error(f"must be smaller than input_size ({self.settings.input_size})"),
                                           loc=("settings", "loss", "boundary_kernel"),
                                           input=self.settings.loss.boundary_kernel))
        if errors:
            raise ValidationError.from_exception_data("train", errors)
        return self


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_architecture", "{message}", {"message": message})


def model_kwargs_errors(arch: str, kwargs, build: bool = True) -> list[InitErrorDetails]:
    """Why ``model_kwargs[arch]`` is refused, as pydantic errors located at the bad key.

    Without ``build`` only the argument names and types are checked (fast): what a network
    that is not trained now needs.
    """
    from pipeline.models import available_models

    if arch not in available_models():
        return [InitErrorDetails(type=_error(f"not a registered architecture; known: {', '.join(available_models())}"),
                                 loc=(arch,), input=kwargs)]
    try:
        (check_model_kwargs if build else check_argument_names)(arch, kwargs)
    except ModelArgumentError as exc:
        if exc.argument is None:
            return [InitErrorDetails(type=_error(exc.reason), loc=(arch,), input=kwargs)]
        return [InitErrorDetails(type=_error(exc.reason), loc=(arch, exc.argument), input=kwargs.get(exc.argument))]
    return []


def trained_arch_errors(arch: str, index: int, params: TrainParams) -> list[InitErrorDetails]:
    """Why ``archs[index]`` cannot be trained: no kwargs entry, kwargs that do not build, or a
    network that does not run at the configured size."""
    if arch not in params.model_kwargs:
        return [InitErrorDetails(type=_error(f"{arch} has no train.model_kwargs entry; add `{arch}: {{}}` for its "
                                             "builder's defaults"), loc=("archs", index), input=arch)]
    errors = model_kwargs_errors(arch, params.model_kwargs[arch])
    if errors:
        return [{**e, "loc": ("model_kwargs", *e["loc"])} for e in errors]
    problem = architecture_problem(arch, params)
    return [InitErrorDetails(type=_error(problem), loc=("archs", index), input=arch)] if problem else []


def architecture_problem(arch: str, params: TrainParams) -> str | None:
    """Why a stage of ``arch`` cannot train at these settings (None when it can)."""
    kwargs, settings = params.model_kwargs.get(arch, {}), params.settings
    for plan in plan_stages(arch):
        try:
            check_forward(plan.arch, kwargs, settings.input_size, batch=min(settings.batch_size, 2), training=True)
        except ModelArgumentError as exc:
            return (f"{exc} (stage {plan.index}; input_size {settings.input_size}, batch_size {settings.batch_size}, "
                    f"model_kwargs.{arch})")
    return None


def archs_to_train(params: TrainParams, arch: str | None) -> list[str]:
    """``--arch`` (checked like a listed one: those were checked when params loaded), else ``archs``."""
    if not arch:
        return list(params.archs)
    if arch not in params.archs:
        plan_stages(arch)  # unknown architecture: StageError
        if arch not in params.model_kwargs:
            raise StageError(f"--arch {arch}: no train.model_kwargs entry for it; add `{arch}: {{}}` for its "
                             "builder's defaults")
        errors = model_kwargs_errors(arch, params.model_kwargs[arch])
        if errors:
            raise StageError(f"--arch {arch}: train.model_kwargs.{'.'.join(map(str, errors[0]['loc']))}: "
                             f"{errors[0]['type'].message()}")
        problem = architecture_problem(arch, params)
        if problem:
            raise StageError(f"--arch {arch}: {problem}")
    return [arch]


# ---------------------------------------------------------------- pure core


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


def learning_rate(settings: TrainSettings, step: Step) -> float:
    """Learning rate at ``step`` of a stage (each stage runs its own schedule from the start)."""
    return schedule_lr(settings.lr_schedule, settings.lr, step, settings.lr_warmup_epochs)


def holdout_mask(ids: pd.Series, sources: pd.Series, fraction: float, allowed_sources: list[str], seed: int) -> np.ndarray:
    """Deterministic validation choice: the same id is held out whatever else is in the set."""
    if fraction <= 0:
        return np.zeros(len(ids), dtype=bool)
    eligible = sources.isin(allowed_sources).to_numpy() if allowed_sources else np.ones(len(ids), dtype=bool)
    draws = np.array([int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for i in ids])
    return eligible & (draws < fraction)


def split_train_val(frame: pd.DataFrame, settings: TrainSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and validation rows; a validation set that would be empty is an error unless allowed."""
    frame = frame[frame["mask"] != ""]
    if (frame["split"] == "val").any():
        train, val = frame[frame["split"] != "val"], frame[frame["split"] == "val"]
        how = "the 'val' split of the training set"
    else:
        known = sorted(frame["source"].unique())
        missing = [s for s in settings.val_sources if s not in known]
        if missing:
            raise StageError(f"train.settings.val_sources: {missing} not in the training set; its labelled sources "
                             f"are {known or 'none'}")
        held = holdout_mask(frame["id"], frame["source"], settings.val_fraction, settings.val_sources, settings.seed)
        train, val = frame[~held], frame[held]
        how = (f"val_fraction {settings.val_fraction} of "
               f"{'sources ' + str(list(settings.val_sources)) if settings.val_sources else 'every source'}")
    if train.empty:
        raise StageError("no training rows left after holding out the validation part")
    if settings.max_val_images:
        val = val.iloc[: settings.max_val_images]
    if val.empty and not settings.allow_empty_validation:
        raise StageError(f"no validation images ({how} holds none): raise train.settings.val_fraction or change "
                         "train.settings.val_sources, or set train.settings.allow_empty_validation: true to train "
                         "without validation (model.pt is then the last epoch)")
    return train.reset_index(drop=True), val.reset_index(drop=True)


def seeded_training_data(root: str | Path, rows: pd.DataFrame, input_size: int, seed: int, cache: bool = False,
                         progress: bool = False, threads: int = 1) -> SeededAugmentation:
    """The training rows with PortraitNet augmentation, each sample's draws seeded by the loop;
    with ``cache``, decoded once and kept shrunk to ``cache_short_side(input_size)`` (``CachedSamples``)."""
    transform = train_transform(input_size)
    if cache:
        short_side = cache_short_side(input_size)
        samples = CachedSamples.from_manifest(root, rows, lambda i, m: shrink_to_short_side(i, m, short_side),
                                              transform, progress=progress, workers=threads)
    else:
        samples = ManifestDataset(root, rows, transform=transform)
    return SeededAugmentation(samples, transform, seed)


def validation_data(root: str | Path, rows: pd.DataFrame, input_size: int, cache: bool = False,
                    progress: bool = False, threads: int = 1) -> Dataset | None:
    """The validation rows at the training size (None without any); cached, the same pixels."""
    if not len(rows):
        return None
    if cache:
        return CachedSamples.from_manifest(root, rows, evaluation_resize(input_size), progress=progress,
                                           workers=threads)
    return ManifestDataset(root, rows, transform=eval_transform(input_size))


def fingerprint(settings: TrainSettings, arch: str, kwargs: dict, train_set_digest: str, code: str = "") -> str:
    """Hash of everything that changes the trained weights (not workers, device, threads, resume, export)."""
    relevant = settings.model_dump(exclude={"workers", "device", "threads", "resume", "export",
                                            "allow_empty_validation"})
    return hash_settings(relevant, arch=arch, model_kwargs=kwargs, train_set=train_set_digest, code=code)


def code_modules(plans: list[StagePlan]) -> set[str]:
    """The modules whose source decides the weights: a code change must not resume old checkpoints."""
    return ({__name__, "pipeline.training", "pipeline.losses", "pipeline.data", "pipeline.models.registry"}
            | {get_spec(p.arch).builder.__module__ for p in plans})


def training_loss(model: torch.nn.Module, loss: LossParams, fused: bool = False):
    """``f(model, images, masks) -> loss``: the configured loss (``fused``: its batched form), or the
    architecture's own."""
    if loss.kind == "paper":
        own = getattr(inspect.getmodule(type(model)), "paper_loss", None)
        if own is not None:
            return own
    segmentation = SegmentationLoss("lovasz" if loss.kind == "paper" else loss.kind, loss.boundary_weight,
                                    loss.boundary_kernel, fused=fused)
    return lambda net, images, masks: segmentation(net(images), masks)


def _loss_of(loss: LossParams, fused: bool):
    """The job's loss: ``training_loss`` chosen once, for the network the loop built."""
    chosen: dict = {}

    def loss_fn(net, images, masks):
        if "fn" not in chosen:
            chosen["fn"] = training_loss(net, loss, fused)
        return chosen["fn"](net, images, masks)

    return loss_fn


@dataclass
class TrainContext:
    """What a training run needs besides params: data and where to write."""

    train_data: SeededAugmentation
    val_data: Dataset | None
    out_dir: Path  # models/<arch>
    fingerprint: str
    device: str = "cpu"
    on_epoch: Callable[[list[dict]], None] | None = None  # called with the history after each epoch
    log: Callable[[str], None] = print
    progress: bool = True  # tqdm bar per epoch


def stage_rows(plan: StagePlan, epochs: int, history: list[dict]) -> list[dict]:
    """The loop's history of one stage as plot rows (epochs numbered across the stages)."""
    return [{"epoch": (plan.index - 1) * epochs + h["epoch"], "stage": plan.index, "stage_epoch": h["epoch"],
             "train_loss": h["train_loss"], "val_miou": h["val"], "lr": h["lr"]} for h in history]


def autocast_dtype(settings: TrainSettings, device: str) -> tuple[torch.dtype | None, str | None]:
    """(autocast dtype, why not): ``bf16`` where the device computes it natively (``native_bf16``),
    float32 elsewhere, with the line that says so."""
    if not settings.bf16:
        return None, None
    if native_bf16(device):
        if settings.channels_last and str(device).startswith("cpu"):
            # torch 2.13's oneDNN on a CPU with native bf16: a depth-wise 1x15 conv in bf16 NHWC (ExtremeC3Net's
            # dilation-8 branches) gave no result in 15 s for one 8x112x112 map, against 2 ms for 1x13;
            # one ExtremeC3Net step never finished. NCHW bf16 (3.15 s/step) gains nothing over NHWC fp32 (2.89).
            return None, ("train.settings.bf16 with channels_last on CPU trains many times slower than either "
                          "alone; training in float32 channels_last (set bf16: false to silence this)")
        return torch.bfloat16, None
    return None, (f"train.settings.bf16: {device} has no native bfloat16 (a CUDA GPU, or a CPU with AVX512-BF16 or "
                  "AMX); training in float32")


def stage_job(plan: StagePlan, settings: TrainSettings, kwargs: dict, ctx: TrainContext, earlier: list[dict],
              previous_weights: dict | None, autocast: torch.dtype | None = None) -> TrainingJob:
    """One stage of a student as a run of the training loop."""
    from pipeline.models import build_model

    def make_model(fresh: bool) -> torch.nn.Module:
        model = build_model(plan.arch, **kwargs)
        if fresh and previous_weights is not None and plan.init_from_previous is not None:
            plan.init_from_previous(model, previous_weights)
        return model

    validate = None
    if ctx.val_data is not None and len(ctx.val_data):
        # a cached validation set is resized already: loader processes would only cost their start
        val_workers = 0 if isinstance(ctx.val_data, CachedSamples) else settings.workers

        def validate(model):
            return validation_iou(model, ctx.val_data, settings.batch_size, val_workers, ctx.device) * 100

    on_epoch = None
    if ctx.on_epoch is not None:
        def on_epoch(history):
            ctx.on_epoch(earlier + stage_rows(plan, settings.epochs, history))

    return TrainingJob(
        name=f"stage {plan.index} ({plan.arch})", arch=plan.arch, config=kwargs, make_model=make_model,
        make_optimizer=lambda model: adam(model.parameters(), settings.lr, settings.weight_decay),
        loss=_loss_of(settings.loss, settings.fused_loss),
        learning_rate=lambda step: learning_rate(settings, step),
        epochs=settings.epochs, batch_size=settings.batch_size, train_data=ctx.train_data,
        checkpoint_dir=ctx.out_dir / "checkpoints", fingerprint=ctx.fingerprint, seed=settings.seed, key=plan.index,
        max_steps_per_epoch=settings.max_steps_per_epoch, validate=validate, checkpoint_name=f"stage{plan.index}_",
        resume=settings.resume, workers=settings.workers, persistent_workers=settings.persistent_workers,
        channels_last=settings.channels_last, autocast=autocast, device=ctx.device, extra={"stage": plan.index},
        progress=ctx.progress, log=ctx.log, on_epoch=on_epoch)


def train_architecture(arch: str, settings: TrainSettings, kwargs: dict, ctx: TrainContext) -> dict:
    """Every stage of ``arch``; returns the final model.pt content, the summary metrics and the history."""
    kwargs = dict(kwargs)
    history: list[dict] = []
    previous = None
    summary: dict = {"arch": arch, "epochs_per_stage": settings.epochs}
    started = time.perf_counter()
    plans = plan_stages(arch)
    autocast, note = autocast_dtype(settings, ctx.device)
    if note:
        ctx.log(note)
    for plan in plans:
        try:
            result = run(stage_job(plan, settings, kwargs, ctx, history, previous, autocast))
        except CheckpointError as exc:
            raise StageError(str(exc)) from None
        chosen = result.best if settings.export == "best" and result.best is not None else result.last
        history = history + stage_rows(plan, settings.epochs, result.history)
        previous = chosen["model"]
        summary[f"stage{plan.index}"] = {
            "arch": plan.arch, "epochs": len(result.history),
            "best_val_miou": _finite_or_none(chosen.get("best_score")),
            "best_epoch": int(chosen.get("best_epoch", 0)),
        }
    last_rows = [h for h in history if h["stage"] == plans[-1].index]
    summary.update(
        stages=len(plans),
        final_val_miou=_finite_or_none(last_rows[-1]["val_miou"] if last_rows else None),
        best_val_miou=summary[f"stage{plans[-1].index}"]["best_val_miou"],
        exported_epoch=int(chosen["epoch"]),
        export=settings.export,
        train_samples=len(ctx.train_data),
        val_samples=len(ctx.val_data) if ctx.val_data is not None else 0,
        seconds=round(time.perf_counter() - started, 1),
    )
    model_state = {"arch": arch, "config": kwargs, "model": chosen["model"], "input_size": settings.input_size,
                   "stage": plans[-1].index, "epoch": int(chosen["epoch"]),
                   "val_miou": float(chosen.get("best_score", float("nan")))}
    return {"model": model_state, "summary": summary, "history": history}


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None


def history_frame(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(history, columns=HISTORY_COLUMNS).round({"train_loss": 6, "val_miou": 4})


# ---------------------------------------------------------------- stage


def _body(args: argparse.Namespace) -> int:
    from pipeline.manifest import MANIFEST_NAME, read_manifest

    paths = load_section(ProjectPaths, "paths", args.params)
    params = load_section(TrainParams, "train", args.params)
    settings = params.settings
    archs = archs_to_train(params, args.arch)
    device = distributed.local_device(resolve_device(settings.device))
    distributed.rank_batch(settings.batch_size)  # under torchrun: refused before any data is read
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if device == "cpu":
        retain_freed_memory()  # no page faults on each step's large tensors (pipeline.allocator)
    try:
        frame = read_manifest(paths.train_set)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    train_rows, val_rows = split_train_val(frame, settings)
    digest = sha256_file(Path(paths.train_set) / MANIFEST_NAME)
    with distributed.session(device) as topo:
        show = not args.quiet and topo.main
        for arch in archs:
            kwargs = dict(params.model_kwargs[arch])
            threads = settings.threads or torch.get_num_threads()
            train_data = seeded_training_data(paths.train_set, train_rows, settings.input_size, settings.seed,
                                              settings.cache_resized, show, threads)
            val_data = (validation_data(paths.train_set, val_rows, settings.input_size, settings.cache_resized,
                                        show, threads) if topo.main else None)  # rank 0 validates
            plot_path = Path(paths.plots) / "train" / f"{arch}.csv"
            ctx = TrainContext(train_data, val_data, paths.model_dir(arch),
                               fingerprint(settings, arch, kwargs, digest,
                                           code_digest(code_modules(plan_stages(arch)))),
                               device=device, on_epoch=lambda h, p=plot_path: write_csv(p, history_frame(h)),
                               log=lambda m: tqdm.write(m), progress=not args.quiet)
            where = f"device {device}" + (f", {topo.world_size} processes" if topo.distributed else "")
            if topo.main:
                print(f"train {arch}: {len(train_data)} training / {len(val_rows)} validation images, {where}")
            result = train_architecture(arch, settings, kwargs, ctx)
            if not topo.main:
                continue
            save_checkpoint(paths.model_dir(arch) / "model.pt", result["model"])
            write_csv(plot_path, history_frame(result["history"]))
            write_json(paths.metrics_file("train", f"{arch}.json"), result["summary"])
            s = result["summary"]
            print(f"train {arch}: best val mIoU {s['best_val_miou']} (epoch {s['exported_epoch']} exported), "
                  f"{s['seconds']} s")
    return 0


def main(argv=None) -> int:
    parser = make_parser("train", __doc__.split("\n\n")[0])
    parser.add_argument("--arch", help="train this architecture only (default: every one in train.archs)")
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
