"""DeconvNet: VGG-16 + fc6/fc7 + mirrored deconvolution network with switch unpooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import adam_losses, bright_rectangle_batch
from torch import nn

from pipeline.models.deconvnet import DeconvNet
from pipeline.models.registry import build_model, count_parameters, get_spec


def test_parameter_count_at_21_classes_matches_the_paper():
    # The paper gives "252M" parameters for its 21-class PASCAL VOC model. Ours, at width 1.0
    # and 21 classes, has 251,805,653 (0.08% under; the paper rounds): conv/deconv weights and
    # biases plus batch-norm scales and shifts (running statistics are buffers). Built on the
    # meta device, so no memory is allocated.
    spec = get_spec("deconvnet")
    with torch.device("meta"):
        model = build_model("deconvnet", **spec.paper_params_kwargs)
    count = count_parameters(model)
    assert count == 251_805_653
    assert abs(count - spec.paper_params) / spec.paper_params < 0.005


def test_every_convolution_is_batch_normalised_and_unpooling_uses_switches():
    model = build_model("deconvnet", width=0.0625)
    modules = list(model.modules())
    for index, module in enumerate(modules):
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module is not model.score:
            assert isinstance(modules[index + 1], nn.BatchNorm2d), module
    assert model.pool.return_indices
    assert isinstance(model.unpool, nn.MaxUnpool2d)
    assert model.fc6[0].kernel_size == (7, 7) and model.deconv_fc6[0].kernel_size == (7, 7)


@pytest.mark.parametrize("size", [(224, 224), (100, 130), (257, 300)])
def test_forward_returns_logits_at_input_size(size):
    torch.manual_seed(0)
    model = build_model("deconvnet", num_classes=2, width=0.0625).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 2, *size)
    assert torch.isfinite(logits).all()


def test_unpooling_puts_activations_back_where_the_maxima_were():
    # One stage of the mechanism, checked directly: what the decoder receives after
    # unpooling is non-zero only at the positions the matching pooling selected.
    model = build_model("deconvnet", width=0.0625)
    x = torch.randn(1, 1, 8, 8)
    pooled, indices = model.pool(x)
    restored = model.unpool(pooled, indices, output_size=x.shape[-2:])
    assert torch.equal(restored != 0, F.max_unpool2d(torch.ones_like(pooled), indices, 2, 2) != 0)
    assert torch.equal(restored.amax(dim=(-1, -2)), x.amax(dim=(-1, -2)))


def test_too_small_input_and_single_image_training_batch_are_refused():
    model = build_model("deconvnet", width=0.0625).eval()
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.randn(1, 3, 16, 64))
    model.train()
    with pytest.raises(ValueError, match="at least 2 images"):
        model(torch.randn(1, 3, 64, 64))


def test_a_few_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model("deconvnet", num_classes=2, width=0.0625)
    image, target = bright_rectangle_batch(224, (56, 168, 72, 152))
    losses = adam_losses(model, lambda m: F.cross_entropy(m(image), target), steps=6, lr=1e-2)
    assert losses[-1] < 0.85 * losses[0], losses


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        DeconvNet(num_classes=0)
    with pytest.raises(ValueError):
        DeconvNet(width=-1.0)
