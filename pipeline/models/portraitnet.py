"""PortraitNet (Zhang et al., 2019): MobileNetV2 encoder, D-block decoder, boundary auxiliary head.

Follows the official code (dong-x16/PortraitNet, model/model_mobilenetv2_seg_small.py) with
the configuration the paper trains ("two auxiliary losses": ``addEdge: True``,
``useUpsample: False``, ``useDeconvGroup: False``, channel ratio 1.0): 2,080,904
parameters for 2 classes, including the 144 of the boundary head.

- Encoder: MobileNetV2 (inverted residual blocks, expansion 6) down to 1/32, 320 channels.
- Decoder: five D-blocks (the code's ``ResidualBlock``: two depth-wise separable convs with
  a 1x1-conv shortcut when the channel count changes), each followed by a stride-2 4x4
  transposed conv (x2); skip connections add the encoder features at 1/16, 1/8 and 1/4.
  The transposed convs start as bilinear upsamplers (as in the code) and are trained.
- Heads: a 3x3 conv to the class logits; ``forward_with_aux`` also returns the boundary
  head's logits (same shape), trained in the paper with a focal loss on mask edges.

Input sizes: the code needs H and W multiples of 32. Here any size works: the input is
zero-padded on the bottom/right to the next multiple of 32 and the logits are cropped
back, so for multiples of 32 nothing changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import register

# (expansion, output channels, blocks, first stride) per encoder stage, MobileNetV2's table.
ENCODER_STAGES = [
    (1, 16, 1, 1),   # 1/2
    (6, 24, 2, 2),   # 1/4
    (6, 32, 3, 2),   # 1/8
    (6, 64, 4, 2),   # 1/16
    (6, 96, 3, 1),   # 1/16
    (6, 160, 3, 2),  # 1/32
    (6, 320, 1, 1),  # 1/32
]
STRIDE = 32


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depth-wise 3x3, linear 1x1 projection (+ identity)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *conv_bn_relu(in_channels, hidden, 1),
            *conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class DBlock(nn.Module):
    """PortraitNet's decoder block: two depth-wise separable convs, residual sum, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            *conv_bn_relu(in_channels, in_channels, 3, groups=in_channels),
            *conv_bn_relu(in_channels, out_channels, 1),
            *conv_bn_relu(out_channels, out_channels, 3, groups=out_channels),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.block(x) + residual)


def bilinear_kernel(size: int) -> torch.Tensor:
    """The 2-D bilinear interpolation kernel a stride-size/2 transposed conv upsamples with."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return (ramp[:, None] * ramp[None, :]).float()


class PortraitNet(nn.Module):
    """MobileNetV2 encoder-decoder for portraits; 2-class logits at the input resolution."""

    def __init__(self, num_classes: int = 2, add_edge: bool = True, deconv_groups: bool = False):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"PortraitNet: num_classes must be an integer >= 1 (got {num_classes!r})")
        self.stem = nn.Sequential(*conv_bn_relu(3, 32, 3, stride=2))
        stages = []
        in_channels = 32
        for expansion, out_channels, blocks, stride in ENCODER_STAGES:
            layers = []
            for i in range(blocks):
                layers.append(InvertedResidual(in_channels, out_channels, stride if i == 0 else 1, expansion))
                in_channels = out_channels
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        decoder_channels = [(320, 96), (96, 32), (32, 24), (24, 16), (16, 8)]
        self.transits = nn.ModuleList([DBlock(i, o) for i, o in decoder_channels])
        self.deconvs = nn.ModuleList([
            nn.ConvTranspose2d(o, o, 4, stride=2, padding=1, groups=o if deconv_groups else 1, bias=False)
            for _, o in decoder_channels
        ])
        self.pred = nn.Conv2d(8, num_classes, 3, padding=1, bias=False)
        self.edge = nn.Conv2d(8, num_classes, 3, padding=1, bias=False) if add_edge else None
        self._initialise()

    def _initialise(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                kernel = bilinear_kernel(m.kernel_size[0])
                with torch.no_grad():
                    m.weight.zero_()
                    if m.groups == 1:
                        for c in range(m.out_channels):
                            m.weight[c, c] = kernel
                    else:
                        m.weight[:, 0] = kernel
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output at the (padded) input resolution, 8 channels."""
        x = self.stem(x)
        skips = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in (1, 2, 4):  # outputs at 1/4, 1/8, 1/16
                skips.append(x)
        at_4, at_8, at_16 = skips
        up = self.deconvs[0](self.transits[0](x))
        up = self.deconvs[1](self.transits[1](at_16 + up))
        up = self.deconvs[2](self.transits[2](at_8 + up))
        up = self.deconvs[3](self.transits[3](at_4 + up))
        return self.deconvs[4](self.transits[4](up))

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % STRIDE, (-w) % STRIDE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return x, h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self._padded(x)
        return self.pred(self.features(x))[..., :h, :w]

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Main logits and, when the boundary head exists, ``[edge_logits]``."""
        x, h, w = self._padded(x)
        feats = self.features(x)
        aux = [self.edge(feats)[..., :h, :w]] if self.edge is not None else []
        return self.pred(feats)[..., :h, :w], aux


@register("portraitnet", paper_params=2_080_904, paper_params_kwargs={"num_classes": 2},
          description="PortraitNet (Zhang et al. 2019): MobileNetV2 encoder, D-block decoder, boundary head")
def build_portraitnet(num_classes: int = 2, add_edge: bool = True, deconv_groups: bool = False) -> PortraitNet:
    """PortraitNet with the boundary auxiliary head (the paper's training configuration)."""
    return PortraitNet(num_classes=num_classes, add_edge=add_edge, deconv_groups=deconv_groups)
