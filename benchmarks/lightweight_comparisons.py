"""Parameters, FLOPs and CPU latency of the ExtremeC3Net paper's lightweight comparison models.

Prints one row per network (ENet, ESPNet, DS-ESPNet, ESPNetV2, ContextNet12, BiSeNet):
parameters with the paper's builder kwargs beside the paper's Table 2 figure and the gap,
GMACs by the ESPNetV2 convention and GFLOPs of all operations at 1x3x224x224
(``pipeline.flops``), and median / min single-image forward time (eval mode, inference
mode, after warm-up). Figures only, no thresholds; on a shared machine compare rows of
one run, not runs.

    .venv/bin/python benchmarks/lightweight_comparisons.py --runs 10 --threads 2
"""

from __future__ import annotations

import argparse
import statistics

import torch

from pipeline.flops import count_flops
from pipeline.latency import interleaved_latencies
from pipeline.models.registry import build_model, count_parameters, get_spec

NETWORKS = ["enet", "espnet", "ds_espnet", "ds_espnet_0p5", "espnetv2_2p0", "espnetv2_1p5", "contextnet12",
            "contextnet12_0p25", "bisenet"]


def latency_ms(model: torch.nn.Module, size: int, runs: int, warmup: int) -> tuple[float, float]:
    """(median, min) milliseconds per batch-1 forward, timed as the complexity stage times."""
    times = interleaved_latencies({"model": model}, size, runs, warmup, progress=False)["model"]
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--only", nargs="*", default=NETWORKS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'network':18} {'params':>11} {'paper':>11} {'gap':>7} {'GMACs':>7} {'GFLOPs':>7} {'median ms':>10} {'min ms':>8}")
    for name in args.only:
        spec = get_spec(name)
        params = count_parameters(build_model(name, **spec.paper_params_kwargs))
        gap = (params - spec.paper_params) / spec.paper_params * 100 if spec.paper_params else float("nan")
        model = build_model(name, num_classes=2).eval()
        flops = count_flops(model, (1, 3, args.size, args.size))
        median, low = latency_ms(model, args.size, args.runs, args.warmup)
        print(f"{name:18} {params:>11,} {spec.paper_params or 0:>11,} {gap:>+6.2f}% {flops.macs_espnetv2 / 1e9:>7.3f} "
              f"{flops.flops_all_ops / 1e9:>7.3f} {median:>10.1f} {low:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
