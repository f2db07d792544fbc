"""The native training ops (pipeline/trainops: functions.py on kernels.c) against PyTorch's modules,
where they apply and where they must not, and ExtremeC3Net trained on them."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import pipeline.trainops.functions as native_training
from pipeline.ckernels import CACHE_ENV
from pipeline.models import build_model
from pipeline.trainops import DISABLE_ENV, batchnorm_prelu, depthwise_conv, descending_order


def _nhwc(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def _away_from_the_kink(n: int, c: int, h: int, w: int, mean: float = 5.0) -> torch.Tensor:
    """Channels whose batch mean is ``mean`` and whose values are >= 1 away from it: with
    beta = 0 the PReLU input is never near 0, where float rounding could flip its branch."""
    rows = n * h * w
    half = torch.rand(rows // 2, c) + 1
    values = torch.cat([mean + half, mean - half])[torch.randperm(rows)]
    return _nhwc(values.reshape(n, h, w, c).permute(0, 3, 1, 2))


def _bn_and_prelu(c: int, shared_slope: bool = False):
    bn, act = nn.BatchNorm2d(c), nn.PReLU(1 if shared_slope else c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        act.weight.uniform_(-0.3, 0.6)
    return bn, act


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    return (a - b).abs().max().item() <= rel * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("c, h, w, with_prelu, shared_slope", [  # the kernels' runs: whole, short, many flushes
    (8, 13, 11, True, False), (18, 28, 28, True, False), (27, 9, 16, False, False), (5, 6, 7, True, True),
    (112, 5, 7, True, False), (24, 33, 31, True, False)])
def test_batchnorm_prelu_matches_pytorch_forward_backward_and_running_statistics(c, h, w, with_prelu, shared_slope):
    torch.manual_seed(c)
    bn, act = _bn_and_prelu(c, shared_slope)
    ref_bn, ref_act = copy.deepcopy(bn), copy.deepcopy(act)
    x = _away_from_the_kink(4, c, h, w)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(4, c, h, w)
    out = batchnorm_prelu(ours, bn, act if with_prelu else None)
    ref = ref_act(ref_bn(theirs)) if with_prelu else ref_bn(theirs)
    (out * grad).sum().backward()
    (ref * grad).sum().backward()

    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _close(out, ref) and _close(ours.grad, theirs.grad)
    assert _close(bn.weight.grad, ref_bn.weight.grad) and _close(bn.bias.grad, ref_bn.bias.grad)
    if with_prelu:
        assert act.weight.grad.shape == act.weight.shape and _close(act.weight.grad, ref_act.weight.grad)
    assert _close(bn.running_mean, ref_bn.running_mean, 1e-5) and _close(bn.running_var, ref_bn.running_var, 1e-5)
    assert bn.num_batches_tracked.item() == ref_bn.num_batches_tracked.item() == 1


def test_batchnorm_with_cumulative_momentum_averages_like_pytorch():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6, momentum=None)
    ref = copy.deepcopy(bn)
    for _ in range(3):
        x = _away_from_the_kink(2, 6, 5, 5, mean=float(torch.randn(()) * 3))
        batchnorm_prelu(x, bn)
        ref(x)
    assert _close(bn.running_mean, ref.running_mean, 1e-5) and _close(bn.running_var, ref.running_var, 1e-5)


@pytest.mark.parametrize("c, kernel, dilation, size, padding", [
    (18, (3, 3), (2, 2), (28, 28), None), (8, (1, 15), (1, 1), (30, 27), None), (16, (15, 1), (1, 1), (20, 33), None),
    (5, (3, 3), (8, 8), (9, 10), None),  # most taps fall outside the map; the forward on the kernels
    (6, (3, 3), (7, 7), (20, 18), None),  # the first dilation whose forward is on the kernels
    (5, (3, 3), (8, 8), (21, 20), (0, 3)),  # the kernels' forward to a smaller map
    (7, (3, 3), (1, 1), (12, 11), (0, 1)),  # a smaller output: the input gradient as a forward conv
    (4, (3, 1), (1, 1), (8, 9), (3, 2))])  # padding beyond the kernel's reach: that gradient on the kernels
def test_depthwise_conv_matches_pytorch_forward_and_backward(c, kernel, dilation, size, padding):
    torch.manual_seed(c)
    if padding is None:  # the map keeps its size, as in ExtremeC3Net
        padding = ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)
    conv = nn.Conv2d(c, c, kernel, padding=padding, dilation=dilation, groups=c, bias=False)
    ref_conv = copy.deepcopy(conv)
    x = _nhwc(torch.randn(3, c, *size))
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = depthwise_conv(ours, conv), ref_conv(theirs)
    assert out.shape == ref.shape and _close(out, ref)
    grad = torch.randn(ref.shape)  # NCHW: the op takes any layout of the incoming gradient
    (out * grad).sum().backward()
    (ref * grad).sum().backward()
    assert _close(ours.grad, theirs.grad) and _close(conv.weight.grad, ref_conv.weight.grad)


def _calls(monkeypatch) -> list[str]:
    """Names of the kernels called from now on."""
    calls: list[str] = []
    library = native_training.load_training_library()

    class Recording:
        def __getattr__(self, name):
            def call(*args):
                calls.append(name)
                return getattr(library, name)(*args)
            return call

    monkeypatch.setattr(native_training, "load_training_library", lambda: Recording())
    return calls


def test_only_training_on_channels_last_float32_takes_the_native_path(monkeypatch):
    calls = _calls(monkeypatch)
    bn, act = _bn_and_prelu(8)
    x = _away_from_the_kink(2, 8, 6, 6)
    batchnorm_prelu(x.contiguous(), bn, act)  # NCHW
    batchnorm_prelu(x.bfloat16(), copy.deepcopy(bn).bfloat16(), copy.deepcopy(act).bfloat16())
    bn.eval()
    batchnorm_prelu(x, bn, act)
    bn.train()
    monkeypatch.setenv(DISABLE_ENV, "0")
    batchnorm_prelu(x, bn, act)
    assert calls == []
    monkeypatch.delenv(DISABLE_ENV)
    batchnorm_prelu(x, bn, act)
    assert calls == ["bn_stats", "bn_apply"]


@pytest.mark.parametrize("dilation, forward_calls", [(2, []), (6, []), (7, ["dw_backward_input"]), (8, ["dw_backward_input"])])
def test_depthwise_forward_is_on_the_kernels_only_where_onednn_is_slow(monkeypatch, dilation, forward_calls):
    conv = nn.Conv2d(4, 4, 3, padding=dilation, dilation=dilation, groups=4, bias=False)
    x = _nhwc(torch.randn(1, 4, 20, 20)).requires_grad_()
    calls = _calls(monkeypatch)
    out = depthwise_conv(x, conv)
    assert calls == forward_calls
    out.sum().backward()  # the input gradient is a forward conv of the same dilation
    assert calls == forward_calls * 2 + ["dw_backward_weight"]


def test_the_nchw_path_is_pytorch_bit_for_bit():
    torch.manual_seed(0)
    model = build_model("extremec3net").train()
    plain = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), _plain_forward(plain, x))


def _plain_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model with every native op turned off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DISABLE_ENV, "0")
        return model(x)


def test_without_a_compiler_training_falls_back_to_pytorch_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    native_training.load_training_library.cache_clear()
    monkeypatch.setattr(native_training, "_unavailable", None)
    try:
        bn, act = _bn_and_prelu(8)
        ref_bn, ref_act = copy.deepcopy(bn), copy.deepcopy(act)
        x = _away_from_the_kink(2, 8, 6, 6)
        with pytest.warns(RuntimeWarning, match="native training kernels unavailable.*set CC"):
            out = batchnorm_prelu(x, bn, act)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once
            batchnorm_prelu(x, bn, act)
        assert torch.equal(out, ref_act(ref_bn(x)))
    finally:
        native_training.load_training_library.cache_clear()


def test_extremec3net_trains_on_the_native_ops_as_on_pytorch_ops(monkeypatch):
    """A few Adam steps in channels_last: the same losses and weights up to float rounding."""
    torch.manual_seed(0)
    images = _nhwc(torch.randn(4, 3, 96, 96))
    masks = torch.zeros(4, 1, 96, 96)
    masks[:, :, 24:, 20:-20] = 1

    def train(native: bool) -> tuple[list[float], nn.Module]:
        monkeypatch.setenv(DISABLE_ENV, "1" if native else "0")
        torch.manual_seed(1)
        model = build_model("extremec3net").train().to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(4):
            loss = nn.functional.binary_cross_entropy_with_logits(model(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, model

    calls = _calls(monkeypatch)
    native_losses, native_model = train(True)
    assert {"bn_backward", "dw_backward_input", "dw_backward_weight"} <= set(calls)
    plain_losses, plain_model = train(False)
    assert native_losses == pytest.approx(plain_losses, rel=1e-3)
    assert native_losses[-1] < native_losses[0]
    for (name, ours), theirs in zip(native_model.state_dict().items(), plain_model.state_dict().values()):
        if ours.is_floating_point():
            assert _close(ours, theirs, 1e-2), name


def test_classifying_before_the_last_upsampling_as_training_does_is_the_same_function():
    torch.manual_seed(0)
    model = build_model("extremec3net").eval()
    x = torch.randn(2, 3, 80, 64)
    with torch.no_grad():
        official = model(x)  # evaluation: the official code's order
        model.classify_before_upsampling = True
        early = model(x)
    assert _close(official, early, 1e-5) and not torch.equal(official, early)


@pytest.mark.parametrize("rows, cols", [(3, 1), (2, 7), (5, 2049), (4, 50176)])
def test_the_radix_sort_orders_each_row_as_torch_sort(rows, cols):
    torch.manual_seed(cols)
    x = torch.randn(rows, cols) * 10.0 ** torch.randint(-30, 30, (rows, cols))  # every exponent byte
    x[:, ::3] = x[:, :1].clone()  # ties
    order = descending_order(x)
    assert order.dtype == torch.int64 and torch.equal(order.sort(1).values, torch.arange(cols).expand(rows, cols))
    assert torch.equal(x.gather(1, order), torch.sort(x, dim=1, descending=True).values)
    for r in range(rows):  # exactly equal values keep their column order
        tied = order[r][x[r, order[r]] == x[r, 0]]
        assert len(tied) >= (cols + 2) // 3 and torch.equal(tied, tied.sort().values)


def test_the_radix_sort_puts_nan_first_and_infinities_at_the_ends(monkeypatch):
    x = torch.tensor([[1.0, float("-inf"), -0.5, float("nan"), float("inf"), 3.0, -7.0]])
    assert descending_order(x).tolist() == [[3, 4, 5, 0, 2, 6, 1]]
    monkeypatch.setenv(DISABLE_ENV, "0")  # off: torch.sort itself
    calls = _calls(monkeypatch)
    assert descending_order(x).tolist() == torch.sort(x, dim=1, descending=True).indices.tolist()
    assert calls == []
