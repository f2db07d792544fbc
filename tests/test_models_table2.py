"""The ExtremeC3Net paper's comparison models (its Table 2): parameter counts pinned and
compared with the paper, forward at any size, and a few Adam steps that lower the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import build_model, count_parameters, get_spec

# name -> (parameters at 2 classes (the paper's setting), at 1 class, allowed relative gap to the paper)
COUNTS = {
    "enet": (355_447, 355_303, 0.01),  # paper 355K: +0.13%
    "espnet": (345_607, 344_936, 0.01),  # paper 345K: +0.18%
    # DS-ESPNet has no published code; our reading (separable dilated branches, strided
    # down-sampling modules unchanged) gives 138.6K for 143K (-3.1%) ...
    "ds_espnet": (138_599, 137_928, 0.035),
    # ... and at half width 38.0K for 63.9K (-40.5%): no uniform halving of ESPNet's widths
    # reaches the paper's figure (see pipeline/models/espnet.py); the gap is pinned, not hidden.
    "ds_espnet_0p5": (38_010, 37_603, 0.41),
    "espnetv2_2p0": (777_830, 777_828, 0.01),  # paper 778K: -0.02%
    "espnetv2_1p5": (458_102, 458_100, 0.01),  # paper 458K: +0.02%
    "contextnet12": (838_274, 838_145, 0.01),  # paper 838K: +0.03%
    # The paper does not say how its 0.25 model is thinned; every width x0.25 gives -3.7%.
    "contextnet12_0p25": (64_706, 64_673, 0.04),
    # Paper 12.4M with ResNet-18's unused ImageNet fc (the paper_params_kwargs): 12,411,204, +0.09%.
    "bisenet": (11_898_204, 11_888_203, 0.01),
}

# Six steps on a 2x32x32 batch: the bar is a clear drop of the loss, not convergence.
# name -> (Adam learning rate, final loss must be below this share of the first)
LEARNING = {
    "enet": (1e-2, 0.9),
    "espnet": (3e-2, 0.97),
    "ds_espnet": (3e-2, 0.97),
    "ds_espnet_0p5": (3e-2, 0.97),
    "espnetv2_2p0": (1e-2, 0.9),
    "espnetv2_1p5": (1e-2, 0.9),
    "contextnet12": (1e-2, 0.9),
    "contextnet12_0p25": (1e-2, 0.9),
    "bisenet": (3e-2, 0.95),
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_count_is_pinned_and_matches_the_paper(name):
    two, one, tolerance = COUNTS[name]
    spec = get_spec(name)
    assert count_parameters(build_model(name, num_classes=2)) == two
    assert count_parameters(build_model(name, num_classes=1)) == one
    paper_count = count_parameters(build_model(name, **spec.paper_params_kwargs))
    assert abs(paper_count - spec.paper_params) / spec.paper_params <= tolerance, (paper_count, spec.paper_params)


@pytest.mark.parametrize("name", sorted(COUNTS))
@pytest.mark.parametrize("size", [(224, 224), (97, 131)])
def test_forward_returns_logits_at_the_input_size(name, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 2, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_a_few_adam_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = build_model(name).train()
    images = torch.randn(2, 3, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    person = (((yy - 18) / 11.0) ** 2 + ((xx - 16) / 7.0) ** 2 < 1).float()
    target = person.expand(2, 1, 32, 32)
    images = images + 1.5 * target  # the "person" is brighter: learnable from the pixels
    learning_rate, max_final_ratio = LEARNING[name]
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(images), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < max_final_ratio * losses[0], losses


def test_unused_imagenet_head_only_changes_the_count():
    with_fc = build_model("bisenet", num_classes=2, keep_imagenet_fc=True)
    assert count_parameters(with_fc) - count_parameters(build_model("bisenet", num_classes=2)) == 513_000
    assert count_parameters(with_fc) == 12_411_204


def test_forward_with_aux_returns_two_heads_at_the_input_size():
    model = build_model("bisenet", num_classes=1).eval()
    with torch.no_grad():
        logits, aux = model.forward_with_aux(torch.randn(1, 3, 96, 80))
    assert logits.shape == (1, 1, 96, 80)
    assert [a.shape for a in aux] == [(1, 1, 96, 80)] * 2
