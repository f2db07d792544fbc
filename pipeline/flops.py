"""Count a network's arithmetic at the operator level, in two conventions.

The counter runs one forward pass under a ``TorchDispatchMode`` and looks at every ATen
operator that runs, so functional calls (``F.interpolate``, ``torch.cat``, ``x + y``) are
seen as well as modules. Shapes are what matter; values are not read.

Two conventions, because papers mix them (ExtremeC3Net's Table 8 reports 0.286 G for
"all operations" and 0.128 G by the ESPNetV2 counter):

``espnetv2`` (multiply-accumulates, "GMac"): what ESPNetV2's counter
(sacmehta/ESPNetv2, reused as ``etc/flops_compute.py`` in the ExtremeC3Net code) counts:
per convolution, ``output pixels x out_channels x in_channels/groups x kh x kw`` MACs,
plus half a MAC per output element when the conv has a bias (it counts the bias add as
one FLOP and a MAC as two, then halves). Nothing else: BN, activations, pooling,
upsampling, additions and concatenations count zero. Fully connected layers are counted
like 1x1 convs (in x out MACs per row). One deviation: that counter hooks ``nn.Conv2d``
only, so it silently skips transposed convolutions; here they count (input pixels x
in_channels x out_channels/groups x kh x kw MACs), otherwise PortraitNet's decoder would
be free.

``all_ops`` (floating-point operations, "GFLOP"): every arithmetic operation, with a
multiply-accumulate as 2 FLOPs:
- convolution / linear: 2 per MAC, + 1 per output element for a bias;
- batch norm (inference): 2 per element (scale and shift, the statistics folded);
- ReLU, PReLU, other element-wise unary/binary ops (add, mul, sub, div, sigmoid...): 1 per
  output element;
- average pooling: kernel-size per output element (the adds and one divide);
  max pooling: kernel-size - 1 comparisons per output element;
- bilinear interpolation: 7 per output element per channel (4 products, 3 sums of the
  four neighbours, interpolation weights precomputed);
- concatenation, padding, slicing, views, copies: 0 (data movement, not arithmetic).
The ExtremeC3Net paper does not say which tool gave its 0.286 G; this count is
2 x 0.128 GMACs for the convs plus about 0.03 G of element-wise work at 224x224
(see ``metrics/complexity.json``), which is where its figure lies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

BILINEAR_FLOPS_PER_OUTPUT = 7

# Element-wise operators costing one FLOP per output element.
_ELEMENTWISE = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "relu", "relu_", "_prelu_kernel", "prelu",
    "leaky_relu", "leaky_relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh", "hardtanh_", "clamp",
    "clamp_", "clamp_min", "clamp_min_", "neg", "exp", "rsqrt", "sqrt", "maximum", "minimum", "where", "gelu",
    "hardswish", "hardswish_", "hardsigmoid", "silu", "silu_", "addcmul", "softmax", "_softmax", "log_softmax",
    "_log_softmax",
}
_BATCH_NORM = {"_native_batch_norm_legit_no_training", "native_batch_norm", "_native_batch_norm_legit",
               "batch_norm", "cudnn_batch_norm", "_batch_norm_impl_index"}


@dataclass
class FlopCount:
    """Totals of one forward pass; ``by_op`` breaks ``all_ops`` down by ATen operator."""

    macs_espnetv2: float = 0.0
    flops_all_ops: float = 0.0
    by_op: Counter = field(default_factory=Counter)

    def add(self, op: str, all_ops: float, macs: float = 0.0) -> None:
        self.flops_all_ops += all_ops
        self.macs_espnetv2 += macs
        self.by_op[op] += all_ops


def _numel(t) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


class _Counting(TorchDispatchMode):
    def __init__(self, count: FlopCount):
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        result = _first_tensor(out)
        n_out = _numel(result)
        c = self.count
        if name in ("convolution", "mkldnn_convolution", "_convolution"):
            x, weight, bias = args[0], args[1], args[2]
            transposed = bool(args[6]) if name != "mkldnn_convolution" and len(args) > 6 else False
            kernel = prod(weight.shape[2:])
            if transposed:
                # weight: (in, out/groups, kh, kw); every input pixel scatters into out/groups maps.
                macs = x.numel() * weight.shape[1] * kernel
            else:
                # weight: (out, in/groups, kh, kw); every output element gathers in/groups x kernel.
                macs = n_out * weight.shape[1] * kernel
            bias_ops = n_out if isinstance(bias, torch.Tensor) else 0
            c.add(name, 2 * macs + bias_ops, macs + 0.5 * bias_ops)
        elif name in ("addmm", "mm", "bmm", "matmul", "linear"):
            a, b = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
            macs = n_out * a.shape[-1]
            bias_ops = n_out if name == "addmm" else 0
            c.add(name, 2 * macs + bias_ops, macs + 0.5 * bias_ops)
        elif name in _BATCH_NORM:
            c.add(name, 2 * n_out)
        elif name in ("avg_pool2d", "adaptive_avg_pool2d", "mean"):
            window = _numel(args[0]) / max(n_out, 1)
            if name == "avg_pool2d":
                kernel = args[1] if len(args) > 1 else kwargs["kernel_size"]
                window = prod(kernel) if isinstance(kernel, (list, tuple)) and len(kernel) == 2 else kernel[0] ** 2
            c.add(name, n_out * window)
        elif name in ("max_pool2d", "max_pool2d_with_indices"):
            kernel = args[1]
            window = prod(kernel) if len(kernel) == 2 else kernel[0] ** 2
            c.add(name, n_out * (window - 1))
        elif name in ("upsample_bilinear2d", "_upsample_bilinear2d_aa"):
            c.add(name, BILINEAR_FLOPS_PER_OUTPUT * n_out)
        elif name in _ELEMENTWISE:
            c.add(name, n_out)
        return out


def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> FlopCount:
    """Count one forward pass of ``model`` (in eval mode) on a zero tensor, per image.

    The model's training flag is restored afterwards.
    """
    count = FlopCount()
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(input_shape, device=device)
        # no_grad, not inference_mode: under inference_mode composite operators (conv2d,
        # batch_norm) reach the dispatch mode undecomposed, under no_grad as convolution etc.
        with torch.no_grad(), _Counting(count):
            model(x)
    finally:
        model.train(was_training)
    batch = input_shape[0]
    count.macs_espnetv2 /= batch
    count.flops_all_ops /= batch
    count.by_op = Counter({k: v / batch for k, v in count.by_op.items()})
    return count
