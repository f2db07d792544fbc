"""CPU latency of ExtremeC3Net vs PortraitNet, training form and deploy form, in one run.

With ``--forms`` the deploy form exported to ONNX can be timed too, run by ONNX Runtime
(``onnxruntime``) or OpenVINO (``openvino``) through ``pipeline.onnx_runtime`` (optional
packages: onnx, onnxscript and the runtime's own), and ExtremeC3Net on its fused C kernels
(``native``, ``pipeline.native``; PortraitNet has no such form).

Every form of every network is called in turn (A, B, C, D, A, B, ...) on one batch-1
input, so a change of load on the machine touches all of them alike; warm-up calls are
discarded; median and minimum over the timed rounds are printed. Also printed:

- the latency ratio ExtremeC3Net / PortraitNet for each form both networks have, and for
  each network's fastest form against the other's fastest (the project's target: 0.5 or
  lower; the paper's: 0.52 on an i7-9700);
- the FLOP bound: a float32 2048x2048 matmul timed in the same run gives the machine's
  achievable GFLOP/s with these threads; a network's bound is its all-ops FLOPs at that
  rate, and "of bound" is bound / measured latency (1.0 = as fast as FLOPs allow).

The numbers are noisy on a shared machine: compare ratios from one run.

    .venv/bin/python benchmarks/latency.py --runs 200 --threads 2
    .venv/bin/python benchmarks/latency.py --runs 200 --forms train,deploy,onnxruntime,openvino
    .venv/bin/python benchmarks/latency.py --runs 200 --forms deploy,openvino,native
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.deploy import deploy, max_abs_difference  # noqa: E402
from pipeline.flops import count_flops  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.native import NativeExtremeC3Net  # noqa: E402

ARCHS = ("extremec3net", "portraitnet")
FORMS = ("train", "deploy", "onnxruntime", "openvino", "native")


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Best float32 GFLOP/s of a size x size matmul (2 * size^3 FLOPs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    with torch.inference_mode():
        torch.mm(a, b)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="timed rounds, at least 100 for a report (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="discarded rounds before timing (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads of torch and of the ONNX runtimes (default: %(default)s)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default: %(default)s)")
    parser.add_argument("--forms", default="train,deploy",
                        help="comma-separated forms to time: train (eval-mode network as trained), "
                             "deploy (pipeline.deploy), onnxruntime / openvino (the deploy form exported to "
                             "ONNX, pipeline.onnx_runtime), native (ExtremeC3Net's fused C kernels, "
                             "pipeline.native) (default: %(default)s)")
    parser.add_argument("--no-jit", action="store_true", help="deploy form without TorchScript (eager, BN folded)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    if not forms or any(f not in FORMS for f in forms):
        print(f"--forms: expected some of {', '.join(FORMS)}, got {args.forms!r}", file=sys.stderr)
        return 2
    size = (args.size, args.size)
    runners, flops = {}, {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = build_model(arch).eval()
        flops[arch] = count_flops(model, (1, 3, *size)).flops_all_ops
        for form in forms:
            if form == "train":
                runners[(arch, form)] = model
            else:
                if form == "native":
                    if arch != "extremec3net":
                        continue  # the fused kernels implement ExtremeC3Net only
                    fn = NativeExtremeC3Net(model, threads=args.threads)
                elif form == "deploy":
                    fn = deploy(model, size, jit=not args.no_jit)
                else:
                    from pipeline.onnx_runtime import onnx_runner  # optional packages: imported only here
                    fn = onnx_runner(model, size, runtime=form, threads=args.threads)
                scale = 1.0
                with torch.no_grad():
                    scale = float(model(torch.randn(1, 3, *size)).abs().max())
                diff = max_abs_difference(model, fn, size)
                print(f"{arch} {form} form: max |train - {form}| = {diff:.2e} (output scale {scale:.2e})")
                runners[(arch, form)] = fn

    gflops_before = matmul_gflops()
    x = torch.randn(1, 3, *size)
    times = {key: [] for key in runners}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in runners.values():
                fn(x)
        for _ in range(args.runs):
            for key, fn in runners.items():
                start = time.perf_counter()
                fn(x)
                times[key].append((time.perf_counter() - start) * 1e3)
    gflops = max(gflops_before, matmul_gflops())

    print(f"\ntorch {torch.__version__}, {args.threads} thread(s), batch 1, {args.size}x{args.size}, "
          f"{args.runs} timed rounds after {args.warmup} warm-up, interleaved")
    print(f"2048x2048 float32 matmul: {gflops:.1f} GFLOP/s")
    print(f"{'network':14s} {'form':11s} {'median ms':>10s} {'min ms':>8s} {'GFLOP':>7s} {'bound ms':>9s} {'of bound':>9s}")
    for (arch, form), values in times.items():
        median = statistics.median(values)
        bound = flops[arch] / 1e9 / gflops * 1e3
        print(f"{arch:14s} {form:11s} {median:10.2f} {min(values):8.2f} {flops[arch] / 1e9:7.3f} {bound:9.2f} "
              f"{bound / median:9.1%}")
    fastest = {}
    for arch in ARCHS:
        medians = {form: statistics.median(v) for (a, form), v in times.items() if a == arch}
        fastest[arch] = min(medians, key=medians.get)
    pairs = [(form, form) for form in forms if (ARCHS[0], form) in times and (ARCHS[1], form) in times]
    if (fastest[ARCHS[0]], fastest[ARCHS[1]]) not in pairs:
        pairs.append((fastest[ARCHS[0]], fastest[ARCHS[1]]))
    for form_a, form_b in pairs:
        a, b = times[(ARCHS[0], form_a)], times[(ARCHS[1], form_b)]
        ratio_med = statistics.median(a) / statistics.median(b)
        ratio_min = min(a) / min(b)
        label = form_a if form_a == form_b else f"{form_a} vs {form_b}, each network's fastest"
        print(f"ratio {ARCHS[0]} / {ARCHS[1]} ({label}): {ratio_med:.2f} by median, {ratio_min:.2f} by min "
              f"(target <= 0.5; FLOP ratio {flops[ARCHS[0]] / flops[ARCHS[1]]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
