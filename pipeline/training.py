"""One resumable training loop for every network the pipeline trains: the students and the teacher.

A stage describes what it trains as a ``TrainingJob`` (its model, optimizer, loss and
learning-rate schedule, its seeded training data and validation, where checkpoints go and
the fingerprint of the settings) and calls ``run(job)``, which trains, resumes or skips and
returns the last and best states with the per-epoch history. The loop owns what must be the
same for every network:

- Reproducibility. Initial weights come from ``derived_seed(seed, key, -1)``; epoch ``e``'s
  sample order and every sample's augmentation from ``derived_seed(seed, key, e)`` (``key``
  is the training stage: ExtremeC3Net trains two). The torch RNG state (dropout) is saved in
  every checkpoint, so a killed and resumed run ends with the same weights as one that was
  never interrupted, also when it resumes in the middle of an epoch.
- Checkpoints. ``<dir>/<name>last.pt`` after every epoch (and every
  ``checkpoint_every_steps`` steps, for slow epochs), ``<name>best.pt`` when validation
  improves, both atomic and ``weights_only``-loadable. A checkpoint written with another
  fingerprint (other settings, data or code) is not resumed: the run starts over; one of
  another architecture or that does not load is an error (it is not this run's file).
- The per-epoch progress bar (off with ``progress=False``: ``--quiet``), a log line per
  epoch, a non-finite loss stopping the run at once, and the history rows the stages write
  as metrics and plots.

- Speed, each switch off by default (off, a run is bit-identical to the loop before them):
  ``channels_last`` (model and batches in NHWC), ``autocast`` (bfloat16 forward on CPU or
  CUDA; the loss and the weights stay float32) and ``persistent_workers`` (one
  loader for the whole run whose processes outlive the epochs; the epoch seed travels with
  every index, so the samples are the same as from a fresh loader each epoch).

Distributed training: under ``torchrun`` (``pipeline.distributed``; without it nothing below
changes) the model is wrapped in ``DistributedDataParallel`` together with its loss, and

- each rank trains on its share of every global batch of the seeded epoch order
  (``batch_size / world`` images; the step's images are those of a single-process step), its
  loss scaled so the averaged gradient is the gradient of the global batch's mean loss;
- the step loss is all-reduced (every rank logs and stops on the same global value);
- batch norm statistics are those of the global batch (``SyncBatchNorm`` on CUDA, its CPU
  counterpart ``GlooSyncBatchNorm``), so the running statistics are the same on every rank;
- rank 0 alone reads the resume checkpoint and broadcasts it, validates (the score is
  broadcast), logs, shows progress and writes checkpoints; each rank's torch RNG state goes
  into every checkpoint, so a resumed run draws as an unbroken one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from pipeline import distributed
from pipeline.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from pipeline.errors import StageError
from pipeline.metrics import iou

# What a resumable checkpoint holds besides the job's own ``extra`` entries.
RESUME_KEYS = ("model", "optimizer", "epoch", "batch_in_epoch", "epoch_losses", "rng", "best_score", "best_epoch",
               "history")


# ---------------------------------------------------------------- seeds, order, schedule


def derived_seed(seed: int, key: int | str, epoch: int) -> int:
    """A seed for (run seed, training stage, epoch): the same numbers on every machine and rerun."""
    return int(hashlib.sha256(f"{seed}/{key}/{epoch}".encode()).hexdigest()[:8], 16)


def epoch_order(n: int, seed: int, limit: int | None, batch_size: int | None = None) -> list[int]:
    """This epoch's sample order. With ``batch_size``, a last batch of a single image is left out
    (that image comes at another place next epoch): batch norm cannot train on one image."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    order = order[:limit] if limit else order
    if batch_size and batch_size > 1 and len(order) > 1 and len(order) % batch_size == 1:
        order = order[:-1]
    return order


@dataclass(frozen=True)
class Step:
    """Where training stands when a learning rate is asked for (all counts 0-based)."""

    epoch: int
    batch: int  # within the epoch
    batches_per_epoch: int
    epochs: int

    @property
    def global_step(self) -> int:
        return self.epoch * self.batches_per_epoch + self.batch

    @property
    def total_steps(self) -> int:
        return self.epochs * self.batches_per_epoch


def multistep_lr(base: float, epochs: int, epoch: int) -> float:
    """x0.5 at 1/2 and at 5/6 of the epochs (the official ExtremeC3Net code); a function of the epoch only."""
    milestones = [m for m in (epochs // 2, epochs - epochs // 6) if m > 0]
    return base * 0.5 ** sum(epoch >= m for m in milestones)


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from ``base`` to 0 over ``total`` steps."""
    return base * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def warmup_cosine_lr(base: float, step: int, total: int, warmup: int) -> float:
    """A linear rise to ``base`` over the first ``warmup`` steps, then cosine decay to 0 by ``total``.

    For runs of tens of epochs rather than the paper's hundreds: the rise lets a peak well
    above the paper's rate start a freshly initialised batch-norm network without the first
    steps' large updates throwing it off, and the rate anneals to 0 by the last step instead
    of stopping at a quarter of its peak (20 + 20 epochs of the cpu profile: 91.09 mIoU
    against multistep's 87.69, metrics/cpu/README.md).
    """
    warmup = min(max(warmup, 0), total)
    if step < warmup:
        return base * (step + 1) / warmup
    return cosine_lr(base, step - warmup, total - warmup)


LR_SCHEDULES = ("multistep", "constant", "cosine")


def schedule_lr(schedule: str, base: float, step: Step, warmup_epochs: float = 0.0) -> float:
    """The student's learning rate at ``step``: a pure function of where training stands, so resuming
    needs no scheduler state. ``multistep`` (the official code) and ``constant`` change per epoch;
    ``cosine`` per step, after ``warmup_epochs`` of linear warm-up."""
    if schedule == "constant":
        return base
    if schedule == "multistep":
        return multistep_lr(base, step.epochs, step.epoch)
    if schedule == "cosine":
        return warmup_cosine_lr(base, step.global_step, step.total_steps, round(warmup_epochs * step.batches_per_epoch))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; known: {', '.join(LR_SCHEDULES)}")


FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")


def adam(parameters: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam as one fused kernel over all the weights where torch has one (float weights on CPU or CUDA).

    A small network has hundreds of tiny weight tensors: ExtremeC3Net's 279 cost the
    per-tensor loop about 20 ms a step on 2 CPU threads against under 2 ms fused
    (``benchmarks/train_step.py``). Same algorithm; only the rounding order differs.
    """
    params = list(parameters)
    fusable = bool(params) and all(p.device.type in FUSED_OPTIMIZER_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True if fusable else None)


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated through float32 and only slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


# ---------------------------------------------------------------- fingerprint


def code_digest(modules: Iterable[str]) -> str:
    """Hash of the source files of ``modules``: a code change must not resume old checkpoints."""
    digest = hashlib.sha256()
    for name in sorted(set(modules) | {__name__}):
        path = getattr(sys.modules.get(name) or importlib.import_module(name), "__file__", None)
        if path:
            digest.update(name.encode() + Path(path).read_bytes())
    return digest.hexdigest()


def fingerprint(settings: Mapping, **inputs) -> str:
    """Hash of everything that changes the trained weights: the settings that do, plus the data
    and code digests (``inputs``). A checkpoint is resumed only under the same fingerprint."""
    payload = {**settings, **inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- validation


def validation_iou(model: nn.Module, dataset: Dataset | None, batch_size: int, workers: int = 0,
                   device: str | torch.device = "cpu") -> float:
    """Mean per-image foreground IoU (0..1, ``pipeline.metrics.iou``) at the dataset's resolution;
    nan without validation images."""
    from pipeline.models.registry import foreground_logit

    if dataset is None or len(dataset) == 0:
        return float("nan")
    model.eval()
    scores = []
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
            predicted = (foreground_logit(model(batch["image"].to(device))) > 0).cpu().numpy()
            truth = batch["mask"].numpy() > 0.5
            scores += [iou(p, t) for p, t in zip(predicted, truth)]
    return float(np.mean(scores))


# ---------------------------------------------------------------- the job


class SeededData(Protocol):
    """A training dataset whose augmentation follows a seed the loop sets each epoch
    (``pipeline.data.SeededAugmentation``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...

    def reseed(self, epoch_seed: int) -> None: ...


@dataclass
class TrainingJob:
    """What one training run is: everything ``run`` needs, nothing it writes besides checkpoints."""

    name: str  # in progress bars and log lines
    arch: str  # recorded in checkpoints; a checkpoint of another architecture is refused
    config: dict  # the builder kwargs, recorded likewise
    make_model: Callable[[bool], nn.Module]  # make_model(fresh): fresh = no checkpoint is resumed (load
    #                                          pretrained or previous-stage weights then)
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # loss(model, images, masks)
    learning_rate: Callable[[Step], float]
    epochs: int
    batch_size: int
    train_data: SeededData
    checkpoint_dir: Path
    fingerprint: str
    seed: int
    key: int | str = 1  # seeds derive from (seed, key, epoch): the training stage
    max_steps_per_epoch: int = 0  # 0: the whole training set each epoch
    validate: Callable[[nn.Module], float] | None = None  # higher is better; nan: nothing to validate on
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    checkpoint_name: str = ""  # prefix of the checkpoint files: "stage1_" -> stage1_last.pt
    keep_best: bool = True  # also keep <name>best.pt, the epoch with the best validation
    resume: bool = True
    workers: int = 0  # DataLoader processes
    persistent_workers: bool = False  # one loader for the run (needs data taking (epoch_seed, index) indices)
    channels_last: bool = False
    autocast: torch.dtype | None = None  # torch.bfloat16: the forward in bf16 (CPU or CUDA)
    device: str = "cpu"
    extra: dict = field(default_factory=dict)  # more entries for every checkpoint (say the stage number)
    progress: bool = True
    log: Callable[[str], None] = print
    on_epoch: Callable[[list[dict]], None] | None = None  # called with the history after each epoch

    @property
    def last_path(self) -> Path:
        return Path(self.checkpoint_dir) / f"{self.checkpoint_name}last.pt"

    @property
    def best_path(self) -> Path:
        return Path(self.checkpoint_dir) / f"{self.checkpoint_name}best.pt"


@dataclass
class TrainingResult:
    model: nn.Module  # as trained to the last epoch
    last: dict  # the checkpoint state of the last epoch
    best: dict | None  # the best-validation checkpoint (None without keep_best)
    history: list[dict]  # per epoch: epoch, step, train_loss, val, lr
    trained_epochs: int  # epochs this call trained (0: it was finished already)


# ---------------------------------------------------------------- the loop


def _writes_files() -> bool:
    """Whether this process writes checkpoints and calls ``on_epoch``: rank 0 (always, outside torchrun)."""
    return distributed.is_main()


def _epoch_indices(job: TrainingJob, n: int, epoch: int) -> list[int]:
    """The samples of ``epoch`` in training order, for every rank (each takes its share of each batch)."""
    limit = job.max_steps_per_epoch * job.batch_size or None
    order = epoch_order(n, derived_seed(job.seed, job.key, epoch), limit, job.batch_size)
    return distributed.trimmed_for_ranks(order, job.batch_size, distributed.topology())


class _ModelWithLoss(nn.Module):
    """The network and its loss as one module: what DDP wraps, so a loss that calls more than
    ``forward`` (a network's own paper loss) still runs through DDP's gradient hooks."""

    def __init__(self, model: nn.Module, loss: Callable):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.loss(self.model, images, masks)


def _rank_rng(job: TrainingJob, rank: int, epoch: int, saved: dict | None) -> torch.Tensor:
    """The torch RNG state rank ``rank`` continues from: its own from the checkpoint, else a fresh
    per-rank stream (a checkpoint of another number of processes)."""
    states = (saved or {}).get("ranks")
    if states is not None and rank < len(states) and len(states) == distributed.topology().world_size:
        return states[rank]
    generator = torch.Generator().manual_seed(derived_seed(job.seed, f"{job.key}/rank{rank}", epoch))
    return generator.get_state()


def _resumable(job: TrainingJob) -> dict | None:
    """The last checkpoint if it continues this very run; None to start over."""
    path = job.last_path
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path, expected_arch=job.arch)
    except CheckpointError as exc:
        raise StageError(f"{exc}. Delete {path.parent} to train from scratch.") from None
    if state.get("fingerprint") != job.fingerprint:
        job.log(f"{job.name}: {path} was made with other settings, data or code; training starts over")
        return None
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        job.log(f"{job.name}: {path} lacks {', '.join(missing)}; training starts over")
        return None
    return state


def _save(path: Path, state: dict) -> None:
    if _writes_files():
        save_checkpoint(path, state)


class EpochBatches(Sampler):
    """Batch sampler of a persistent loader: the current epoch's batches of ``(epoch_seed, index)``.

    The loop sets the epoch before each pass; a loader iterates its batch sampler afresh at
    every ``iter``, also when its worker processes persist.
    """

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def set_epoch(self, epoch_seed: int, indices: list[int], batch_size: int) -> None:
        pairs = [(epoch_seed, i) for i in indices]
        self.batches = [pairs[k:k + batch_size] for k in range(0, len(pairs), batch_size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _batch_source(job: TrainingJob):
    """(loader or None, its EpochBatches or None): the loader that lives across epochs, when asked for."""
    if not job.persistent_workers:
        return None, None
    sampler = EpochBatches()
    loader = DataLoader(job.train_data, batch_sampler=sampler, num_workers=job.workers,
                        persistent_workers=job.workers > 0, pin_memory=torch.device(job.device).type == "cuda")
    return loader, sampler


def _on_device(tensor: torch.Tensor, job: TrainingJob) -> torch.Tensor:
    tensor = tensor.to(job.device, non_blocking=True)
    if job.channels_last and tensor.dim() == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def run(job: TrainingJob) -> TrainingResult:
    """Train ``job`` (or resume it, or skip it when its checkpoint says it is finished)."""
    topo = distributed.topology()
    if topo.distributed:
        return _run_distributed(job, topo)
    return _run(job, topo)


def _run_distributed(job: TrainingJob, topo: distributed.Topology) -> TrainingResult:
    """``_run`` on every rank of a torchrun world; rank 0 alone logs and shows progress."""
    distributed.rank_batch(job.batch_size, topo.world_size)  # refused before any process waits for another
    distributed.ensure_process_group(job.device)
    if not topo.main:
        job = _replace(job, log=lambda message: None, progress=False, on_epoch=None)
    return _run(job, topo)


def _replace(job: TrainingJob, **changes) -> TrainingJob:
    from dataclasses import replace

    return replace(job, **changes)


def _run(job: TrainingJob, topo: distributed.Topology) -> TrainingResult:
    state = _resumable(job) if job.resume and topo.main else None
    if topo.distributed:
        state = distributed.broadcast_from_main(state)  # every rank continues from rank 0's checkpoint
    torch.manual_seed(derived_seed(job.seed, job.key, -1))  # the same initial weights fresh or resumed
    model = job.make_model(state is None).to(job.device)
    if job.channels_last:
        model = model.to(memory_format=torch.channels_last)  # before the optimizer: its state follows the weights
    if topo.distributed:
        model = distributed.synchronised_batch_norm(model, job.device)  # the global batch's statistics
    optimizer = job.make_optimizer(model)
    epoch, batch_in_epoch, losses, history = 0, 0, [], []
    best_score, best_epoch = -math.inf, 0
    rng_after_loader = None  # a mid-epoch resume restores the RNG once that epoch's loader has drawn its seed
    if state is not None:
        load_weights(model, state, job.last_path)
        optimizer.load_state_dict(state["optimizer"])
        epoch, batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        losses, history = [float(v) for v in state["epoch_losses"]], [dict(h) for h in state["history"]]
        best_score, best_epoch = float(state["best_score"]), int(state["best_epoch"])
        saved_rng = state["rng"]["torch"]
        if topo.distributed:
            saved_rng = _rank_rng(job, topo.rank, epoch, state["rng"])
        if batch_in_epoch:
            rng_after_loader = saved_rng
        else:
            torch.set_rng_state(saved_rng)
        if epoch < job.epochs:
            where = f"epoch {epoch} of {job.epochs}" + (f", step {batch_in_epoch}" if batch_in_epoch else "")
            job.log(f"{job.name}: resuming from {job.last_path} (after {where})")

    elif topo.distributed:
        torch.set_rng_state(_rank_rng(job, topo.rank, -1, None))  # dropout: one stream per rank

    n = len(job.train_data)
    first_epoch = epoch
    rank_batch = distributed.rank_batch(job.batch_size, topo.world_size)
    persistent, epoch_batches = _batch_source(job)
    device_type = torch.device(job.device).type
    net = _ModelWithLoss(model, job.loss)
    if topo.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device = torch.device(job.device)
        # static_graph: the parameters a step uses are the same every step; DDP learns in the first
        # which ones (a head the loss does not use) instead of searching the graph at every step
        net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None,
                                      static_graph=True)

    def snapshot() -> dict:
        rng = {"torch": torch.get_rng_state()}
        if topo.distributed:
            rng["ranks"] = distributed.gather_to_all(rng["torch"])  # every rank calls snapshot at the same step
        return {"arch": job.arch, "config": job.config, **job.extra, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "epoch_losses": list(losses), "rng": rng, "best_score": best_score,
                "best_epoch": best_epoch, "history": history, "fingerprint": job.fingerprint}

    while epoch < job.epochs:
        order = _epoch_indices(job, n, epoch)
        batches = math.ceil(len(order) / job.batch_size)
        if not order:
            raise StageError(f"{job.name}: no training samples")
        epoch_seed = derived_seed(job.seed, job.key, epoch)
        remaining = order[batch_in_epoch * job.batch_size:]
        if topo.distributed:
            remaining = distributed.shard_batches(remaining, job.batch_size, topo)
        model.train()
        bar = tqdm(total=batches, initial=batch_in_epoch, desc=f"{job.name} epoch {epoch + 1}/{job.epochs}",
                   unit="batch", leave=False, disable=not job.progress)
        if persistent is not None:
            epoch_batches.set_epoch(epoch_seed, remaining, rank_batch)
            rng = torch.get_rng_state()
            batch_iter = iter(persistent)  # draws a base seed the first time only: keep the RNG as it was
            torch.set_rng_state(rng if rng_after_loader is None else rng_after_loader)
            rng_after_loader = None
        else:
            job.train_data.reseed(epoch_seed)
            loader = DataLoader(job.train_data, batch_size=rank_batch, sampler=remaining,
                                num_workers=job.workers, drop_last=False)
            batch_iter = iter(loader)  # draws the loader's base seed from the torch RNG
            if rng_after_loader is not None:
                torch.set_rng_state(rng_after_loader)
                rng_after_loader = None
        lr = optimizer.param_groups[0]["lr"]
        for batch in batch_iter:
            lr = job.learning_rate(Step(epoch, batch_in_epoch, batches, job.epochs))
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, masks = _on_device(batch["image"], job), _on_device(batch["mask"], job)
            with torch.autocast(device_type, dtype=job.autocast or torch.bfloat16, enabled=job.autocast is not None):
                loss = net(images, masks)
            optimizer.zero_grad(set_to_none=True)
            if topo.distributed:
                global_n = min(job.batch_size, len(order) - batch_in_epoch * job.batch_size)
                share = len(images) / global_n  # DDP averages over ranks: weight each by its images
                (loss * (share * topo.world_size)).backward()
                optimizer.step()
                reported = loss.detach().float() * share
                torch.distributed.all_reduce(reported)  # the global batch's mean loss, on every rank
                value = reported.item()
            else:
                loss.backward()
                optimizer.step()
                value = loss.item()
            if not math.isfinite(value):
                bar.close()
                raise StageError(f"{job.name} epoch {epoch + 1}, step {batch_in_epoch + 1}: training loss is not "
                                 f"finite ({value}; the previous ones: {losses[-3:]})")
            losses.append(value)
            batch_in_epoch += 1
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            step = epoch * batches + batch_in_epoch
            if job.checkpoint_every_steps and step % job.checkpoint_every_steps == 0 and batch_in_epoch < batches:
                _save(job.last_path, snapshot())
        bar.close()

        score = job.validate(model) if job.validate is not None and topo.main else float("nan")
        if topo.distributed:
            score = distributed.broadcast_from_main(score)  # rank 0 validates; every rank keeps the same history
        improved = math.isnan(score) or score > best_score
        if improved:
            best_score, best_epoch = (score if not math.isnan(score) else best_score), epoch + 1
        history.append({"epoch": epoch + 1, "step": (epoch + 1) * batches, "train_loss": float(np.mean(losses)),
                        "val": score, "lr": lr})
        job.log(f"{job.name} epoch {epoch + 1}/{job.epochs}: train loss {np.mean(losses):.4f}, "
                f"validation {score:.4f}")
        epoch, batch_in_epoch, losses = epoch + 1, 0, []
        state = snapshot()
        if improved and job.keep_best:
            _save(job.best_path, state)
        _save(job.last_path, state)  # last after best: a kill between them loses nothing
        if job.on_epoch is not None and _writes_files():
            job.on_epoch(history)

    if state is None:
        raise StageError(f"{job.name}: nothing trained and no checkpoint")
    best = None
    if job.keep_best and topo.main and job.best_path.is_file():
        chosen = load_checkpoint(job.best_path, expected_arch=job.arch)
        if chosen.get("fingerprint") == job.fingerprint:
            best = chosen
    if topo.distributed:
        best = distributed.broadcast_from_main(best)  # the next stage starts from it on every rank
    return TrainingResult(model=model, last=state, best=best, history=history, trained_epochs=epoch - first_epoch)
