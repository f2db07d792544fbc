"""Parameters and CPU latency of the seg-nets, DeconvNet, dilated FCN-2s and C-DLinkNet.

Prints one row per network: parameters at the paper's class count (or 2), beside the
paper's figure where it gives one, and the median / min single-image forward time at the
registry's input size (eval mode, inference mode, after warm-up). Figures only, no
thresholds: these are heavy comparison networks, not deployment candidates.

    .venv/bin/python benchmarks/other_architectures.py --runs 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics

import torch

from pipeline.latency import interleaved_latencies
from pipeline.models.registry import build_model, count_parameters, get_spec

# name -> (builder kwargs for the parameter count, label of the paper's figure)
NETWORKS = {
    "simple_seg_net": ({"num_classes": 1}, "not available"),
    "alex_seg_net": ({"num_classes": 1}, "not available"),
    "vgg_seg_net": ({"num_classes": 1}, "not available"),
    "deconvnet": ({"num_classes": 21}, "252M"),
    "dilated_fcn2s_vgg16": ({"num_classes": 21}, "~1/3 of FCN-8s (134M)"),
    "dilated_fcn2s_vgg19": ({"num_classes": 21}, "~1/3 of FCN-8s (134M)"),
    "c_dlinknet": ({"num_classes": 20}, "not given"),
}


def time_forward(model: torch.nn.Module, size: int, runs: int, warmup: int) -> tuple[float, float]:
    """(median, min) seconds per batch-1 forward, timed as the complexity stage times."""
    times = interleaved_latencies({"model": model}, size, runs, warmup, progress=False)["model"]
    return statistics.median(times) / 1000, min(times) / 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-latency", action="store_true", help="only count parameters (meta device)")
    parser.add_argument("--only", nargs="*", default=None, help="subset of network names")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.only or list(NETWORKS)
    print(f"{'network':22s} {'params':>13s}  {'paper':24s} {'input':>5s} {'median ms':>10s} {'min ms':>8s}")
    for name in names:
        kwargs, paper = NETWORKS[name]
        with torch.device("meta"):
            params = count_parameters(build_model(name, **kwargs))
        size = get_spec(name).input_size
        median_ms = min_ms = float("nan")
        if not args.no_latency:
            torch.manual_seed(0)
            model = build_model(name, num_classes=kwargs["num_classes"]).eval()
            median, fastest = time_forward(model, size, args.runs, args.warmup)
            median_ms, min_ms = 1000 * median, 1000 * fastest
            del model
        print(f"{name:22s} {params:13,d}  {paper:24s} {size:5d} {median_ms:10.1f} {min_ms:8.1f}", flush=True)


if __name__ == "__main__":
    main()
