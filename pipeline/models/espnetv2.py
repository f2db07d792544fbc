"""ESPNetV2 for segmentation (Mehta et al., CVPR 2019), comparison models of the ExtremeC3Net paper.

Follows the official segmentation network of sacmehta/EdgeNets (``ESPNetv2Segmentation``,
decoder base width 16 as for Pascal/Cityscapes): the EESPNet classification backbone
without its last level (EESP blocks: grouped 1x1 reduction, four depth-wise dilated
branches with hierarchical fusion, grouped 1x1 expansion; strided down-samplers beside an
average pool, reinforced with the input image), then a bottom-up decoder of efficient
pyramid pooling modules merged with gated skip projections. That decoder is what
reproduces the paper's counts (778K at s=2.0, 458K at s=1.5, 2 classes); the older
sacmehta/ESPNetv2 head (PSP module + class-wise merges) would give 1.24M and 0.72M.

Its pyramid projection width is min(classes // 2, 16): 1 channel at 2 classes (at 1 class
it would be 0, so it is kept at 1). Upsampling goes to the skip connection's exact size,
so odd input sizes work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import register


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_ch)]
    if act:
        layers.append(nn.PReLU(out_ch))
    return nn.Sequential(*layers)


def _up(x: torch.Tensor, ref: torch.Tensor | torch.Size) -> torch.Tensor:
    size = ref.shape[-2:] if isinstance(ref, torch.Tensor) else ref
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class EESP(nn.Module):
    """Reduce (grouped 1x1) -> k depth-wise dilated 3x3 branches -> hierarchical fusion -> grouped 1x1 merge."""

    # Receptive field of a dilated 3x3 -> its dilation rate.
    DILATION_FOR_KSIZE = {3: 1, 5: 2, 7: 3, 9: 4, 11: 5, 13: 6, 15: 7, 17: 8}

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, k: int = 4, r_lim: int = 7, *,
                 returns_before_act: bool = False):
        super().__init__()
        n = out_ch // k
        if n * k != out_ch:
            raise ValueError(f"EESP output width {out_ch} must be divisible by its {k} branches")
        self.stride = stride
        self.returns_before_act = returns_before_act  # a down-sampler adds the pooled input first
        self.reduce = conv_bn(in_ch, n, 1, groups=k)
        ksizes = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(k))
        self.branches = nn.ModuleList(
            nn.Conv2d(n, n, 3, stride, padding=self.DILATION_FOR_KSIZE[ks], dilation=self.DILATION_FOR_KSIZE[ks],
                      groups=n, bias=False) for ks in ksizes)
        self.after_cat = nn.Sequential(nn.BatchNorm2d(out_ch), nn.PReLU(out_ch))
        self.expand = conv_bn(out_ch, out_ch, 1, groups=k, act=False)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        outputs = [self.branches[0](reduced)]
        for branch in self.branches[1:]:
            outputs.append(branch(reduced) + outputs[-1])  # hierarchical feature fusion
        expanded = self.expand(self.after_cat(torch.cat(outputs, 1)))
        if self.returns_before_act:
            return expanded
        if expanded.shape == x.shape:
            expanded = expanded + x
        return self.act(expanded)


class DownSampler(nn.Module):
    """Strided EESP beside a 3x3 average pool, plus the input image projected to the new width."""

    def __init__(self, in_ch: int, out_ch: int, k: int = 4, r_lim: int = 9):
        super().__init__()
        self.eesp = EESP(in_ch, out_ch - in_ch, stride=2, k=k, r_lim=r_lim, returns_before_act=True)
        self.image_projection = nn.Sequential(conv_bn(3, 3, 3), conv_bn(3, out_ch, 1, act=False))
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 3, stride=2, padding=1)
        out = torch.cat([pooled, self.eesp(x)], 1)
        while image.shape[-2:] != pooled.shape[-2:]:  # pool the image down to this level's size
            image = F.avg_pool2d(image, 3, stride=2, padding=1)
        return self.act(out + self.image_projection(image))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class EfficientPyramidPooling(nn.Module):
    """Project to a few channels, depth-wise 3x3 at five scales (2, 1.5, 1, 0.5, 0.1), shuffle, merge."""

    SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)

    def __init__(self, in_ch: int, proj_ch: int, out_ch: int, last_bn_act: bool = True):
        super().__init__()
        k = len(self.SCALES)
        self.project = conv_bn(in_ch, proj_ch, 1)
        self.stages = nn.ModuleList(nn.Conv2d(proj_ch, proj_ch, 3, padding=1, groups=proj_ch, bias=False)
                                    for _ in self.SCALES)
        self.merge_bn = nn.Sequential(nn.BatchNorm2d(proj_ch * k), nn.PReLU(proj_ch * k))
        self.merge = nn.Sequential(conv_bn(proj_ch * k, proj_ch, 3, groups=proj_ch),
                                   nn.Conv2d(proj_ch, out_ch, 1, bias=not last_bn_act))
        self.out = nn.Sequential(nn.BatchNorm2d(out_ch), nn.PReLU(out_ch)) if last_bn_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        h, w = x.shape[-2:]
        outputs = []
        for scale, stage in zip(self.SCALES, self.stages):
            size = (max(5, math.ceil(h * scale)), max(5, math.ceil(w * scale)))
            if scale > 1.0:
                y = F.adaptive_avg_pool2d(stage(_up(x, size)), (h, w))
            elif scale < 1.0:
                y = _up(stage(F.adaptive_avg_pool2d(x, size)), x)
            else:
                y = stage(x)
            outputs.append(y)
        y = channel_shuffle(self.merge_bn(torch.cat(outputs, 1)), len(self.SCALES))
        return self.out(self.merge(y))


class EfficientPointwise(nn.Module):
    """Grouped 3x3 projection of a skip connection, gated by a global-context weight per channel."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.Sigmoid())
        self.project = conv_bn(in_ch, out_ch, 3, groups=math.gcd(in_ch, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x) * self.gate(x)


def backbone_widths(s: float) -> list[int]:
    """EESPNet widths per level for scale ``s`` (the official rule: level 1 never exceeds 32)."""
    base = 32
    base_s = math.ceil(int(base * s) / 4) * 4
    return [min(base, base_s)] + [base_s * 2 ** i for i in range(1, 4)]


class ESPNetV2(nn.Module):
    def __init__(self, num_classes: int = 1, s: float = 2.0, decoder_width: int = 16):
        super().__init__()
        if num_classes < 1 or s <= 0:
            raise ValueError(f"ESPNetV2 needs num_classes >= 1 and s > 0 (got {num_classes}, {s})")
        w = backbone_widths(s)
        self.level1 = conv_bn(3, w[0], 3, 2)
        self.level2 = DownSampler(w[0], w[1], r_lim=13)
        self.level3_down = DownSampler(w[1], w[2], r_lim=11)
        self.level3 = nn.Sequential(*(EESP(w[2], w[2], r_lim=9) for _ in range(3)))
        self.level4_down = DownSampler(w[2], w[3], r_lim=9)
        self.level4 = nn.Sequential(*(EESP(w[3], w[3], r_lim=7) for _ in range(7)))
        # Segmentation head (EdgeNets' ESPNetv2Segmentation, decoder base width 16).
        dec = [4 * decoder_width, 3 * decoder_width, 2 * decoder_width]
        proj = max(1, min(num_classes // 2, decoder_width))
        self.decode_l4 = EfficientPyramidPooling(w[3], proj, dec[0])
        self.decode_l3 = EfficientPyramidPooling(dec[0], proj, dec[1])
        self.decode_l2 = EfficientPyramidPooling(dec[1], proj, dec[2])
        self.decode_l1 = EfficientPyramidPooling(dec[2], proj, num_classes, last_bn_act=False)
        self.skip_l3 = EfficientPointwise(w[2], dec[0])
        self.skip_l2 = EfficientPointwise(w[1], dec[1])
        self.skip_l1 = EfficientPointwise(w[0], dec[2])
        self.merge_l3 = nn.Sequential(nn.BatchNorm2d(dec[0]), nn.PReLU(dec[0]))
        self.merge_l2 = nn.Sequential(nn.BatchNorm2d(dec[1]), nn.PReLU(dec[1]))
        self.merge_l1 = nn.Sequential(nn.BatchNorm2d(dec[2]), nn.PReLU(dec[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l1 = self.level1(x)
        l2 = self.level2(l1, x)
        l3 = self.level3(self.level3_down(l2, x))
        l4 = self.level4(self.level4_down(l3, x))
        y = self.decode_l4(l4)
        y = self.decode_l3(self.merge_l3(_up(y, l3) + self.skip_l3(l3)))
        y = self.decode_l2(self.merge_l2(_up(y, l2) + self.skip_l2(l2)))
        y = self.decode_l1(self.merge_l1(_up(y, l1) + self.skip_l1(l1)))
        return _up(y, x)


@register("espnetv2_2p0", paper_params=778_000, paper_params_kwargs={"num_classes": 2}, input_size=224)
def build_espnetv2_2(num_classes: int = 1) -> nn.Module:
    """ESPNetV2 segmentation, width 2.0 (official structure); 778K in the ExtremeC3Net paper."""
    return ESPNetV2(num_classes, s=2.0)


@register("espnetv2_1p5", paper_params=458_000, paper_params_kwargs={"num_classes": 2}, input_size=224)
def build_espnetv2_1_5(num_classes: int = 1) -> nn.Module:
    """ESPNetV2 segmentation, width 1.5 (official structure); 458K in the ExtremeC3Net paper."""
    return ESPNetV2(num_classes, s=1.5)
