"""Inference ("deploy") forms of the segmentation networks: same outputs, less CPU time.

Tiny networks such as ExtremeC3Net are slow on CPU for reasons FLOPs do not show: a few
hundred small operators, each paying dispatch and memory-layout costs larger than its
arithmetic (a depth-wise conv on 18 channels at 56x56 is 0.03 MMAC). ``deploy(model)``
removes what can be removed without changing what the network computes:

1. **BN folding** (every network): a BatchNorm that directly follows a convolution is
   folded into that convolution's weights and bias (exact in real arithmetic).
2. **Model-specific rewrites** (``model.fuse_for_inference()`` when the network has it):
   ExtremeC3Net moves its last 1x1 classifier before the final bilinear upsampling
   (both are linear and per-pixel/per-channel, so they commute; the upsampling then
   touches 1 channel instead of 24).
3. **channels_last** memory layout, which oneDNN's depth-wise and 1x1 kernels run on
   without reordering the activations on every call.
4. **TorchScript trace + freeze**: constants folded, Python overhead gone. Optionally
   ``optimize_for_inference`` (oneDNN pre-packed weights, blocked layouts); off by default:
   measured here it made both networks slower at batch 1 (it inserts layout conversions
   around every op the tiny tensors cannot amortise), and it is deprecated in torch 2.13.

The result is an inference-only callable (no training, fixed to eval-mode statistics).
It is checked against the training form in eval mode (``max_abs_difference``).

These rewrites leave ExtremeC3Net's operator count, and so its speed, mostly where it was;
``pipeline.native`` runs it on fused C kernels instead.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch
from torch import nn


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel with which the eval-mode ``bn`` is ``x * scale + shift``."""
    if bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics")
    weight = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    bias = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_var)
    scale = weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bias - bn.running_mean * scale


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv computing ``bn(conv(x))`` with ``bn``'s running statistics (eval mode)."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError("fold_bn_into_conv needs a Conv2d followed by a BatchNorm2d")
    scale, shift = batchnorm_affine(bn)
    fused = copy.deepcopy(conv)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        fused.weight.copy_(conv.weight.detach() * scale.reshape(-1, 1, 1, 1))
        fused.bias = nn.Parameter(bias * scale + shift)
    return fused


def fold_batchnorms(module: nn.Module) -> int:
    """Fold, in place, every BN directly after a conv inside ``nn.Sequential``s or named pairs.

    Pairs outside a Sequential are found through ``module._bn_after_conv`` (a list of
    (conv attribute, bn attribute) names) on any submodule. Returns how many were folded.
    """
    folded = 0
    for sub in list(module.modules()):
        if isinstance(sub, nn.Sequential):
            names = list(sub._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = sub._modules[first], sub._modules[second]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    sub._modules[first] = fold_bn_into_conv(conv, bn)
                    sub._modules[second] = nn.Identity()
                    folded += 1
        for conv_name, bn_name in getattr(sub, "_bn_after_conv", ()):
            conv, bn = getattr(sub, conv_name), getattr(sub, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                setattr(sub, conv_name, fold_bn_into_conv(conv, bn))
                setattr(sub, bn_name, nn.Identity())
                folded += 1
    return folded


def deploy(model: nn.Module, example_size: tuple[int, int] = (224, 224), *, jit: bool = True,
           optimize: bool = False, channels_last: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return an inference-only equivalent of ``model`` (which is left untouched).

    ``jit`` traces and freezes it on a 1x3xHxW example. The traced graph recomputes shapes,
    so ExtremeC3Net's deploy form accepts any size; control flow is fixed at trace time,
    so PortraitNet's (which pads to a multiple of 32 only when needed) only serves sizes
    that need the same padding decision as the example. ``optimize`` adds
    ``optimize_for_inference``.
    """
    fused = copy.deepcopy(model).eval()
    fold_batchnorms(fused)
    if hasattr(fused, "fuse_for_inference"):
        fused.fuse_for_inference()
    for p in fused.parameters():
        p.requires_grad_(False)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    if not jit:
        return _ChannelsLast(fused) if channels_last else fused
    example = torch.zeros(1, 3, *example_size)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), warnings.catch_warnings():
        # PortraitNet's "pad only if needed" branch is fixed at trace time (see above).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(fused, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        if optimize:
            frozen = torch.jit.optimize_for_inference(frozen)
    return _ChannelsLast(frozen) if channels_last else frozen


class _ChannelsLast(nn.Module):
    """Feed the wrapped network channels_last input; give back a contiguous NCHW output."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous(memory_format=torch.channels_last)).contiguous()


def max_abs_difference(model: nn.Module, deployed: Callable, size: tuple[int, int] = (224, 224),
                       seed: int = 0) -> float:
    """Largest |training form - deploy form| on a random input, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, *size, generator=gen)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float((model(x) - deployed(x)).abs().max())
    finally:
        model.train(was_training)
