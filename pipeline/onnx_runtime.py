"""A network exported once to ONNX and run by ONNX Runtime or OpenVINO (CPU, batch inference only).

``onnx_runner(model, size, runtime=...)`` exports the deploy form of ``model``
(``pipeline.deploy.deploy(..., jit=False, channels_last=False)``: BN folded, model-specific
rewrites; same outputs) with ``torch.onnx.export`` (the torch.export-based exporter, which
needs ``onnx`` and ``onnxscript``) to a temporary file, loads it into the chosen runtime and
returns a callable ``torch.Tensor -> torch.Tensor`` (NCHW float32 in, logits out).

- ``onnxruntime``: an ``InferenceSession`` on the CPU execution provider, ``threads``
  intra-op threads, sequential execution, all graph optimisations.
- ``openvino``: the model compiled for ``CPU`` with a latency hint, one stream,
  ``threads`` inference threads and float32 precision (no bf16/f16 down-casting).

The input shape is fixed to ``(batch, 3, *size)`` at export. The runtimes are optional
dependencies, imported only here and only when a runner is built. Measured on a 2-core
Xeon (benchmarks/latency.py), OpenVINO runs both ExtremeC3Net and PortraitNet faster than
the TorchScript deploy form and narrows their latency ratio; ONNX Runtime runs PortraitNet
about as fast as TorchScript but ExtremeC3Net about 2x slower (its per-channel PRelu
kernel alone costs about half of ExtremeC3Net's time).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pipeline.deploy import deploy

RUNTIMES = ("onnxruntime", "openvino")
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (224, 224),
                batch: int = 1) -> Path:
    """Write the deploy form of ``model`` (eval mode, left untouched) as ONNX to ``path``."""
    fused = deploy(model, size, jit=False, channels_last=False)
    example = torch.zeros(batch, 3, *size)
    path = Path(path)
    # The exporter reports its progress on stdout and warns about things that do not apply
    # to a fixed-shape inference graph.
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(fused, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamo=True, external_data=False, verbose=False)
    return path


def _onnxruntime_runner(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise RuntimeError("the onnxruntime runtime needs the onnxruntime package (pip install onnxruntime)") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The model bytes are read now, so the temporary file may go once this returns.
    session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to(torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])

    return run


def _openvino_runner(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import openvino as ov
    except ImportError as err:
        raise RuntimeError("the openvino runtime needs the openvino package (pip install openvino)") from err
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to(torch.float32).contiguous().numpy()
        # The request reuses its output buffer on the next call: copy.
        return torch.from_numpy(request.infer({0: array})[0].copy())

    return run


def onnx_runner(model: nn.Module, size: tuple[int, int] = (224, 224), *, runtime: str = "onnxruntime",
                threads: int = 2, batch: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """Export ``model`` once and return a callable running it in ``runtime`` (see the module docstring)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    with tempfile.TemporaryDirectory(prefix="onnx_runtime_") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", size, batch)
        if runtime == "onnxruntime":
            return _onnxruntime_runner(path, threads)
        return _openvino_runner(path, threads)
