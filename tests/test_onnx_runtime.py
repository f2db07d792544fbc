"""The ONNX export run by ONNX Runtime / OpenVINO computes what the PyTorch network computes."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from model_helpers import calibrated

from pipeline.models import build_model


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_extremec3net_matches_pytorch(runtime):
    missing = _missing(runtime, "onnx", "onnxscript")
    if missing:
        pytest.skip(f"optional runtime packages not installed: {', '.join(missing)}")
    from pipeline.onnx_runtime import onnx_runner

    size = (64, 96)
    model = calibrated("extremec3net")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = onnx_runner(model, size, runtime=runtime, threads=1)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    got = run(x)
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape == (1, 1, *size)
    assert float((got - expected).abs().max()) < 1e-4 * max(1.0, float(expected.abs().max()))
    # A second call gives the same result (no buffer aliasing) and the model is left untouched.
    assert torch.equal(run(x), got)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unknown_runtime_is_refused():
    from pipeline.onnx_runtime import onnx_runner

    with pytest.raises(ValueError, match="unknown runtime"):
        onnx_runner(build_model("extremec3net").eval(), (32, 32), runtime="tensorrt")


def test_complexity_runtime_param_needs_the_deploy_form():
    from pydantic import ValidationError

    from params_helpers import quick_section
    from pipeline.stages.complexity import ComplexityParams

    def params(**changes):
        return ComplexityParams(**quick_section("complexity", **changes))

    assert params(latency_runtime="torch", latency_form="train").latency_runtime == "torch"  # torch times either form
    assert params(latency_runtime="openvino", latency_form="deploy").latency_form == "deploy"
    with pytest.raises(ValidationError, match="latency_form: deploy"):
        params(latency_runtime="onnxruntime", latency_form="train")
