"""C-DLinkNet: ResNet-34 LinkNet, ASPP centre, Smooth module, multi-scale auxiliary loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import adam_losses, bright_rectangle_batch

from pipeline.models.cdlinknet import ASPP_RATES, CDLinkNet, cdlinknet_loss
from pipeline.models.registry import build_model, count_parameters


def test_parameter_count_at_20_classes():
    # The paper gives no parameter count. Ours, at 20 classes (LIP) and width 1.0, has
    # 26,426,532: the ResNet-34 encoder's 21,284,672 (torchvision's ResNet-34 without its
    # classifier has the same), the ASPP centre and the LinkNet decoder with its heads.
    with torch.device("meta"):
        model = build_model("c_dlinknet", num_classes=20)
        encoder_only = count_parameters(model.encoder)
        two_classes = count_parameters(build_model("c_dlinknet", num_classes=2))
    assert count_parameters(model) == 26_426_532
    assert encoder_only == 21_284_672
    assert two_classes == 26_412_042


def test_aspp_uses_rates_12_24_36():
    model = build_model("c_dlinknet", width=0.125)
    rates = sorted(branch[0].dilation[0] for branch in model.center.branches if branch[0].kernel_size == (3, 3))
    assert tuple(rates) == ASPP_RATES == (12, 24, 36)


@pytest.mark.parametrize("size", [(224, 224), (97, 61)])
def test_forward_and_aux_outputs_at_input_size(size):
    torch.manual_seed(0)
    model = build_model("c_dlinknet", num_classes=2, width=0.125).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = model(x)
        refined, aux = model.forward_with_aux(x)
    assert logits.shape == (1, 2, *size)
    assert torch.equal(logits, refined)
    assert len(aux) == 4 and all(a.shape == (1, 2, *size) for a in aux)
    assert torch.isfinite(logits).all()


def test_smooth_module_sees_every_decoder_level():
    # The Smooth module's input is the concatenation of all four decoder outputs, brought
    # to the stride-2 resolution.
    model = build_model("c_dlinknet", num_classes=2, width=0.125).eval()
    assert model.smooth[0].in_channels == sum(d.expand[0].out_channels for d in model.decoders)
    captured = {}
    original = model.smooth.forward

    def spy(fused):
        captured["fused"] = fused
        return original(fused)

    model.smooth.forward = spy
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert captured["fused"].shape[1] == model.smooth[0].in_channels
    assert captured["fused"].shape[-2:] == (32, 32)  # the stride-2 map


def test_loss_is_refined_plus_half_the_decoder_losses():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    aux = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0, 0] = 255  # ignored pixel
    expected = F.cross_entropy(logits, target, ignore_index=255) + 0.5 * sum(
        F.cross_entropy(a, target, ignore_index=255) for a in aux)
    assert torch.isclose(cdlinknet_loss(logits, aux, target), expected)
    # One foreground logit: binary cross-entropy on the valid pixels.
    single = torch.randn(1, 1, 4, 4)
    mask = torch.randint(0, 2, (1, 4, 4))
    assert torch.isclose(cdlinknet_loss(single, [], mask), F.binary_cross_entropy_with_logits(single[:, 0], mask.float()))
    with pytest.raises(ValueError):
        cdlinknet_loss(logits, aux, target[:, :4])


def test_a_few_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model("c_dlinknet", num_classes=2, width=0.125)
    image, target = bright_rectangle_batch(96, (24, 72, 32, 64))
    losses = adam_losses(model, lambda m: cdlinknet_loss(*m.forward_with_aux(image), target), steps=8, lr=1e-3)
    assert losses[-1] < 0.8 * losses[0], losses


def test_trains_with_one_image_per_batch():
    model = build_model("c_dlinknet", num_classes=2, width=0.125)
    loss = cdlinknet_loss(*model.forward_with_aux(torch.randn(1, 3, 64, 64)), torch.zeros(1, 64, 64, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        CDLinkNet(num_classes=0)
    with pytest.raises(ValueError):
        CDLinkNet(encoder_depth=50)


def test_paper_loss_hook_takes_float_masks():
    from pipeline.models.cdlinknet import paper_loss

    torch.manual_seed(0)
    for classes in (1, 2):
        model = build_model("c_dlinknet", num_classes=classes, width=0.125)
        masks = torch.zeros(2, 64, 64)
        masks[:, 16:48, 16:48] = 1.0
        loss = paper_loss(model, torch.randn(2, 3, 64, 64), masks)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
