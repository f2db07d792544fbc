"""Stage ``complexity``: parameters, FLOPs in two conventions and CPU latency per architecture.

For each architecture in ``complexity.architectures``:

- ``params``: trainable and non-trainable parameters (BN running statistics excluded);
- ``flops_all_ops`` (GFLOP) and ``flops_espnetv2`` (GMAC) at ``input_size`` x ``input_size``,
  batch 1, counted by ``pipeline.flops`` (see its docstring for what each convention
  counts: the ESPNetV2 one is the conv multiply-accumulates only, the other every
  arithmetic operation with a MAC as 2 FLOPs). ExtremeC3Net gives 0.128 GMAC and 0.285
  GFLOP, the paper's Table 8 figures (0.128, 0.286);
- ``latency_ms``: median CPU time of one batch-1 forward pass of the deploy form
  (``pipeline.deploy``, outputs equal to the training form) or, with
  ``latency_form: train``, of the plain eval-mode network; ``torch.inference_mode``,
  ``threads`` intra-op threads, ``warmup_runs`` discarded, median over ``latency_runs``.
  The architectures are timed interleaved (A, B, A, B, ...) so that a load change on the
  machine touches all of them alike. ``latency_runtime: torch`` runs them in PyTorch; it may
  instead run the deploy form exported to ONNX in ``onnxruntime`` or ``openvino``
  (``pipeline.onnx_runtime``; optional packages, imported only then; needs
  ``latency_form: deploy``), or ``native``: ExtremeC3Net on its fused C kernels
  (``pipeline.native``, compiled on first use) and every other architecture in the torch
  deploy form. The CSV records the runtime each architecture actually ran in.

Reads no file (the architectures come from the registry). Writes
``<paths.metrics>/complexity.json`` (``{"<arch>": {"params", "flops_all_ops",
"flops_espnetv2", "latency_ms"}}``, read by ``compare``) and ``<paths.metrics>/complexity.csv``
(the same plus minimum latency, the form and runtime timed, threads and runs); ``--metrics``
and ``--table`` write them elsewhere (inside the project) instead.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable, Literal, Sequence

import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator

from pipeline.atomic import write_csv, write_json
from pipeline.deploy import deploy
from pipeline.flops import count_flops
from pipeline.latency import interleaved_latencies
from pipeline.models.registry import Architecture, ModelArgumentError, build_model, check_forward, count_parameters
from pipeline.params import ParamsError, Section, check_output_path, load_params, load_section, path_rules
from pipeline.paths import ProjectPaths
from pipeline.stage import StageError, make_parser, run_main


class ComplexityParams(Section):
    architectures: list[Architecture] = Field(min_length=1)
    input_size: int = Field(ge=32, le=2048)
    latency_form: Literal["deploy", "train"]
    latency_runtime: Literal["torch", "onnxruntime", "openvino", "native"]
    latency_runs: int = Field(ge=1)
    warmup_runs: int = Field(ge=0)
    threads: int = Field(ge=1, le=256)

    @field_validator("architectures")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("architectures are listed more than once")
        return value

    @model_validator(mode="after")
    def _runtime_needs_deploy_form(self) -> "ComplexityParams":
        if self.latency_runtime != "torch" and self.latency_form != "deploy":
            raise ValueError(f"latency_runtime: {self.latency_runtime} runs an inference-only form; "
                             f"set latency_form: deploy (got {self.latency_form})")
        return self

    @model_validator(mode="after")
    def _networks_run_at_input_size(self) -> "ComplexityParams":
        for name in self.architectures:
            try:
                check_forward(name, {}, self.input_size, batch=1, training=False)
            except ModelArgumentError as exc:
                raise ValueError(f"input_size {self.input_size}: {exc}") from None
        return self


def static_complexity(name: str, input_size: int) -> dict:
    """Parameters and both FLOP counts of one architecture (no timing)."""
    model = build_model(name).eval()
    flops = count_flops(model, (1, 3, input_size, input_size))
    return {
        "params": int(count_parameters(model)),
        "flops_all_ops": flops.flops_all_ops / 1e9,
        "flops_espnetv2": flops.macs_espnetv2 / 1e9,
    }


def make_runner(name: str, form: str, input_size: int, runtime: str,
                threads: int) -> tuple[Callable[[torch.Tensor], object], str]:
    """A callable timing ``name`` in ``form``/``runtime``, and the runtime it really uses
    (``native`` falls back to ``torch`` for architectures without fused kernels)."""
    model = build_model(name).eval()
    if runtime == "native":
        from pipeline.native import NativeBuildError, NativeExtremeC3Net
        if not isinstance(model, NativeExtremeC3Net.supported):
            return deploy(model, (input_size, input_size)), "torch"
        try:
            return NativeExtremeC3Net(model, threads=threads), "native"
        except NativeBuildError as err:
            raise StageError(f"complexity.latency_runtime: native: {err}") from err
    if runtime != "torch":
        from pipeline.onnx_runtime import onnx_runner  # optional packages: imported only here
        try:
            return onnx_runner(model, (input_size, input_size), runtime=runtime, threads=threads), runtime
        except (ImportError, RuntimeError) as err:
            raise StageError(f"complexity.latency_runtime: {runtime}: {err}") from err
    if form == "train":
        return model, "torch"
    return deploy(model, (input_size, input_size)), "torch"


def measure(params: ComplexityParams, latency_fn=None, progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """Metrics dict (the JSON) and the table. ``latency_fn(names) -> {name: [ms, ...]}`` replaces timing."""
    static = {name: static_complexity(name, params.input_size) for name in params.architectures}
    runtimes = {name: params.latency_runtime for name in params.architectures}
    if latency_fn is None:
        def latency_fn(names: Sequence[str]) -> dict[str, list[float]]:
            threads = torch.get_num_threads()
            torch.set_num_threads(params.threads)
            try:
                runners = {}
                for n in names:
                    runners[n], runtimes[n] = make_runner(n, params.latency_form, params.input_size,
                                                          params.latency_runtime, params.threads)
                return interleaved_latencies(runners, params.input_size, params.latency_runs, params.warmup_runs,
                                             progress)
            finally:
                torch.set_num_threads(threads)
    times = latency_fn(list(params.architectures))
    metrics, rows = {}, []
    for name in params.architectures:
        median = float(statistics.median(times[name]))
        metrics[name] = {**static[name], "latency_ms": median}
        rows.append({"architecture": name, **metrics[name], "latency_min_ms": float(min(times[name])),
                     "latency_form": params.latency_form, "latency_runtime": runtimes[name],
                     "threads": params.threads,
                     "input_size": params.input_size, "runs": len(times[name])})
    return metrics, pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("complexity", __doc__)
    parser.add_argument("--metrics", help="JSON to write (default: <paths.metrics>/complexity.json)")
    parser.add_argument("--table", help="CSV table to write (default: <paths.metrics>/complexity.csv)")

    def body(args: argparse.Namespace) -> int:
        paths = load_section(ProjectPaths, "paths", args.params)
        params = load_section(ComplexityParams, "complexity", args.params)
        metrics_path = args.metrics or str(paths.metrics_file("complexity.json"))
        table_path = args.table or str(paths.metrics_file("complexity.csv"))
        rules = path_rules(load_params(args.params), args.params)
        for option, value in (("--metrics", args.metrics), ("--table", args.table)):
            try:
                if value is not None:
                    check_output_path(value, rules)
            except ValueError as exc:
                raise ParamsError(f"complexity {option}: {exc}") from None
        metrics, table = measure(params, progress=not args.quiet)
        write_json(metrics_path, metrics)
        write_csv(table_path, table)
        for name, row in metrics.items():
            print(f"{name}: {row['params']:,} params, {row['flops_all_ops']:.3f} GFLOP (all ops), "
                  f"{row['flops_espnetv2']:.3f} GMAC (ESPNetV2), {row['latency_ms']:.2f} ms")
        return 0

    return run_main(body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
