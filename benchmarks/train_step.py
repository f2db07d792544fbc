"""Time one training step (forward, loss, backward, Adam) per architecture on today's plain path
and on the fast-path variants (``train.settings``: fused_loss, channels_last, bf16; and
``torch.compile`` of the network, which the training loop does not use),
A/B interleaved in one process; and the losses alone.

In channels_last, ExtremeC3Net's BN (+ PReLU), its depth-wise convs (weight gradient; forward and
input gradient from dilation 7 on) and the fused loss's sort run on ``pipeline.trainops``' kernels;
``fused+cl-native`` is the same variant on PyTorch's ops (and the classifier after the last
upsampling), i.e. the fast path before those kernels.

Usage: python benchmarks/train_step.py [--archs extremec3net portraitnet] [--batch 32] [--size 224]
       [--threads 2] [--repeats 5] [--variants plain fused fused+cl-native fused+cl fused+bf16]
       [--default-allocator]

The process keeps freed memory as the train stage does (``pipeline.allocator``), for every variant;
``--default-allocator`` measures with glibc's defaults (run it apart: the setting is process-wide).

Every round times one step of every variant in turn (the same batch, each variant with its own
network and optimizer), so load from other processes on a shared machine falls on all of them
alike; the speed-ups are ratios of medians within the run. ``bf16`` is measured as asked even
where the CPU has no native bfloat16 (the stage would fall back to float32 there; the line
``native bf16`` says which).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

VARIANTS = {  # name -> (fused loss, channels_last, bf16 autocast, torch.compile of the network)
    "plain": (False, False, False, False),
    "fused": (True, False, False, False),
    "cl": (False, True, False, False),
    "fused+cl": (True, True, False, False),
    "fused+bf16": (True, False, True, False),
    "fused+cl+bf16": (True, True, True, False),
    "fused+compile": (True, False, False, True),
    "fused+cl+compile": (True, True, False, True),
    "fused+cl-native": (True, True, False, False),
}
# fused+cl-native: channels_last on PyTorch's own BN, PReLU and depth-wise conv backward instead of
# pipeline.trainops' kernels, and ExtremeC3Net's classifier after the last upsampling: the fast
# path as it was before those (2026-12-02), to show their speed-up in the same run. It and plain step
# with torch's per-tensor Adam, as the train stage did before pipeline.training.adam (fused).
WITHOUT_NATIVE = {"fused+cl-native"}
PER_TENSOR_ADAM = {"plain", "fused+cl-native"}


def time_it(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def make_step(arch: str, variant: str, images: torch.Tensor, masks: torch.Tensor):
    """One training step of ``arch`` as ``variant`` does it (what pipeline.training.run does per batch)."""
    from pipeline.losses import SegmentationLoss
    from pipeline.models import build_model
    from pipeline.training import adam
    from pipeline.trainops import DISABLE_ENV

    fused, channels_last, bf16, compiled = VARIANTS[variant]
    torch.manual_seed(0)
    model = build_model(arch).train()
    native = variant not in WITHOUT_NATIVE
    if not native and hasattr(model, "classify_before_upsampling"):
        model.classify_before_upsampling = False
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if variant in PER_TENSOR_ADAM:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        optimizer = adam(model.parameters(), 1e-3)  # what the train stage uses
    if compiled:  # the first call (the warm-up) compiles; its time is printed apart
        model = torch.compile(model)
    loss_fn = SegmentationLoss("lovasz", 0.5, 7, fused=fused)

    def step():
        os.environ[DISABLE_ENV] = "1" if native else "0"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    from pipeline.losses import SegmentationLoss, cross_entropy_dice
    from pipeline.training import native_bf16

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["extremec3net_stage1", "extremec3net", "portraitnet"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0 = default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["plain", "fused", "fused+cl-native", "fused+cl", "fused+bf16"],
                        choices=list(VARIANTS))
    parser.add_argument("--skip-losses", action="store_true")
    parser.add_argument("--default-allocator", action="store_true",
                        help="keep glibc's malloc settings (the train stage retains freed memory: pipeline.allocator)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.default_allocator:
        from pipeline.allocator import retain_freed_memory

        retain_freed_memory()
    variants = args.variants
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    masks = torch.zeros(args.batch, args.size, args.size)
    masks[:, args.size // 4:, args.size // 5: -args.size // 5] = 1
    print(f"batch {args.batch} x {args.size}px, {torch.get_num_threads()} threads, repeats {args.repeats}, "
          f"native bf16 {native_bf16('cpu')}, torch {torch.__version__}, "
          f"allocator {'default' if args.default_allocator else 'retaining freed memory'}")
    if native_bf16("cpu"):  # see pipeline.stages.train.autocast_dtype: the stage never trains this way
        hung = [v for v in variants if VARIANTS[v][1] and VARIANTS[v][2]]
        for variant in hung:
            print(f"{variant}: skipped (bf16 with channels_last on this CPU: a step never finished; "
                  "the train stage trains such settings in float32 channels_last)")
        variants = [v for v in variants if v not in hung]

    if not args.skip_losses:
        for kind, fused in (("lovasz", False), ("lovasz", True), ("ce", False)):
            loss_fn = SegmentationLoss(kind, 0.5, 7, fused=fused)
            logits = torch.randn(args.batch, 1, args.size, args.size, requires_grad=True)
            med, low = time_it(lambda: loss_fn(logits, masks).backward(), args.repeats)
            name = kind + (" fused" if fused else "")
            print(f"loss {name:12s} + boundary (fwd+bwd): median {med:.3f} s, min {low:.3f} s")
        logits = torch.randn(args.batch, 1, args.size, args.size, requires_grad=True)
        med, low = time_it(lambda: cross_entropy_dice(logits, masks, 0.5).backward(), args.repeats)
        print(f"loss teacher (BCE + Dice, fwd+bwd): median {med:.3f} s, min {low:.3f} s")

    for arch in args.archs:
        steps = {v: make_step(arch, v, images, masks) for v in variants}
        for variant, step in steps.items():
            start = time.perf_counter()
            step()  # warm-up (and compilation)
            step()
            if VARIANTS[variant][3]:
                print(f"{arch:22s} {variant:16s} compile + 2 steps: {time.perf_counter() - start:.1f} s")
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):  # interleaved: each round times every variant once
            for variant, step in steps.items():
                start = time.perf_counter()
                step()
                times[variant].append(time.perf_counter() - start)
        base = statistics.median(times[variants[0]])
        for variant in variants:
            med = statistics.median(times[variant])
            print(f"{arch:22s} {variant:16s} train step: median {med:.3f} s, min {min(times[variant]):.3f} s "
                  f"({args.batch / med:6.1f} images/s, x{base / med:.2f} vs {variants[0]})")


if __name__ == "__main__":
    main()
