"""ContextNet12 (Poudel et al., BMVC 2018), comparison models of the ExtremeC3Net paper.

Two branches: a shallow full-resolution branch (a 3x3 conv and three depth-wise separable
convs, stride 8) for detail, and a deep MobileNetV2-style branch of inverted-residual
bottlenecks that sees the image at 1/2 resolution (the "12" in ContextNet12; ContextNet14
would use 1/4) for context. A fusion module (the deep features upsampled, a depth-wise 3x3 dilated by the upsampling
factor and a 1x1, added to a 1x1 of the shallow ones) and a 1x1 classifier, upsampled to
the input, as in the paper's Table 1. Block widths follow the common PyTorch port
(xiaoyufenfei/Efficient-Segmentation-Networks); that port's classifier also has two
depth-wise separable convs (borrowed from Fast-SCNN: 874,370 parameters), while the
original's plain 1x1 gives 838,274, the ExtremeC3Net paper's 838K. ``width`` scales every
channel count: 0.25 gives 64,706 for the paper's 67.2K (-3.7%; the paper does not say how
its 0.25 model was thinned, and no rounding rule we tried lands closer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import register


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


def separable(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(*conv_bn_relu(in_ch, in_ch, 3, stride, groups=in_ch), *conv_bn_relu(in_ch, out_ch, 1))


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, expansion: int, stride: int):
        super().__init__()
        hidden = in_ch * expansion
        self.block = nn.Sequential(*conv_bn_relu(in_ch, hidden, 1), *conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                                   nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class ContextNet(nn.Module):
    # Deep branch: (out channels, expansion, repeats, stride) per stage, after a strided 3x3 stem.
    DEEP_STAGES = ((32, 1, 1, 1), (32, 6, 1, 1), (48, 6, 3, 2), (64, 6, 3, 2), (96, 6, 2, 1), (128, 6, 2, 1))

    def __init__(self, num_classes: int = 1, width: float = 1.0, context_scale: float = 0.5):
        super().__init__()
        if num_classes < 1 or width <= 0 or not 0 < context_scale <= 1:
            raise ValueError(f"ContextNet needs num_classes >= 1, width > 0, 0 < context_scale <= 1 "
                             f"(got {num_classes}, {width}, {context_scale})")

        def ch(c: int) -> int:
            return max(1, int(round(c * width)))

        self.context_scale = context_scale
        top = ch(128)
        self.shallow = nn.Sequential(nn.Sequential(*conv_bn_relu(3, ch(32), 3, 2)), separable(ch(32), ch(64), 2),
                                     separable(ch(64), top, 2), separable(top, top, 1))
        layers: list[nn.Module] = [nn.Sequential(*conv_bn_relu(3, ch(32), 3, 2))]
        in_ch = ch(32)
        for out, expansion, repeats, stride in self.DEEP_STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(in_ch, ch(out), expansion, stride if i == 0 else 1))
                in_ch = ch(out)
        self.deep = nn.Sequential(*layers)
        dilation = max(1, round(1 / context_scale))  # the deep features are 1/scale as coarse
        self.fuse_deep = nn.Sequential(
            nn.Conv2d(in_ch, top, 3, padding=dilation, dilation=dilation, groups=in_ch, bias=False),
            nn.BatchNorm2d(top), nn.ReLU(inplace=True), nn.Conv2d(top, top, 1), nn.BatchNorm2d(top))
        self.fuse_shallow = nn.Sequential(nn.Conv2d(top, top, 1), nn.BatchNorm2d(top))
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(top, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        detail = self.shallow(x)
        small = F.interpolate(x, scale_factor=self.context_scale, mode="bilinear", align_corners=False,
                              recompute_scale_factor=False) if self.context_scale != 1 else x
        context = F.interpolate(self.deep(small), size=detail.shape[-2:], mode="bilinear", align_corners=True)
        fused = F.relu(self.fuse_shallow(detail) + self.fuse_deep(context))
        return F.interpolate(self.classifier(fused), size=size, mode="bilinear", align_corners=True)


@register("contextnet12", paper_params=838_000, paper_params_kwargs={"num_classes": 2}, input_size=224)
def build_contextnet12(num_classes: int = 1, **kwargs) -> nn.Module:
    """ContextNet12 (deep branch at 1/2 resolution); 838K in the ExtremeC3Net paper."""
    return ContextNet(num_classes, **kwargs)


@register("contextnet12_0p25", paper_params=67_200, paper_params_kwargs={"num_classes": 2}, input_size=224)
def build_contextnet12_quarter(num_classes: int = 1, **kwargs) -> nn.Module:
    """ContextNet12(0.25): every width x0.25; 67.2K in the ExtremeC3Net paper."""
    return ContextNet(num_classes, width=0.25, **kwargs)
