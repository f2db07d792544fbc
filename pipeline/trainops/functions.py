"""Training ops on the NHWC kernels of ``kernels.c``: BatchNorm2d (+ PReLU), and a depth-wise
conv (its weight gradient; its input gradient as oneDNN's forward conv), as autograd functions.

Why: in channels_last on a CPU, PyTorch's BatchNorm and PReLU backward and oneDNN's
depth-wise conv backward for few, odd channel counts were most of an ExtremeC3Net training
step (``benchmarks/train_step.py``), far slower than their memory traffic needs. Same
arithmetic as PyTorch (batch statistics, biased variance for normalising, unbiased for the
running variance), float rounding aside. ``pipeline.trainops`` decides when they apply.
"""

from __future__ import annotations

import ctypes
import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.ckernels import NativeBuildError, open_library

SOURCE = Path(__file__).with_name("kernels.c")

_unavailable: str | None = None  # why the kernels could not be built: the PyTorch path is used


@lru_cache(maxsize=1)
def load_training_library() -> ctypes.CDLL:
    """``kernels.c``: training-mode BN (+ PReLU) and depth-wise conv backward over NHWC."""
    lib = open_library(SOURCE)
    p, n, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.bn_stats.restype = i
    lib.bn_stats.argtypes = [p, n, i, i, p, p]
    lib.bn_apply.restype = i
    lib.bn_apply.argtypes = [p, p, n, i, p, p, p, i]
    lib.bn_backward.restype = i
    lib.bn_backward.argtypes = [p, p, p, n, i, p, p, p, p, p, p, i, p, p, p]
    lib.dw_backward_input.restype = i
    lib.dw_backward_input.argtypes = [p, p, p] + [i] * 13
    lib.dw_backward_weight.restype = i
    lib.dw_backward_weight.argtypes = [p, p, p] + [i] * 13
    lib.sort_rows_descending.restype = i
    lib.sort_rows_descending.argtypes = [p, n, n, p, i]
    return lib


def available() -> bool:
    """Whether the kernels build and load here; the first failure is said once, as a warning."""
    global _unavailable
    if _unavailable is None:
        try:
            load_training_library()
            return True
        except NativeBuildError as exc:
            _unavailable = str(exc)
            warnings.warn(f"native training kernels unavailable, training with PyTorch's ops: {exc}",
                          RuntimeWarning, stacklevel=3)
    return False


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _nhwc(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


class _BatchNormPReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, alpha, eps: float):
        lib = load_training_library()
        n, c, h, w = x.shape
        rows, threads = n * h * w, torch.get_num_threads()
        mean64 = torch.empty(c, dtype=torch.float64)
        var64 = torch.empty(c, dtype=torch.float64)
        if lib.bn_stats(x.data_ptr(), rows, c, threads, mean64.data_ptr(), var64.data_ptr()):
            raise MemoryError("native batch norm: no memory for the per-thread sums")
        mean, invstd = mean64.float(), (var64 + eps).rsqrt().float()
        scale = (weight.detach() * invstd).contiguous()
        offset = (bias.detach() - mean * scale).contiguous()
        slopes = None if alpha is None else alpha.detach().contiguous()
        out = torch.empty_like(x, memory_format=torch.channels_last)
        if lib.bn_apply(x.data_ptr(), out.data_ptr(), rows, c, scale.data_ptr(), offset.data_ptr(),
                        _pointer(slopes), threads):
            raise MemoryError("native batch norm: no memory for the repeated coefficients")
        ctx.save_for_backward(x, weight, slopes, mean, invstd, scale, offset)
        ctx.has_alpha = alpha is not None
        var = var64.float()
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, weight, slopes, mean, invstd, scale, offset = ctx.saved_tensors
        n, c, h, w = x.shape
        grad_out = _nhwc(grad_out)
        grad_x = torch.empty_like(x, memory_format=torch.channels_last)
        grad_weight, grad_bias = torch.empty(c), torch.empty(c)
        grad_alpha = torch.empty(c) if ctx.has_alpha else None
        gamma = weight.detach().contiguous()  # held by a name: a copy must outlive the call
        status = load_training_library().bn_backward(
            x.data_ptr(), grad_out.data_ptr(), grad_x.data_ptr(), n * h * w, c, gamma.data_ptr(),
            mean.data_ptr(), invstd.data_ptr(), scale.data_ptr(), offset.data_ptr(), _pointer(slopes),
            torch.get_num_threads(), grad_weight.data_ptr(), grad_bias.data_ptr(), _pointer(grad_alpha))
        if status:
            raise MemoryError("native batch norm backward: no memory for the per-thread sums")
        return grad_x, grad_weight, grad_bias, grad_alpha, None


def train_batchnorm_prelu(x: torch.Tensor, bn: nn.BatchNorm2d, act: nn.PReLU | None) -> torch.Tensor:
    """``act(bn(x))`` in training mode, running statistics updated as BatchNorm2d does."""
    c = x.shape[1]
    alpha = None if act is None else act.weight.expand(c)
    out, mean, var = _BatchNormPReLU.apply(x, bn.weight, bn.bias, alpha, bn.eps)
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        rows = x.numel() // c
        bn.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        bn.running_var.mul_(1 - factor).add_(var * (rows / (rows - 1)), alpha=factor)
    return out


# oneDNN's depth-wise forward leaves its fast kernel from this dilation on: a 3x3 conv over 18 channels
# at 56x56 (batch 32) takes about 1 ms at dilations 1-6 and 4-7 ms at 7, 8 or 12, 13 ms at 16.
SLOW_DILATION = 7


def _flipped_padding(padding, dilation, kernel) -> tuple[int, int]:
    """The padding under which a conv with the kernel flipped maps a conv's output back onto its input."""
    return tuple(d * (k - 1) - p for p, d, k in zip(padding, dilation, kernel))


def _correlate(source: torch.Tensor, weight: torch.Tensor, size: tuple[int, int], padding, dilation) -> torch.Tensor:
    """``dw_backward_input``: out[y, x] = sum over taps (i, j) of weight[i, j] * source[y + pad_h - i * dil_h,
    x + pad_w - j * dil_w] (zero outside), an out of ``size``: a stride-1 depth-wise conv's input gradient."""
    n, c, h, w = source.shape
    kernel = tuple(weight.shape[-2:])
    taps = weight.detach().reshape(c, kernel[0] * kernel[1]).t().contiguous()
    out = torch.empty(n, c, *size, memory_format=torch.channels_last)
    source = _nhwc(source)  # held by a name: a copy must outlive the call
    if load_training_library().dw_backward_input(source.data_ptr(), taps.data_ptr(), out.data_ptr(), n, *size, h, w, c,
                                                  *kernel, *padding, *dilation, torch.get_num_threads()):
        raise MemoryError("native depth-wise conv: no memory for the repeated weights")
    return out


def _depthwise(x: torch.Tensor, weight: torch.Tensor, padding, dilation) -> torch.Tensor:
    """``F.conv2d`` of a depth-wise weight at stride 1; on the kernels where oneDNN is slow (``SLOW_DILATION``).

    A stride-1 conv with weight w and padding p is ``_correlate`` with w flipped and the
    flipped padding (``_flipped_padding``), and the other way round.
    """
    kernel = tuple(weight.shape[-2:])
    flipped = _flipped_padding(padding, dilation, kernel)
    if max(dilation) < SLOW_DILATION or min(flipped) < 0:
        return F.conv2d(x, weight, None, 1, padding, dilation, x.shape[1])
    size = tuple(s + 2 * p - d * (k - 1) for s, p, d, k in zip(x.shape[-2:], padding, dilation, kernel))
    return _correlate(x, weight.flip(-2, -1), size, flipped, dilation)


class _DepthwiseConv2d(torch.autograd.Function):
    """Forward and input gradient: oneDNN's forward conv (the kernels at large dilations).
    Weight gradient: the kernels. Stride 1, no bias, zero padding.

    oneDNN's depth-wise backward is slow for these channel counts but its forward is not, and the
    input gradient of a stride-1 conv is a forward conv of the output gradient with the kernel
    flipped and the flipped padding.
    """

    @staticmethod
    def forward(ctx, x, weight, padding: tuple[int, int], dilation: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return _depthwise(x, weight, padding, dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = _nhwc(grad_out)
        n, c, in_h, in_w = x.shape
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            flipped = _flipped_padding(ctx.padding, ctx.dilation, tuple(weight.shape[-2:]))
            if min(flipped) >= 0:
                grad_x = _depthwise(grad_out, weight.detach().flip(-2, -1), flipped, ctx.dilation)
            else:  # padding wider than the kernel's reach: no forward conv has it
                grad_x = _correlate(grad_out, weight, (in_h, in_w), ctx.padding, ctx.dilation)
        if ctx.needs_input_grad[1]:
            out_h, out_w = grad_out.shape[-2:]
            kernel_h, kernel_w = weight.shape[-2:]
            taps_grad = torch.empty(kernel_h * kernel_w, c)
            x_nhwc = _nhwc(x)  # held by a name: a copy must outlive the call
            if load_training_library().dw_backward_weight(
                    grad_out.data_ptr(), x_nhwc.data_ptr(), taps_grad.data_ptr(), n, in_h, in_w, out_h, out_w, c,
                    kernel_h, kernel_w, *ctx.padding, *ctx.dilation, torch.get_num_threads()):
                raise MemoryError("native depth-wise conv backward: no memory for the per-thread sums")
            grad_weight = taps_grad.t().reshape(weight.shape).contiguous()
        return grad_x, grad_weight, None, None


def descending_order(x: torch.Tensor) -> torch.Tensor:
    """``torch.sort(x, dim=1, descending=True).indices`` of a 2-D float32 tensor, by the kernels'
    radix sort (ties in column order, NaN first): 11 ms against torch.sort's 65 for 32 rows of
    50,176 pixel errors on 2 cores."""
    rows, cols = x.shape
    if cols >= 2**32:
        raise ValueError(f"rows of {cols} values are too long for the radix sort's 32-bit positions")
    x = x.detach().contiguous()
    order = torch.empty(rows, cols, dtype=torch.int64)
    if load_training_library().sort_rows_descending(x.data_ptr(), rows, cols, order.data_ptr(),
                                                    torch.get_num_threads()):
        raise MemoryError("native sort: no memory for the per-thread keys")
    return order


def train_depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return _DepthwiseConv2d.apply(x, conv.weight, tuple(conv.padding), tuple(conv.dilation))
