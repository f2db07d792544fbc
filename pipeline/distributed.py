"""Training on several processes under ``torchrun`` (DDP), read from the environment torchrun sets.

``torchrun`` starts one process per device and gives each ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; without them (a plain ``python`` or ``portrait-curation`` run) the world is
one process and nothing here changes what the training loop does. The loop
(``pipeline.training``) uses this module to

- join the process group (gloo on CPU, NCCL on CUDA, one GPU per local rank);
- split every global batch of the already-seeded epoch order between the ranks
  (``shard_batches``): step ``k`` of a distributed run trains on exactly the images of step
  ``k`` of a single-process run, so the global batch stays ``batch_size`` and a rank takes
  ``batch_size / world_size`` of it (``rank_batch`` refuses a batch that does not divide);
- let rank 0 alone read the resume checkpoint and hand its content to the others
  (``broadcast_from_main``): every rank continues from the same state, also on nodes that do
  not share the checkpoint folder; and rank 0 alone writes files;
- compute batch-norm statistics over the global batch (``synchronised_batch_norm``): torch's
  SyncBatchNorm on CUDA, ``GlooSyncBatchNorm`` on the CPU, where torch's does not run. Per-rank
  statistics would train another function than one process does (each share normalised by
  itself: measured 1 to 8 mIoU points apart on ExtremeC3Net, docs/scaling.md).

Augmentation needs no per-rank seed: ``SeededAugmentation`` draws sample ``i`` of an epoch from
(epoch seed, ``i``) whichever rank loads it. The torch RNG (dropout) gets one seed per rank.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import StageError

# How long a rank waits for the others at a collective (rank 0 validating, rank 0 reading a
# large checkpoint) before giving up. A rank that dies is noticed by torchrun at once, not by this.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Topology:
    """Where this process stands among the processes training together."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0  # the device index on this machine

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that reads checkpoints, validates, logs and writes every file."""
        return self.rank == 0


def topology(environ: Mapping[str, str] | None = None) -> Topology:
    """This process's place from torchrun's variables (one process when they are not set)."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise StageError(f"WORLD_SIZE={env.get('WORLD_SIZE')!r}, RANK={env.get('RANK')!r}, LOCAL_RANK="
                         f"{env.get('LOCAL_RANK')!r}: not integers (start several processes with torchrun, which "
                         "sets them)") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise StageError(f"WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}: need 0 <= RANK < WORLD_SIZE "
                         "(start several processes with torchrun, which sets them)")
    return Topology(world, rank, local)


def is_main() -> bool:
    """Whether this process writes the stage's outputs (always, outside torchrun)."""
    return topology().main


def local_device(device: str) -> str:
    """``cuda`` means this rank's own GPU (``cuda:LOCAL_RANK``) under torchrun; anything else as it is."""
    topo = topology()
    if topo.distributed and device == "cuda":
        count = torch.cuda.device_count()
        if topo.local_rank >= count:
            raise StageError(f"LOCAL_RANK {topo.local_rank} but this machine has {count} CUDA device(s): start at "
                             "most one process per GPU (torchrun --nproc-per-node)")
        return f"cuda:{topo.local_rank}"
    return device


def rank_batch(batch_size: int, world_size: int | None = None) -> int:
    """Images per process and step: the global ``batch_size`` split evenly, or a clear refusal."""
    world = topology().world_size if world_size is None else world_size
    if batch_size % world:
        raise StageError(f"batch_size {batch_size} does not divide between {world} processes: the global batch stays "
                         f"batch_size and each process takes batch_size / {world}; use a multiple of {world}")
    return batch_size // world


def backend_for(device: str | torch.device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def ensure_process_group(device: str | torch.device) -> Topology:
    """Join the process group torchrun set up (once per process); nothing without torchrun."""
    topo = topology()
    if topo.distributed and not dist.is_initialized():
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend_for(device), timeout=COLLECTIVE_TIMEOUT)
    return topo


def shutdown() -> None:
    """Leave the process group (torch warns at exit about one left open)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str | torch.device) -> Iterator[Topology]:
    """The process group for the length of a stage: joined on entry, left on exit."""
    topo = ensure_process_group(device)
    try:
        yield topo
    finally:
        shutdown()


def shard_batches(order: list[int], batch_size: int, topo: Topology) -> list[int]:
    """This rank's samples, batch after batch: its even share of every global batch of ``order``.

    A full batch splits into ``batch_size / world`` images per rank; a shorter last batch into
    shares that differ by at most one image, first ranks first. Loaded ``batch_size / world`` at
    a time, rank ``r``'s list gives, at step ``k``, its part of global batch ``k``.
    """
    mine: list[int] = []
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        lo, hi = share_bounds(len(batch), topo)
        mine += batch[lo:hi]
    return mine


def share_bounds(n: int, topo: Topology) -> tuple[int, int]:
    """[lo, hi) of this rank's share of a global batch of ``n`` images."""
    base, extra = divmod(n, topo.world_size)
    lo = topo.rank * base + min(topo.rank, extra)
    return lo, lo + base + (topo.rank < extra)


def trimmed_for_ranks(order: list[int], batch_size: int, topo: Topology) -> list[int]:
    """``order`` without a last batch too short to give every rank an image (every rank must take
    each step). Those images come at another place next epoch, as the single image a
    single-process run leaves out; with full batches (``max_steps_per_epoch``) nothing is left out.
    """
    tail = len(order) % batch_size
    if topo.distributed and 0 < tail < topo.world_size and len(order) > tail:
        return order[:-tail]
    return order


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (pickled: a checkpoint read to the CPU stays there)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_all(value: Any) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


class _AllReduceSum(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced sum of the ranks' gradients: what makes
    every rank's loss reach every rank's inputs through shared batch statistics."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``SyncBatchNorm`` that also synchronises on the CPU, where torch's refuses (its statistics
    kernels are CUDA-only): the per-channel sums of the rank's images are all-reduced by a
    differentiable all-reduce (``_AllReduceSum``), so the forward normalises with
    the global batch's mean and variance and the backward sums the statistics' gradients of
    every rank, as torch's SyncBatchNorm does on GPUs. One all-reduce of 2C+1 values per layer
    and pass. The variance is E[x^2] - E[x]^2 (float32; a single all-reduce), which matches the
    two-pass variance of one process to about 1e-6 on normalised activations. In evaluation or
    in one process it is plain batch norm. (Not a SyncBatchNorm subclass: DDP refuses those on the CPU.)"""

    process_group = None  # the whole world

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group or dist.group.WORLD) > 1):
            return super().forward(input)
        x = input.float()  # statistics in float32 also under a bf16 autocast, as plain batch norm
        channels = x.size(1)
        dims = [0, *range(2, x.dim())]
        count = x.new_full((1,), x.numel() // channels)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]),
                                     self.process_group or dist.group.WORLD)
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels:2 * channels] / n - mean * mean).clamp(min=0)
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                images = float(n)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                unbiased = var.detach() * (images / max(images - 1, 1))
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        return out.to(input.dtype)


def synchronised_batch_norm(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model`` with every batch norm layer computing its statistics over the global batch, as one
    process over the whole batch would: torch's SyncBatchNorm on CUDA, ``GlooSyncBatchNorm`` on the CPU.
    The layers keep their parameters, buffers and names, so checkpoints load into the plain network."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _gloo_batch_norm(model)


def _gloo_batch_norm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        synced = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        synced.running_mean, synced.running_var = module.running_mean, module.running_var
        synced.num_batches_tracked = module.num_batches_tracked
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _gloo_batch_norm(child))
    return module
