"""Stage ``export_onnx``: every trained network as an ONNX file that runs outside this project.

Why: a user should not need this project, PyTorch or its registry to run a model; ONNX
Runtime (or OpenVINO, TensorRT, a browser) reads ``model.onnx`` alone. The file holds the
deploy form (``pipeline.deploy``: BN folded, same outputs) of ``models/<arch>/model.pt``,
exported by torch's ONNX exporter at opset ``export_onnx.opset``.

Input ``image``: float32 (N, 3, H, W), RGB scaled to 0..1, then normalised with the ImageNet
mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225); the network was trained at
``input_size`` x ``input_size`` (resize to it, as ``evaluate`` does). Output ``logits``:
(N, C, H, W); C = 1: person where the logit > 0; C = 2: person where logit[1] > logit[0].

The batch is always dynamic. With ``dynamic_size`` the height and width are too, where the
network's graph allows it: the exporter drops shape conditions ONNX cannot hold (PortraitNet
pads to a multiple of 32 only when needed), so a dynamic file is kept only when it matches
PyTorch at every size in ``check_sizes``; otherwise the file is exported again at the
training size, and the metrics say why. Every file is checked against the PyTorch network
in ONNX Runtime on seeded random inputs of batch 1 and ``check_batch``: the largest
|logit difference| must be at most ``atol + rtol * max|logit|``, or the stage fails and
``model.onnx`` is not written. A network the exporter cannot translate fails the stage with
the operator it stumbled on.

Reads ``<paths.models>/<arch>/model.pt``. Writes ``<paths.models>/<arch>/model.onnx`` and
``<paths.metrics>/export/<arch>.json`` (``max_abs_difference``, the checks, the input and
output names and shapes, whether the size is dynamic).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field
from torch import nn
from tqdm import tqdm

from pipeline.atomic import atomic_path, write_json
from pipeline.inference import TrainedModel, archs_to_run, load_trained_model, trained_model_path
from pipeline.onnx_runtime import (INPUT_NAME, MAX_OPSET, MIN_OPSET, OUTPUT_NAME, OnnxExportError, export_onnx,
                                   onnx_signature, onnxruntime_runner)
from pipeline.params import Section, load_params, load_section
from pipeline.paths import ProjectPaths
from pipeline.stage import StageError, make_parser, run_main

Side = Annotated[int, Field(ge=16, le=4096)]


class ExportOnnxParams(Section):
    opset: int = Field(ge=MIN_OPSET, le=MAX_OPSET)
    dynamic_size: bool  # try a dynamic height and width (kept only where every check passes)
    check_sizes: list[tuple[Side, Side]] = Field(min_length=1)  # (height, width) besides the training size
    check_batch: int = Field(ge=2, le=64)  # the second batch size checked (the first is 1)
    atol: float = Field(gt=0, allow_inf_nan=False)
    rtol: float = Field(ge=0, allow_inf_nan=False)
    seed: int
    threads: int = Field(ge=1, le=256)


class CheckFailed(Exception):
    """An exported file that does not compute what the PyTorch network computes."""


# ---------------------------------------------------------------- pure core


def compare_outputs(model: nn.Module, run, shapes: list[tuple[int, int, int]], *, atol: float, rtol: float,
                    seed: int) -> list[dict]:
    """One record per (batch, height, width): the largest |ONNX - PyTorch| and whether it passes.

    A shape PyTorch itself cannot run is recorded as such (``torch_error``) and not held
    against the file; a run the file cannot do or a wrong output shape fails."""
    generator = torch.Generator().manual_seed(seed)
    checks = []
    for batch, height, width in shapes:
        x = torch.randn(batch, 3, height, width, generator=generator)
        record = {"batch": batch, "height": height, "width": width}
        try:
            with torch.inference_mode():
                expected = model(x).float()
        except Exception as exc:  # the network does not take this size: no claim to check
            checks.append({**record, "torch_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            continue
        try:
            got = run(x).detach().float()
        except Exception as exc:
            checks.append({**record, "passed": False,
                           "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
            continue
        if tuple(got.shape) != tuple(expected.shape):
            checks.append({**record, "passed": False,
                           "error": f"output shape {tuple(got.shape)}, PyTorch's {tuple(expected.shape)}"})
            continue
        difference = float((got - expected).abs().max())
        largest = float(expected.abs().max())
        tolerance = atol + rtol * largest
        checks.append({**record, "max_abs_difference": difference, "max_abs_logit": largest,
                       "tolerance": tolerance, "passed": difference <= tolerance})
    return checks


def _failure(checks: list[dict]) -> str:
    bad = next(c for c in checks if c.get("passed") is False)
    shape = f"{bad['batch']}x3x{bad['height']}x{bad['width']}"
    if "error" in bad:
        return f"at {shape}: {bad['error']}"
    return (f"at {shape}: max |logit difference| {bad['max_abs_difference']:.3g} > tolerance "
            f"{bad['tolerance']:.3g} (max |logit| {bad['max_abs_logit']:.3g})")


def check_shapes(input_size: int, params: ExportOnnxParams, dynamic_size: bool) -> list[tuple[int, int, int]]:
    sizes = [(input_size, input_size)]
    if dynamic_size:
        sizes += [tuple(s) for s in params.check_sizes if tuple(s) not in sizes]
    return [(batch, h, w) for h, w in sizes for batch in (1, params.check_batch)]


def export_checked(trained: TrainedModel, target: Path, params: ExportOnnxParams) -> dict:
    """Export ``trained`` to ``target`` (atomically) and check it; the metrics record.

    Tries a dynamic height and width first when ``params.dynamic_size``, then the training
    size; raises StageError when the exporter fails or no file matches PyTorch."""
    model, size = trained.model.eval(), trained.input_size
    attempts = [True, False] if params.dynamic_size else [False]
    notes = []
    for dynamic_size in attempts:
        shapes = check_shapes(size, params, dynamic_size)
        try:
            with atomic_path(target) as tmp:
                try:
                    export_onnx(model, tmp, (size, size), batch=params.check_batch, opset=params.opset,
                                dynamic_batch=True, dynamic_size=dynamic_size)
                except OnnxExportError as exc:
                    raise StageError(f"{trained.arch}: cannot be exported to ONNX (opset {params.opset}): {exc}") \
                        from None
                checks = compare_outputs(model, onnxruntime_runner(tmp, params.threads), shapes,
                                         atol=params.atol, rtol=params.rtol, seed=params.seed)
                if any(c.get("passed") is False for c in checks):
                    raise CheckFailed(_failure(checks))
                signature = onnx_signature(tmp)
                onnx_bytes = tmp.stat().st_size
        except CheckFailed as exc:
            what = "dynamic height and width" if dynamic_size else f"fixed size {size}x{size}"
            notes.append(f"{what}: {exc}")
            continue
        compared = [c for c in checks if "max_abs_difference" in c]
        return {
            "arch": trained.arch,
            "opset": signature["opset"],
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "input_shape": signature["inputs"][INPUT_NAME],
            "output_shape": signature["outputs"][OUTPUT_NAME],
            "dynamic_batch": True,
            "dynamic_size": dynamic_size,
            "input_size": size,
            "normalisation": {"scale": "1/255", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "max_abs_difference": max(c["max_abs_difference"] for c in compared),
            "max_relative_difference": max(c["max_abs_difference"] / max(c["max_abs_logit"], 1e-12)
                                           for c in compared),
            "atol": params.atol,
            "rtol": params.rtol,
            "checks": checks,
            "fallbacks": notes,
            "onnx_bytes": onnx_bytes,
        }
    raise StageError(f"{trained.arch}: the ONNX file does not compute what the PyTorch network computes: "
                     + "; ".join(notes))


# ---------------------------------------------------------------- stage


def export_arch(arch: str, params: ExportOnnxParams, paths: ProjectPaths) -> dict:
    trained = load_trained_model(trained_model_path(paths.models, arch), arch)
    metrics = export_checked(trained, paths.model_dir(arch) / "model.onnx", params)
    write_json(paths.metrics_file("export", f"{arch}.json"), metrics)
    shape = "x".join(str(d) for d in metrics["input_shape"])
    print(f"export_onnx {arch}: {paths.model_dir(arch) / 'model.onnx'} ({shape}, opset {metrics['opset']}), "
          f"max |logit difference| {metrics['max_abs_difference']:.2e} over {len(metrics['checks'])} checks"
          + (f"; {'; '.join(metrics['fallbacks'])}" if metrics["fallbacks"] else ""))
    return metrics


def _body(args: argparse.Namespace) -> int:
    paths = load_section(ProjectPaths, "paths", args.params)
    params = load_section(ExportOnnxParams, "export_onnx", args.params)
    archs = archs_to_run(args.arch, (load_params(args.params).get("train") or {}).get("archs"))
    torch.set_num_threads(params.threads)
    for arch in tqdm(archs, desc="export_onnx", unit="model", disable=args.quiet or len(archs) == 1):
        export_arch(arch, params, paths)
    return 0


def main(argv=None) -> int:
    parser = make_parser("export-onnx", __doc__)
    parser.add_argument("--arch", help="export this architecture only (default: every one in train.archs)")
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
