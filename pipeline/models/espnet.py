"""ESPNet (Mehta et al., ECCV 2018) and DS-ESPNet, comparison models of the ExtremeC3Net paper.

Follows the structure of the official ESPNet (sacmehta/ESPNet, ``ESPNet`` with p=2, q=8):
ESP modules (reduce, split into five dilated 3x3 branches with rates 1..16, hierarchical
feature fusion, merge) and the RUM-style light decoder.

DS-ESPNet has no published code. The ExtremeC3Net paper describes it as ESPNet with its
dilated convolutions made depth-wise separable; here every dilated branch of the stride-1
ESP modules becomes a depth-wise dilated 3x3 followed by a point-wise 1x1, while the two
strided down-sampling modules (whose reduction is a plain strided 3x3, not a dilated
convolution) stay as they are. That gives 138.6K parameters for the paper's 143K (-3%);
making the down-sampling modules separable too gives 108.5K, all convolutions 81.8K.
``width=0.5`` halves every encoder width: 38.0K for the paper's 63.9K, a gap no uniform
halving closes (it would need most parameters to scale linearly with width).

The official decoder has an ESP block with 2*C inputs and C outputs; with C <= 2 its
branches would get zero channels (the official code relied on zero-size convolutions,
which torch no longer accepts), so such a block falls back to one dilation-1 branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import register

BN_EPS = 1e-3  # the official code's BatchNorm epsilon
MAX_REPEATS = 100  # p, q (the paper: 2, 8); thousands of blocks only stall the builder


class ConvBNPReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, bias=False),
            nn.BatchNorm2d(out_ch, eps=BN_EPS),
            nn.PReLU(out_ch),
        )


class BNPReLU(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.BatchNorm2d(channels, eps=BN_EPS), nn.PReLU(channels))


def _dilated_conv(in_ch: int, out_ch: int, dilation: int, separable: bool) -> nn.Module:
    """A 3x3 dilated convolution, or its depth-wise separable form (DS-ESPNet)."""
    if not separable:
        return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, padding=dilation, dilation=dilation, groups=in_ch, bias=False),
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
    )


class ESPBlock(nn.Module):
    """Reduce -> split into dilated branches (rates 1, 2, 4, 8, 16) -> hierarchical fusion -> merge.

    ``downsample``: the reduction is a strided 3x3 convolution (the official DownSamplerB)
    instead of a 1x1; ``residual`` adds the input when the shapes allow it.
    """

    DILATIONS = (1, 2, 4, 8, 16)

    def __init__(self, in_ch: int, out_ch: int, *, downsample: bool = False, residual: bool = True,
                 separable: bool = False):
        super().__init__()
        n = out_ch // len(self.DILATIONS)
        if n == 0:  # too narrow to split (decoder with 1-2 classes): one dilation-1 branch
            widths, dilations = [out_ch], [1]
            n = out_ch
        else:
            widths = [out_ch - 4 * n] + [n] * 4
            dilations = list(self.DILATIONS)
        if downsample:
            self.reduce = nn.Conv2d(in_ch, n, 3, 2, padding=1, bias=False)
        else:
            self.reduce = nn.Conv2d(in_ch, n, 1, bias=False)
        self.branches = nn.ModuleList(_dilated_conv(n, w, d, separable) for w, d in zip(widths, dilations))
        self.residual = residual and not downsample and in_ch == out_ch
        self.out = BNPReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        outputs = [branch(reduced) for branch in self.branches]
        # Hierarchical feature fusion: add each larger-rate branch onto the previous sum (de-gridding).
        for i in range(2, len(outputs)):
            outputs[i] = outputs[i] + outputs[i - 1]
        merged = torch.cat(outputs, 1)
        if self.residual:
            merged = merged + x
        return self.out(merged)


class ImagePyramid(nn.Module):
    """The input image average-pooled ``times`` times (ESPNet's input reinforcement)."""

    def __init__(self, times: int):
        super().__init__()
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            x = F.avg_pool2d(x, 3, stride=2, padding=1)
        return x


def _resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    # Transposed 2x upsampling overshoots by one pixel on odd sizes: snap to the skip's size.
    if x.shape[-2:] != ref.shape[-2:]:
        x = F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)
    return x


class ESPNet(nn.Module):
    """ESPNet (encoder ESPNet-C + light decoder); ``separable`` and ``width`` give the DS-ESPNet variants."""

    def __init__(self, num_classes: int = 1, p: int = 2, q: int = 8, *, separable: bool = False,
                 width: float = 1.0):
        super().__init__()
        if num_classes < 1 or p < 1 or q < 1 or width <= 0:
            raise ValueError(f"ESPNet needs num_classes, p, q >= 1 and width > 0 (got {num_classes}, {p}, {q}, {width})")
        if p > MAX_REPEATS or q > MAX_REPEATS:
            raise ValueError(f"ESPNet needs p, q <= {MAX_REPEATS} (got {p}, {q})")
        c1, c2, c3 = (max(5, int(round(c * width))) for c in (16, 64, 128))
        c = num_classes
        self.level1 = ConvBNPReLU(3, c1, 3, 2)
        self.image_half = ImagePyramid(1)
        self.image_quarter = ImagePyramid(2)
        self.level1_out = BNPReLU(c1 + 3)
        self.level2_down = ESPBlock(c1 + 3, c2, downsample=True)
        self.level2 = nn.Sequential(*(ESPBlock(c2, c2, separable=separable) for _ in range(p)))
        self.level2_out = BNPReLU(2 * c2 + 3)
        self.level3_down = ESPBlock(2 * c2 + 3, c3, downsample=True)
        self.level3 = nn.Sequential(*(ESPBlock(c3, c3, separable=separable) for _ in range(q)))
        self.level3_out = BNPReLU(2 * c3)
        self.encoder_classifier = nn.Conv2d(2 * c3, c, 1, bias=False)
        # Light decoder (the official RUM-style one).
        self.level3_bn = nn.BatchNorm2d(c, eps=BN_EPS)
        self.up_l3 = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)
        self.level2_classifier = nn.Conv2d(2 * c2 + 3, c, 1, bias=False)
        self.combine_l2_l3 = nn.Sequential(BNPReLU(2 * c), ESPBlock(2 * c, c, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False), BNPReLU(c))
        self.combine_l1 = ConvBNPReLU(c1 + 3 + c, c, 3)
        self.classifier = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        l1 = self.level1_out(torch.cat([self.level1(x), self.image_half(x)], 1))
        l2_down = self.level2_down(l1)
        l2 = self.level2_out(torch.cat([self.level2(l2_down), l2_down, self.image_quarter(x)], 1))
        l3_down = self.level3_down(l2)
        l3 = self.level3_out(torch.cat([l3_down, self.level3(l3_down)], 1))
        y = self.up_l3(self.level3_bn(self.encoder_classifier(l3)))
        skip2 = self.level2_classifier(l2)
        y = self.up_l2(self.combine_l2_l3(torch.cat([skip2, _resize_to(y, skip2)], 1)))
        y = self.combine_l1(torch.cat([_resize_to(y, l1), l1], 1))
        y = self.classifier(y)
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


@register("espnet", paper_params=345_000, paper_params_kwargs={"num_classes": 2}, input_size=224)
def build_espnet(num_classes: int = 1, p: int = 2, q: int = 8, **kwargs) -> nn.Module:
    """ESPNet (p=2, q=8), the official structure; 345K in the ExtremeC3Net paper (2 classes)."""
    return ESPNet(num_classes, p, q, **kwargs)


@register("ds_espnet", paper_params=143_000, paper_params_kwargs={"num_classes": 2}, input_size=224)
def build_ds_espnet(num_classes: int = 1, p: int = 2, q: int = 8, **kwargs) -> nn.Module:
    """DS-ESPNet: ESPNet with depth-wise separable ESP convolutions; 143K in the paper."""
    return ESPNet(num_classes, p, q, separable=True, **kwargs)


@register("ds_espnet_0p5", paper_params=63_900, paper_params_kwargs={"num_classes": 2}, input_size=224)
def build_ds_espnet_half(num_classes: int = 1, p: int = 2, q: int = 8, **kwargs) -> nn.Module:
    """DS-ESPNet(0.5): DS-ESPNet at half width; 63.9K in the paper."""
    return ESPNet(num_classes, p, q, separable=True, width=0.5, **kwargs)
