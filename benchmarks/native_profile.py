"""Where ExtremeC3Net's time goes on the fused C kernels (``pipeline.native``): per op kind.

Runs the network ``--runs`` times with a timestamp after every op (one barrier each, as in
normal runs), then prints the median time of each op summed by kind and shape, largest
first, with the total and the plain end-to-end median for comparison.

    .venv/bin/python benchmarks/native_profile.py --runs 100 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.latency import interleaved_latencies  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.native import NativeExtremeC3Net  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="profiled runs (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="kernel threads (default: %(default)s)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default: %(default)s)")
    parser.add_argument("--top", type=int, default=20, help="rows to print (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    native = NativeExtremeC3Net(build_model("extremec3net").eval(), threads=args.threads)
    ops = pd.DataFrame(native.profile(args.size, args.size, args.runs))
    plain = interleaved_latencies({"native": native}, args.size, args.runs, warmup=10, progress=False)["native"]
    table = (ops.groupby(["op", "detail", "in", "out"]).ms.agg(["sum", "count"])
             .sort_values("sum", ascending=False).rename(columns={"sum": "ms", "count": "ops"}))
    table["share"] = table.ms / table.ms.sum()
    pd.set_option("display.width", 160)
    print(f"{len(ops)} ops, {args.threads} thread(s), {args.size}x{args.size}, median of {args.runs} runs")
    print(table.head(args.top).to_string(formatters={"ms": "{:.3f}".format, "share": "{:.1%}".format}))
    print(f"sum of op medians: {ops.ms.sum():.2f} ms; end-to-end median without timestamps: "
          f"{statistics.median(plain):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
