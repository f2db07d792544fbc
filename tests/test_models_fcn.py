"""Dilated FCN-2s (VGG-16 and VGG-19): dilated 3x3 fc6, four skips summed down to stride 2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import adam_losses, bright_rectangle_batch

from pipeline.models.dilated_fcn import OFFICIAL_SKIP_SCALES, DilatedFCN2s
from pipeline.models.registry import build_model, count_parameters

NAMES = ("dilated_fcn2s_vgg16", "dilated_fcn2s_vgg19")


# The paper gives no exact count, only "about a third of FCN-8s" (134.3M parameters).
# At 21 classes and width 1.0 ours has 50,480,745 (VGG-16, 0.376 of FCN-8s) and
# 55,790,441 (VGG-19); the upsampling is parameter-free bilinear interpolation, where the
# Caffe definition keeps 35,280 frozen bilinear deconvolution weights.
@pytest.mark.parametrize("name, expected", [("dilated_fcn2s_vgg16", 50_480_745), ("dilated_fcn2s_vgg19", 55_790_441)])
def test_parameter_counts_at_21_classes(name, expected):
    with torch.device("meta"):
        model = build_model(name, num_classes=21)
    count = count_parameters(model)
    assert count == expected
    assert 0.3 < count / 134_270_278 < 0.42  # "about one third" of FCN-8s


def test_fc6_is_a_dilated_3x3_and_there_are_four_skips():
    model = build_model("dilated_fcn2s_vgg16", width=0.0625)
    assert model.fc6.kernel_size == (3, 3) and model.fc6.dilation == (3, 3)
    assert model.fc7.kernel_size == (1, 1)
    assert [m.in_channels for m in model.score_skips] == [32, 16, 8, 4]  # pool4, pool3, pool2, pool1 at width 1/16
    vgg19 = build_model("dilated_fcn2s_vgg19", width=0.0625)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg19.stages.modules()) == 16


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(224, 224), (100, 130)])
def test_forward_returns_logits_at_input_size(name, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, width=0.0625).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 2, *size)
    assert torch.isfinite(logits).all()


def test_shallowest_skip_is_summed_into_the_output():
    # The pool1 (stride 2) score is the last term summed before the final upsampling, so
    # shifting its bias shifts every output logit by exactly that amount.
    torch.manual_seed(0)
    model = build_model("dilated_fcn2s_vgg16", num_classes=1, width=0.0625, dropout=0.0).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.score_skips[3].bias.add_(1.0)
        after = model(x)
    assert torch.allclose(after - before, torch.ones_like(before), atol=1e-5)
    # Official skip scales shrink the skips' contribution; the network still runs.
    scaled = DilatedFCN2s(1, 16, width=0.0625, skip_scales=OFFICIAL_SKIP_SCALES).eval()
    with torch.no_grad():
        assert scaled(x).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("name", NAMES)
def test_a_few_adam_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, width=0.0625, dropout=0.0)
    image, target = bright_rectangle_batch(96, (24, 72, 32, 64))
    losses = adam_losses(model, lambda m: F.cross_entropy(m(image), target), steps=8, lr=1e-3)
    assert losses[-1] < 0.85 * losses[0], losses


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        DilatedFCN2s(num_classes=0)
    with pytest.raises(ValueError):
        DilatedFCN2s(depth=11)
    with pytest.raises(ValueError):
        DilatedFCN2s(skip_scales=(1.0, 1.0))
