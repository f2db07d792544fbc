"""Deploy forms compute what the training forms compute (eval mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.deploy import deploy, fold_batchnorms, fold_bn_into_conv, max_abs_difference
from model_helpers import calibrated


def test_fold_bn_into_conv_is_exact():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    nn.init.uniform_(bn.weight, -2, 2)
    nn.init.uniform_(bn.bias, -1, 1)
    bn.eval()
    x = torch.randn(2, 4, 7, 5)
    with torch.no_grad():
        assert torch.allclose(fold_bn_into_conv(conv, bn)(x), bn(conv(x)), atol=1e-5)


def test_fold_batchnorms_finds_every_bn_after_a_conv_in_extremec3net():
    model = calibrated("extremec3net")
    total_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorms(model)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # What is left are the BNs after a concatenation or a residual sum (BN + PReLU blocks).
    assert folded > 0 and folded + left == total_bn
    assert left == 3 + 9 + 1  # bn1..bn3, one per C3 module (level2_0, level2, level3_0, 5 x level3, fine), the head


@pytest.mark.parametrize("jit", [False, True])
def test_extremec3net_deploy_form_matches(jit):
    model = calibrated("extremec3net")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = deploy(model, (224, 224), jit=jit)
    assert max_abs_difference(model, fast, (224, 224)) < 1e-4
    # No control flow depends on the input: the traced form handles other sizes too.
    assert max_abs_difference(model, fast, (225, 301)) < 1e-4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched


def test_portraitnet_deploy_form_matches():
    model = calibrated("portraitnet")
    fast = deploy(model, (224, 224))
    with torch.no_grad():
        scale = model(torch.randn(1, 3, 224, 224)).abs().max().item()
    assert max_abs_difference(model, fast, (224, 224)) < 1e-4 * max(1.0, scale)
