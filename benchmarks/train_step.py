"""Time one training step (forward, loss, backward, Adam) per architecture, and the losses alone
(the students' Lovász / CE with the boundary term, the teacher's BCE + Dice).

Usage: python benchmarks/train_step.py [--archs extremec3net portraitnet] [--batch 8] [--size 224]
       [--threads 2] [--repeats 5]

Prints the median and min seconds per step over ``--repeats`` runs after one warm-up, so the
quick-profile length (``train.max_steps_per_epoch`` x stages) can be sized for a machine.
Figures on a shared machine are noisy; compare runs made in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def time_it(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    from pipeline.losses import SegmentationLoss, cross_entropy_dice
    from pipeline.models import build_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["extremec3net_stage1", "extremec3net", "portraitnet"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    masks = torch.zeros(args.batch, args.size, args.size)
    masks[:, args.size // 4:, args.size // 5: -args.size // 5] = 1
    print(f"batch {args.batch} x {args.size}px, {torch.get_num_threads()} threads, repeats {args.repeats}")

    for kind in ("lovasz", "ce"):
        loss_fn = SegmentationLoss(kind, 0.5, 7)
        logits = torch.randn(args.batch, 1, args.size, args.size, requires_grad=True)

        def loss_step():
            loss_fn(logits, masks).backward()

        med, low = time_it(loss_step, args.repeats)
        print(f"loss {kind:8s} + boundary (fwd+bwd): median {med:.3f} s, min {low:.3f} s")

    logits = torch.randn(args.batch, 1, args.size, args.size, requires_grad=True)
    med, low = time_it(lambda: cross_entropy_dice(logits, masks, 0.5).backward(), args.repeats)
    print(f"loss teacher (BCE + Dice, fwd+bwd): median {med:.3f} s, min {low:.3f} s")

    for arch in args.archs:
        model = build_model(arch).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = SegmentationLoss("lovasz", 0.5, 7)

        def step():
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        med, low = time_it(step, args.repeats)
        print(f"{arch:22s} train step: median {med:.3f} s, min {low:.3f} s "
              f"({args.batch / med:.1f} images/s)")


if __name__ == "__main__":
    main()
