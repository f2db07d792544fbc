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


class _OneConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.conv(x))


@pytest.mark.parametrize("dynamic", [False, True])
def test_export_writes_fixed_or_dynamic_shapes_at_the_opset_asked(dynamic, tmp_path):
    missing = _missing("onnx", "onnxscript", "onnxruntime")
    if missing:
        pytest.skip(f"optional packages not installed: {', '.join(missing)}")
    from pipeline.onnx_runtime import export_onnx, onnx_signature, onnxruntime_runner

    model = _OneConv().eval()
    path = export_onnx(model, tmp_path / "m.onnx", (32, 40), opset=20, dynamic_batch=dynamic, dynamic_size=dynamic)
    signature = onnx_signature(path)
    assert signature["opset"] == 20
    batch, channels, height, width = signature["inputs"]["image"]
    assert channels == 3 and list(signature["outputs"]) == ["logits"]
    if dynamic:
        assert (batch, height, width) == ("batch", "height", "width")
        assert signature["outputs"]["logits"][0] == "batch"
        x = torch.randn(3, 3, 24, 56)  # neither the example's batch nor its size
    else:
        assert (batch, height, width) == (1, 32, 40)
        x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(onnxruntime_runner(path, threads=1)(x), expected, atol=1e-5)


def test_an_opset_the_exporter_cannot_write_is_refused_before_exporting(tmp_path):
    from pipeline.onnx_runtime import MIN_OPSET, export_onnx

    with pytest.raises(ValueError, match="opset must be in"):
        export_onnx(_OneConv().eval(), tmp_path / "m.onnx", (8, 8), opset=MIN_OPSET - 1)
    assert not (tmp_path / "m.onnx").exists()


def test_exporter_failure_is_the_deepest_causes_first_line():
    from pipeline.onnx_runtime import exporter_failure

    try:
        try:
            try:
                raise NotImplementedError("\x1b[1mNo ONNX function found for aten.linalg_cholesky_ex\x1b[0m\n"
                                          "more detail")
            except NotImplementedError as inner:
                raise RuntimeError("Failed to convert the exported program.\n\nSee the report.") from inner
        except RuntimeError as middle:
            raise RuntimeError("Failed to export the model with torch.export.") from middle
    except RuntimeError as outer:
        assert exporter_failure(outer) == ("NotImplementedError: No ONNX function found for "
                                          "aten.linalg_cholesky_ex")
    assert exporter_failure(ValueError("")) == "ValueError"
