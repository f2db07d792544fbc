"""PortraitNet: parameter count pinned to the official code, shapes, auxiliary boundary head."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import build_model, count_parameters, get_spec
from pipeline.models.portraitnet import bilinear_kernel


def test_parameter_count_matches_official_code():
    spec = get_spec("portraitnet")
    assert spec.paper_params == 2_080_904
    assert count_parameters(build_model("portraitnet", **spec.paper_params_kwargs)) == 2_080_904
    # The boundary head is one 3x3 conv from 8 channels to the 2 classes.
    assert count_parameters(build_model("portraitnet", add_edge=False)) == 2_080_904 - 8 * 2 * 9


@pytest.mark.parametrize("size", [(224, 224), (225, 301), (600, 800)])
def test_main_and_boundary_logits_have_the_input_size(size):
    model = build_model("portraitnet").eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits, aux = model.forward_with_aux(x)
        plain = model(x)
    assert logits.shape == plain.shape == (1, 2, *size)
    assert len(aux) == 1 and aux[0].shape == (1, 2, *size)
    assert torch.allclose(logits, plain)


def test_without_edge_head_there_is_no_aux_output():
    model = build_model("portraitnet", add_edge=False).eval()
    with torch.no_grad():
        _, aux = model.forward_with_aux(torch.randn(1, 3, 64, 64))
    assert aux == []


def test_transposed_convs_start_as_bilinear_x2_upsamplers():
    assert torch.allclose(bilinear_kernel(4)[1], torch.tensor([0.1875, 0.5625, 0.5625, 0.1875]))
    model = build_model("portraitnet")
    deconv = model.deconvs[1]  # 32 -> 32 channels
    x = torch.zeros(1, 32, 6, 6)
    x[0, 3] = 2.0
    with torch.no_grad():
        y = deconv(x)
    assert y.shape == (1, 32, 12, 12)
    assert torch.allclose(y[0, 3, 1:-1, 1:-1], torch.full((10, 10), 2.0))  # constant stays constant inside
    assert y[0, [0, 1, 2, 4]].abs().max() == 0  # no mixing across channels


def test_gradients_reach_every_parameter():
    model = build_model("portraitnet").train()
    logits, aux = model.forward_with_aux(torch.randn(2, 3, 64, 64))
    (logits.mean() + aux[0].mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
