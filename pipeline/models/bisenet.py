"""BiSeNet with a ResNet-18 context path (Yu et al., ECCV 2018), the ExtremeC3Net paper's largest comparison.

Structure of the widely used PyTorch port (ooooverflow/BiSeNet): a spatial path of three
strided 3x3 conv-BN-ReLU blocks (64, 128, 256 channels, stride 8); a context path of
ResNet-18 whose stride-16 and stride-32 features go through attention refinement modules
(the stride-32 one also scaled by its global average); a feature fusion module with
channel attention; a 1x1 classifier, upsampled x8. ``forward_with_aux`` also returns the
two auxiliary heads on the context features (the port's deep supervision).

ResNet-18 is built here (no torchvision, no downloads; weights start random). The paper's
12.4M counts the port's unused ImageNet classifier of ResNet-18 (512x1000 + 1000 =
513,000 parameters, kept in the model but never called): ``keep_imagenet_fc=True``
reproduces that count (12,411,204 at 2 classes); the default network leaves it out
(11,898,204).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import register


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


class ResNet18(nn.Module):
    """ResNet-18 trunk returning its stride-16 and stride-32 features."""

    def __init__(self, keep_imagenet_fc: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        widths = (64, 128, 256, 512)
        layers, in_ch = [], 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(in_ch, width, stride), BasicBlock(width, width)))
            in_ch = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        # Never called: only there to reproduce the official port's parameter count.
        self.fc = nn.Linear(512, 1000) if keep_imagenet_fc else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x3 = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return x3, self.layer4(x3)


def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    # The port's ConvBlock: 3x3 conv with bias, BN, ReLU.
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class AttentionRefinement(nn.Module):
    """Re-weight channels by a sigmoid of the globally pooled features (1x1 conv + BN)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.bn(self.conv(F.adaptive_avg_pool2d(x, 1))))


class FeatureFusion(nn.Module):
    def __init__(self, in_ch: int, num_classes: int):
        super().__init__()
        self.block = conv_bn_relu(in_ch, num_classes)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_classes, num_classes, 1),
                                       nn.ReLU(inplace=True), nn.Conv2d(num_classes, num_classes, 1), nn.Sigmoid())

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        features = self.block(torch.cat([spatial, context], 1))
        return features + features * self.attention(features)


class BiSeNet(nn.Module):
    def __init__(self, num_classes: int = 1, keep_imagenet_fc: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
        self.spatial_path = nn.Sequential(conv_bn_relu(3, 64, 2), conv_bn_relu(64, 128, 2), conv_bn_relu(128, 256, 2))
        self.context_path = ResNet18(keep_imagenet_fc)
        self.refine16 = AttentionRefinement(256)
        self.refine32 = AttentionRefinement(512)
        self.aux16 = nn.Conv2d(256, num_classes, 1)
        self.aux32 = nn.Conv2d(512, num_classes, 1)
        self.fusion = FeatureFusion(256 + 256 + 512, num_classes)
        self.classifier = nn.Conv2d(num_classes, num_classes, 1)

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = x.shape[-2:]
        spatial = self.spatial_path(x)
        c16, c32 = self.context_path(x)
        c16 = self.refine16(c16)
        c32 = self.refine32(c32) * F.adaptive_avg_pool2d(c32, 1)
        up16 = F.interpolate(c16, size=spatial.shape[-2:], mode="bilinear", align_corners=True)
        up32 = F.interpolate(c32, size=spatial.shape[-2:], mode="bilinear", align_corners=True)
        fused = self.fusion(spatial, torch.cat([up16, up32], 1))
        logits = self.classifier(F.interpolate(fused, size=size, mode="bilinear", align_corners=True))
        aux = [F.interpolate(head(c), size=size, mode="bilinear", align_corners=True)
               for head, c in ((self.aux16, up16), (self.aux32, up32))]
        return logits, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x)[0]


@register("bisenet", paper_params=12_400_000, paper_params_kwargs={"num_classes": 2, "keep_imagenet_fc": True},
          input_size=224)
def build_bisenet(num_classes: int = 1, keep_imagenet_fc: bool = False) -> nn.Module:
    """BiSeNet, ResNet-18 context path (random init); 12.4M in the paper, with ResNet-18's unused fc."""
    return BiSeNet(num_classes, keep_imagenet_fc)
