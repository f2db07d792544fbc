"""BN (+ PReLU), depth-wise convs and the Lovász loss's sort on native CPU kernels where they
apply, else PyTorch's modules and ``torch.sort``.

The native path (``pipeline.trainops.functions``, on ``kernels.c``) is taken only in training mode, for a
float32 CPU tensor in channels_last, with plain modules (``nn.BatchNorm2d`` with affine and
running statistics, ``nn.PReLU``; a bias-free, stride-1, zero-padded depth-wise
``nn.Conv2d``): what ``train.settings.channels_last`` gives. Any other case (evaluation,
NCHW, bf16, CUDA, synchronised BN, no C compiler) runs the modules unchanged, so the
default NCHW path stays bit-identical. The sort (``descending_order``) applies to any CPU float32
matrix: only the fused loss calls it, and exactly equal errors may come in another order than
``torch.sort``'s. ``PORTRAIT_CURATION_NATIVE_TRAINING=0`` turns all of it off.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from pipeline.trainops import functions

DISABLE_ENV = "PORTRAIT_CURATION_NATIVE_TRAINING"


def _native(x: torch.Tensor, module: nn.Module) -> bool:
    if not (module.training and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and os.environ.get(DISABLE_ENV, "1") != "0"):
        return False
    return functions.available()


def batchnorm_prelu(x: torch.Tensor, bn: nn.BatchNorm2d, act: nn.PReLU | None = None) -> torch.Tensor:
    """``act(bn(x))`` (``bn(x)`` without ``act``)."""
    if (type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats
            and (act is None or type(act) is nn.PReLU) and _native(x, bn)):
        return functions.train_batchnorm_prelu(x, bn, act)
    x = bn(x)
    return x if act is None else act(x)


def is_depthwise(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.groups == conv.in_channels == conv.out_channels and conv.bias is None
            and tuple(conv.stride) == (1, 1) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a depth-wise conv (``is_depthwise``)."""
    if _native(x, conv):
        return functions.train_depthwise_conv(x, conv)
    return conv(x)


def descending_order(x: torch.Tensor) -> torch.Tensor:
    """Each row's column indices by decreasing value: ``torch.sort(x, 1, descending=True).indices``
    (on the kernels for a CPU float32 matrix; the order of exactly equal values may differ)."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2
            and os.environ.get(DISABLE_ENV, "1") != "0" and functions.available()):
        return functions.descending_order(x)
    return torch.sort(x, dim=1, descending=True).indices
