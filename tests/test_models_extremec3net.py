"""ExtremeC3Net: parameter counts pinned to the official code, shapes, stage-1 -> full initialisation."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import build_model, count_parameters, get_spec
from pipeline.models.extremec3net import AdvancedC3, C3Block, ExtremeC3Net, load_stage1_into


@pytest.mark.parametrize("name, expected", [("extremec3net", 37_738), ("extremec3net_stage1", 33_178)])
def test_parameter_count_matches_official_code(name, expected):
    spec = get_spec(name)
    assert spec.paper_params == expected
    assert count_parameters(build_model(name, **spec.paper_params_kwargs)) == expected


def test_default_is_one_class_and_classes_change_only_the_classifier():
    one, two = build_model("extremec3net"), build_model("extremec3net", num_classes=2)
    assert count_parameters(two) - count_parameters(one) == 24  # the 1x1 classifier on 24 channels
    assert one(torch.zeros(1, 3, 32, 32)).shape[1] == 1


def test_c3_block_structure_follows_the_paper():
    block = C3Block(6, 6, dilation=4)
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(c.kernel_size) for c in convs] == [(7, 1), (1, 7), (3, 3), (1, 1)]
    assert [c.groups for c in convs] == [6, 6, 6, 1]
    assert convs[2].dilation == (4, 4)
    plain = [m for m in C3Block(6, 6, dilation=1).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(c.kernel_size) for c in plain] == [(3, 3), (1, 1)]


def test_c3_module_splits_channels_with_the_remainder_on_the_first_branch():
    module = AdvancedC3(56, 56, (2, 4, 8))
    outs = [b.conv[-1].out_channels for b in module.branches]
    assert outs == [20, 18, 18]
    x = torch.randn(1, 56, 9, 9)
    assert module.eval()(x).shape == x.shape
    with pytest.raises(ValueError):
        AdvancedC3(48, 56, residual=True)


@pytest.mark.parametrize("name", ["extremec3net", "extremec3net_stage1"])
@pytest.mark.parametrize("size", [(224, 224), (225, 301), (97, 33)])
def test_logits_have_exactly_the_input_size(name, size):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(600, 800), (800, 600)])
def test_large_portrait_and_landscape_inputs(size):
    model = build_model("extremec3net").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1, *size)


def test_stage1_low_res_output_is_a_quarter_of_the_input():
    model = build_model("extremec3net_stage1").eval()
    with torch.no_grad():
        assert model.forward_low_res(torch.randn(2, 3, 224, 224)).shape == (2, 1, 56, 56)
        assert model.forward_low_res(torch.randn(1, 3, 225, 301)).shape == (1, 1, 57, 76)


def test_full_model_uses_the_fine_branch_for_detail():
    # The fine branch sees the input at 1/2 resolution, so a one-pixel change must move the
    # logits near it, not only through the 1/4-resolution coarse branch.
    torch.manual_seed(0)
    model = build_model("extremec3net").eval()
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., 40, 40] += 5.0
    with torch.no_grad():
        diff = (model(x) - model(y)).abs()[0, 0]
    assert diff[38:43, 38:43].max() > 0
    assert diff[0:8, 0:8].max() < diff[38:43, 38:43].max()


def test_stage1_weights_initialise_the_full_model():
    torch.manual_seed(1)
    stage1 = build_model("extremec3net_stage1")
    with torch.no_grad():
        for p in stage1.parameters():
            p.add_(torch.randn_like(p))
        for name, buf in stage1.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    full = build_model("extremec3net")
    before = {k: v.clone() for k, v in full.state_dict().items()}
    copied = load_stage1_into(full, stage1.state_dict())

    source = stage1.state_dict()
    target = full.state_dict()
    assert copied and all(k.startswith("encoder.") for k in copied)
    assert set(copied) == {k for k in target if k.startswith("encoder.")}
    assert "classifier.weight" not in copied
    for k in copied:
        assert torch.equal(target[k], source[k]), k
    # Everything outside the encoder is untouched.
    for k in target:
        if not k.startswith("encoder."):
            assert torch.equal(target[k], before[k]), k
    # Same encoder => same coarse features.
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(full.eval().encoder(x), stage1.eval().encoder(x))


def test_stage1_load_refuses_a_mismatched_state_dict():
    full = ExtremeC3Net()
    with pytest.raises(ValueError, match="lacks"):
        load_stage1_into(full, {"classifier.weight": torch.zeros(1, 112, 1, 1)})
    other = build_model("extremec3net_stage1", q=3).state_dict()
    other.update({k: v for k, v in build_model("extremec3net_stage1").state_dict().items() if k not in other})
    bad = build_model("extremec3net_stage1").state_dict()
    key = "encoder.level1.conv.weight"
    bad[key] = torch.zeros(5, 3, 3, 3)
    with pytest.raises(ValueError, match="shape"):
        load_stage1_into(full, bad)


def test_gradients_reach_every_parameter():
    model = build_model("extremec3net").train()
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
