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

The input shape is fixed to ``(batch, 3, *size)`` at export unless ``export_onnx`` is asked
for a dynamic batch or spatial size (the ``export_onnx`` stage's files, which run outside
this project: ``models/<arch>/model.onnx``). Failures of the exporter become one
``OnnxExportError`` naming the operator or shape it stumbled on. The runtimes are optional
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
import re
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
MIN_OPSET, MAX_OPSET = 18, 23  # the torch.export-based exporter writes opset 18 and up


class OnnxExportError(RuntimeError):
    """A network the ONNX exporter cannot translate; the message names the operator or shape."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def exporter_failure(exc: BaseException) -> str:
    """The one line of an exporter exception that says what failed (its deepest cause's first line).

    The exporter wraps the real reason ("No ONNX function found for aten.linalg_cholesky_ex")
    in two layers of generic advice; a user needs the reason only."""
    causes = [exc]
    while causes[-1].__cause__ is not None and len(causes) < 20:
        causes.append(causes[-1].__cause__)
    for cause in reversed(causes):
        lines = [line.strip() for line in _ANSI.sub("", str(cause)).splitlines() if line.strip()]
        if lines:
            return f"{type(cause).__name__}: {lines[0]}"
    return type(exc).__name__


def export_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (224, 224),
                batch: int = 1, *, opset: int | None = None, dynamic_batch: bool = False,
                dynamic_size: bool = False) -> Path:
    """Write the deploy form of ``model`` (eval mode, left untouched) as ONNX to ``path``.

    ``dynamic_batch`` / ``dynamic_size`` leave the batch / height and width symbolic
    (``torch.export.Dim.AUTO``: the exporter keeps a dimension dynamic where the graph allows
    it). The example batch is then 2, since an example of 1 would pin the batch to 1. Whether
    the graph really computes the same at other sizes is for the caller to check: the exporter
    drops shape guards (a pad taken only when needed, say) that ONNX cannot express.
    Raises OnnxExportError when the exporter fails; ``path`` is then not written.
    """
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    fused = deploy(model, size, jit=False, channels_last=False)
    batch = max(batch, 2) if dynamic_batch else batch
    example = torch.zeros(batch, 3, *size)
    dims = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim.AUTO
    if dynamic_size:
        dims[2] = dims[3] = torch.export.Dim.AUTO
    path = Path(path)
    # The exporter reports its progress on stdout and warns about things that do not apply
    # to an inference graph.
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(fused, (example,), None, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamo=True, verbose=False,
                                        opset_version=opset, dynamic_shapes=({**dims},) if dims else None)
    except Exception as exc:  # the exporter fails with many types; all mean "cannot export"
        raise OnnxExportError(exporter_failure(exc)) from None
    if program is None:
        raise OnnxExportError("the exporter returned no program")
    program.save(str(path), external_data=False)
    if dims:
        name_input_dimensions(path, {0: "batch", 2: "height", 3: "width"})
    return path


def name_input_dimensions(path: str | os.PathLike, names: dict[int, str]) -> None:
    """Give the input's symbolic dimensions readable names, everywhere in the file.

    torch.export names them after its own symbols (``s77``, ``s53``); a user of the file
    outside this project reads ``batch``, ``height``, ``width``. Every occurrence of a symbol
    (outputs and intermediate shapes too) is renamed, so shapes that are equal stay equal."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    renames = {dims[axis].dim_param: name for axis, name in names.items()
               if axis < len(dims) and dims[axis].dim_param}
    if not renames:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
    onnx.save(model, str(path))


def onnx_signature(path: str | os.PathLike) -> dict:
    """Opset, input and output names and shapes of an ONNX file (symbolic dimensions by name)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def shape(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset,
            "inputs": {v.name: shape(v) for v in model.graph.input},
            "outputs": {v.name: shape(v) for v in model.graph.output}}


def onnxruntime_runner(path: str | os.PathLike, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ONNX Runtime CPU session on the file at ``path`` as a tensor -> tensor callable."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise RuntimeError("the onnxruntime runtime needs the onnxruntime package (pip install onnxruntime)") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # a failing run raises; ORT's own error log would repeat it on stderr
    # The model bytes are read now, so the temporary file may go once this returns.
    session = ort.InferenceSession(Path(path).read_bytes(), options, providers=["CPUExecutionProvider"])

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
            return onnxruntime_runner(path, threads)
        return _openvino_runner(path, threads)
