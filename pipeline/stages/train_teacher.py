"""Stage ``train_teacher``: fine-tune the DeepLabv3+ teacher on the labelled human data.

The paper pseudo-labels raw web portraits with DeepLabv3+ (SE-ResNeXt-50 encoder,
ImageNet-pretrained, fine-tuned on about 2,500 human segmentation images). Here the
labelled data are rows of canonical datasets (``teacher.train_data``: EG1800 train, CCP
train, the face crops; ``teacher.val_data``: CCP val), never a validation sample or a crop
of one in training. The teacher trains on the pipeline's one training loop
(``pipeline.training``) with its own optimizer (AdamW), schedule (cosine per step) and
loss (cross-entropy + soft Dice, ``pipeline.losses.cross_entropy_dice``); the run is
resumable: a checkpoint is written atomically every ``checkpoint_every_steps`` steps and
at each epoch's end, and a rerun with the same settings continues from it (``epochs`` may
grow between runs). ``teacher.checkpoint`` skips training and adopts an existing teacher
after checking that it fits the configured architecture.

Under ``torchrun`` (``torchrun --standalone --nproc-per-node 2 -m pipeline.cli train-teacher``)
each process trains its share of every global batch of ``batch_size`` images (which must
divide by the number of processes); rank 0 alone validates and writes (``pipeline.distributed``).

Reads the rows ``train_data``/``val_data`` select (``dataset: prepared`` is
``paths.prepared``, ``crops`` is ``paths.crops``). Writes the teacher ``paths.teacher``,
its resume checkpoint ``<paths.teacher_resume>/last.pt``, ``<paths.metrics>/teacher/train.json``
and the per-epoch log ``<paths.metrics>/teacher/train_log.csv``.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
from pydantic import ConfigDict, Field, model_validator

from pipeline import distributed
from pipeline.atomic import atomic_path, write_csv, write_json
from pipeline.checkpoint import CheckpointError, save_checkpoint
from pipeline.data import SeededAugmentation, eval_transform, manifest_datasets, train_transform
from pipeline.devices import Device, resolve_device
from pipeline.hashing import sha256_file
from pipeline.losses import cross_entropy_dice
from pipeline.models.registry import count_parameters
from pipeline.params import InputPath, load_section
from pipeline.paths import ProjectPaths, shown_path
from pipeline.selection import DataSource, drop_leaks, gather_rows, keep_readable, subsample
from pipeline.stage import StageError, make_parser, run_main
from pipeline.teachers.deeplab import TEACHER_ARCH, TeacherArchitecture, build_teacher, checked_input_size, load_teacher
from pipeline.teachers.mediapipe_encoder import ENCODER_WEIGHTS as MEDIAPIPE_WEIGHTS, MEDIAPIPE_ENCODERS
from pipeline.training import (TrainingJob, code_digest, cosine_lr, fingerprint as hash_settings, run,
                               validation_iou)

HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_iou", "lr"]
RESUME_NAME = "last.pt"  # in paths.teacher_resume
METRICS_NAME = "train.json"  # in <paths.metrics>/teacher
LOG_NAME = "train_log.csv"  # in <paths.metrics>/teacher


class TeacherParams(TeacherArchitecture):
    """The ``teacher`` section (its architecture keys are ``TeacherArchitecture``'s)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # null | imagenet (smp download) | local state dict | mediapipe (encoder mediapipe_general: the wheel's file)
    encoder_weights: str | None = Field(min_length=1)
    checkpoint: InputPath | None  # adopt this trained teacher instead of training
    train_data: list[DataSource] = Field(min_length=1)
    val_data: list[DataSource]
    allow_empty_validation: bool  # true: train without a validation IoU (val_iou null)
    max_train_images: int | None = Field(ge=2)  # null: every selected row
    max_val_images: int | None = Field(ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)  # BatchNorm needs at least 2 samples per batch
    lr: float = Field(gt=0, allow_inf_nan=False)  # AdamW, cosine decay over the run's steps
    weight_decay: float = Field(ge=0, allow_inf_nan=False)
    dice_weight: float = Field(ge=0, allow_inf_nan=False)
    num_workers: int = Field(ge=0)
    seed: int = Field(ge=0)  # numpy refuses negative seeds
    device: Device
    checkpoint_every_steps: int = Field(ge=1)

    @model_validator(mode="after")
    def _weights_fit_encoder(self) -> "TeacherParams":
        pretrained_in_wheel = self.encoder_name in MEDIAPIPE_ENCODERS
        if pretrained_in_wheel != (self.encoder_weights == MEDIAPIPE_WEIGHTS):
            raise ValueError(f"encoder_weights: {MEDIAPIPE_WEIGHTS!r} goes with (and only with) the encoders "
                             f"{', '.join(MEDIAPIPE_ENCODERS)} (got encoder {self.encoder_name!r}, weights "
                             f"{self.encoder_weights!r})")
        return self


# Settings that may change between a crash and the rerun without invalidating the run.
_RESUME_FREE = {"epochs", "checkpoint_every_steps", "num_workers", "device", "checkpoint", "allow_empty_validation"}
CODE_MODULES = {__name__, "pipeline.training", "pipeline.losses", "pipeline.data", "pipeline.teachers.deeplab",
                "pipeline.teachers.mediapipe_encoder", "pipeline.teachers.mediapipe", "pipeline.teachers.tflite"}


def run_fingerprint(settings: TeacherParams, train_ids: list[str], code: str = "") -> str:
    """Hash of everything that makes a partial run continuable (not epochs: they may grow)."""
    relevant = {k: v for k, v in settings.model_dump(mode="json").items() if k not in _RESUME_FREE}
    return hash_settings(relevant, train_ids=sorted(train_ids), code=code)


# ---------------------------------------------------------------------------- pure core


def teacher_job(settings: TeacherParams, train_set: SeededAugmentation, val_set, checkpoint_dir: Path,
                fingerprint: str, device: str = "cpu", progress: bool = True, log=print) -> TrainingJob:
    """The teacher's run of the training loop: AdamW, cosine per step, cross-entropy + Dice."""
    config = settings.arch_config()

    def make_model(fresh: bool) -> torch.nn.Module:
        try:  # a resumed run takes every weight from its checkpoint: no encoder weights to fetch
            return build_teacher(config, encoder_weights=settings.encoder_weights if fresh else None)
        except (ValueError, OSError, CheckpointError) as exc:
            raise StageError(str(exc)) from None

    return TrainingJob(
        name="teacher", arch=TEACHER_ARCH, config=config, make_model=make_model,
        make_optimizer=lambda model: torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                                       weight_decay=settings.weight_decay),
        loss=lambda net, images, masks: cross_entropy_dice(net(images), masks, settings.dice_weight),
        learning_rate=lambda step: cosine_lr(settings.lr, step.global_step, step.total_steps),
        epochs=settings.epochs, batch_size=settings.batch_size, train_data=train_set,
        checkpoint_dir=checkpoint_dir, fingerprint=fingerprint, seed=settings.seed, key="teacher",
        validate=lambda model: validation_iou(model, val_set, settings.batch_size, settings.num_workers, device),
        checkpoint_every_steps=settings.checkpoint_every_steps, keep_best=False, workers=settings.num_workers,
        device=device, progress=progress, log=log)


def history_rows(history: list[dict]) -> list[dict]:
    """The loop's history in the teacher log's columns."""
    return [{"epoch": h["epoch"], "step": h["step"], "train_loss": h["train_loss"], "val_iou": h["val"],
             "lr": h["lr"]} for h in history]


def checked_history(state: dict, path: str | os.PathLike) -> list[dict]:
    history = state.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) and set(h) <= set(HISTORY_COLUMNS)
                                                for h in history):
        raise CheckpointError(f"{path}: teacher checkpoint history is not a list of "
                              f"{{{', '.join(HISTORY_COLUMNS)}}} records")
    return history


def adopt_checkpoint(settings: TeacherParams, output: str | os.PathLike, project: str | os.PathLike = ".") -> dict:
    """Check an existing teacher against the configured architecture and copy it to ``output``."""
    source = Path(settings.checkpoint)
    try:
        model, state = load_teacher(source, expected_config=settings.arch_config())
        input_size = checked_input_size(state, source)
        history = checked_history(state, source)
    except CheckpointError as exc:
        raise StageError(str(exc)) from None
    with atomic_path(output) as tmp:
        shutil.copyfile(source, tmp)
    return {"source": "checkpoint", "checkpoint": shown_path(source, project),
            "checkpoint_sha256": sha256_file(source), "encoder_name": settings.encoder_name,
            "parameters": count_parameters(model), "input_size": input_size, "history": history}


def training_rows(settings: TeacherParams, paths: ProjectPaths, notes: list[str], skipped: list[dict],
                  project: str | os.PathLike = ".") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows): selected, leak-free, subsampled and readable.

    Fails when the validation set is empty unless ``allow_empty_validation``.
    """
    val_rows = subsample(gather_rows(settings.val_data, paths, notes, "teacher.val_data", project),
                         settings.max_val_images, settings.seed)
    val_rows = keep_readable(val_rows, skipped, project)
    train_rows, leaked = drop_leaks(gather_rows(settings.train_data, paths, notes, "teacher.train_data", project),
                                    val_rows)
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


def check_output_paths(paths: ProjectPaths) -> None:
    """``paths.teacher`` must be a file of its own: not the resume checkpoint nor a metrics file."""
    teacher = os.path.normpath(os.path.abspath(paths.teacher))
    others = [("paths.teacher_resume", Path(paths.teacher_resume) / RESUME_NAME),
              ("paths.metrics", paths.metrics_file("teacher", METRICS_NAME)),
              ("paths.metrics", paths.metrics_file("teacher", LOG_NAME))]
    for key, other in others:
        if teacher == os.path.normpath(os.path.abspath(other)):
            raise StageError(f"paths.teacher {paths.teacher!r} is {other.as_posix()}, which train_teacher also "
                             f"writes (from {key}); give the teacher a file of its own")


# ---------------------------------------------------------------------------- stage


def _body(args) -> int:
    paths = load_section(ProjectPaths, "paths", args.params)
    settings = load_section(TeacherParams, "teacher", args.params)
    check_output_paths(paths)
    project = os.path.dirname(os.path.abspath(args.params))
    metrics_path, log_path = paths.metrics_file("teacher", METRICS_NAME), paths.metrics_file("teacher", LOG_NAME)
    started = time.time()
    if settings.checkpoint:
        if not distributed.is_main():
            return 0  # adopting copies one file: rank 0's work
        summary = adopt_checkpoint(settings, paths.teacher, project)
        history = summary.pop("history")
        write_csv(log_path, pd.DataFrame(history, columns=HISTORY_COLUMNS))
        write_json(metrics_path, summary)
        print(f"adopted teacher {settings.checkpoint} -> {paths.teacher}")
        return 0

    notes: list[str] = []
    skipped: list[dict] = []
    train_rows, val_rows = training_rows(settings, paths, notes, skipped, project)
    device = distributed.local_device(resolve_device(settings.device))
    distributed.rank_batch(settings.batch_size)  # under torchrun: refused before any process waits for another
    main_rank = distributed.is_main()
    for note in notes if main_rank else []:
        print(f"note: {note}")
    train_ids = sorted(train_rows["id"].tolist())
    augment = train_transform(settings.input_size)
    train_set = SeededAugmentation(manifest_datasets(train_rows, augment), augment, settings.seed)
    val_set = manifest_datasets(val_rows, eval_transform(settings.input_size))

    job = teacher_job(settings, train_set, val_set, Path(paths.teacher_resume),
                      run_fingerprint(settings, train_ids, code_digest(CODE_MODULES)), device=device,
                      progress=not args.quiet)
    with distributed.session(device):
        result = run(job)
    if not main_rank:
        return 0
    history = history_rows(result.history)
    model = result.model.cpu()
    save_checkpoint(paths.teacher, {
        "arch": TEACHER_ARCH, "config": settings.arch_config(), "model": model.state_dict(),
        "input_size": settings.input_size, "encoder_weights": settings.encoder_weights or "", "train_ids": train_ids,
        "history": history,
    })
    write_csv(log_path, pd.DataFrame(history, columns=HISTORY_COLUMNS))
    last = history[-1]
    encoder_weights = settings.encoder_weights
    if encoder_weights not in (None, "imagenet", MEDIAPIPE_WEIGHTS):
        encoder_weights = shown_path(encoder_weights, project)
    write_json(metrics_path, {
        "source": "trained", "encoder_name": settings.encoder_name, "encoder_weights": encoder_weights,
        "parameters": count_parameters(model), "input_size": settings.input_size,
        "train_images": len(train_set), "val_images": len(val_set), "epochs": last["epoch"],
        "first_epoch_loss": history[0]["train_loss"], "final_train_loss": last["train_loss"],
        "final_val_iou": None if math.isnan(last["val_iou"]) else last["val_iou"],
        "seconds_this_run": round(time.time() - started, 1), "notes": notes, "skipped": skipped,
    })
    print(f"teacher written to {paths.teacher} (train loss {last['train_loss']:.4f}, val IoU {last['val_iou']:.4f})")
    return 0


def main(argv=None) -> int:
    parser = make_parser("train-teacher", __doc__.split("\n\n")[0])
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
