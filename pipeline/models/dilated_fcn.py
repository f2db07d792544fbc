"""Dilated FCN-2s (Kamran et al., "Efficient Yet Deep Convolutional Neural Networks for
Semantic Segmentation", 2017), on VGG-16 and VGG-19.

An FCN whose fc6 is a 3x3 convolution with dilation 3 instead of FCN's 7x7 (the reason it
has about a third of FCN-8s's parameters), followed by fc7 (1x1, 4096) and a class score.
Four skips (pool4, pool3, pool2, pool1) are scored by 1x1 convolutions and summed in
steps with the stride-2 upsampled score, taking the prediction from stride 32 down to
stride 2; a last stride-2 upsampling returns to the input resolution.

Reading of the official Caffe definition (SharifAmit/DilatedFCNSegmentation), and where
this implementation departs from it:
- The upsampling layers there are bilinear deconvolutions with learning rate 0 (fixed),
  so here they are bilinear interpolation to the skip's size: the same operation on the
  interior, no parameters (Caffe would list 5 x C*C*16 frozen weights), and any input
  size works without Caffe's pad-100-then-crop scheme; fc6 pads by 3 to keep the size.
- Caffe scales pool4/3/2/1 by fixed 1e-2/1e-4/1e-6/1e-8 before scoring ("at-once"
  fine-tuning from ImageNet weights). From scratch those factors silence the skips, so
  they are off by default (``skip_scales=None``); pass ``OFFICIAL_SKIP_SCALES`` to use them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models._vgg import check_classes, check_dropout, check_width, scaled, vgg_stages
from pipeline.models.registry import register

OFFICIAL_SKIP_SCALES = (1e-2, 1e-4, 1e-6, 1e-8)  # pool4, pool3, pool2, pool1 in the Caffe definition


class DilatedFCN2s(nn.Module):
    def __init__(self, num_classes: int = 1, depth: int = 16, *, width: float = 1.0, dropout: float = 0.5,
                 skip_scales: tuple[float, float, float, float] | None = None):
        super().__init__()
        check_classes(num_classes, "DilatedFCN2s")
        check_width(width, "DilatedFCN2s")
        check_dropout(dropout, "DilatedFCN2s")
        if skip_scales is not None and len(skip_scales) != 4:
            raise ValueError(f"DilatedFCN2s: skip_scales needs 4 factors (pool4..pool1), got {skip_scales}")
        self.stages, channels = vgg_stages(depth, width)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        fc = scaled(4096, width)
        self.fc6 = nn.Conv2d(channels[4], fc, 3, padding=3, dilation=3)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        # Skips from the deepest (pool4, stride 16) to the shallowest (pool1, stride 2).
        self.score_skips = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in reversed(channels[:4]))
        self.skip_scales = tuple(skip_scales) if skip_scales is not None else (1.0, 1.0, 1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        h = x
        for stage in self.stages:
            h = self.pool(stage(h))
            pooled.append(h)
        h = self.drop(F.relu(self.fc6(h), inplace=True))
        h = self.drop(F.relu(self.fc7(h), inplace=True))
        score = self.score_fr(h)
        for skip, score_skip, factor in zip(reversed(pooled[:4]), self.score_skips, self.skip_scales):
            score = F.interpolate(score, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            score = score + score_skip(skip * factor if factor != 1.0 else skip)
        return F.interpolate(score, size=x.shape[-2:], mode="bilinear", align_corners=False)


# The paper gives no exact count, only "about one third of FCN-8s" (134.3M): the 21-class
# VGG-16 model here has 50,480,745 parameters (0.376 of FCN-8s), VGG-19 55,790,441; the
# Caffe definition would add 35,280 frozen bilinear weights (5 x 21 x 21 x 4 x 4).
@register("dilated_fcn2s_vgg16", input_size=224)
def build_dilated_fcn2s_vgg16(num_classes: int = 1, **kwargs) -> nn.Module:
    """Dilated FCN-2s on VGG-16: fc6 as a 3x3 dilation-3 conv, four summed skips down to stride 2."""
    return DilatedFCN2s(num_classes, 16, **kwargs)


@register("dilated_fcn2s_vgg19", input_size=224)
def build_dilated_fcn2s_vgg19(num_classes: int = 1, **kwargs) -> nn.Module:
    """Dilated FCN-2s on VGG-19: fc6 as a 3x3 dilation-3 conv, four summed skips down to stride 2."""
    return DilatedFCN2s(num_classes, 19, **kwargs)
