"""ENet (Paszke et al., 2016), a comparison model of the ExtremeC3Net paper (355K parameters).

The structure is the widely used PyTorch port (davidtvs/PyTorch-ENet): an initial block
(strided 3x3 conv beside a max-pool), bottlenecks that project by 4, dilated and
asymmetric (5x1 then 1x5) convolutions in stages 2-3, max-unpooling in the decoder,
PReLU in the encoder and ReLU in the decoder. Unlike that port (one shared single-slope
PReLU per bottleneck: 349,142 parameters at 2 classes), every encoder activation is a
channel-wise PReLU as in the original Torch ENet; that is what reproduces the 355K.
Max-pool indices are kept for unpooling, so odd input sizes work.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.registry import register


def _activation(prelu: bool, channels: int) -> nn.Module:
    return nn.PReLU(channels) if prelu else nn.ReLU()


def _conv_bn(in_ch: int, out_ch: int, kernel, prelu: bool, **conv_kwargs) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, bias=False, **conv_kwargs), nn.BatchNorm2d(out_ch),
            _activation(prelu, out_ch)]


class InitialBlock(nn.Module):
    def __init__(self, out_ch: int = 16, prelu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, out_ch - 3, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = _activation(prelu, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class Bottleneck(nn.Module):
    """Regular bottleneck: 1x1 projection, 3x3 (dilated) or 5x1+1x5 conv, 1x1 expansion, residual."""

    def __init__(self, channels: int, *, dilation: int = 1, asymmetric: bool = False, dropout: float = 0.1,
                 prelu: bool = True):
        super().__init__()
        inner = channels // 4
        if asymmetric:
            middle = _conv_bn(inner, inner, (5, 1), prelu, padding=(2, 0)) + _conv_bn(inner, inner, (1, 5), prelu,
                                                                                     padding=(0, 2))
        else:
            middle = _conv_bn(inner, inner, 3, prelu, padding=dilation, dilation=dilation)
        self.branch = nn.Sequential(*_conv_bn(channels, inner, 1, prelu), *middle, *_conv_bn(inner, channels, 1, prelu),
                                    nn.Dropout2d(dropout))
        self.act = _activation(prelu, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.branch(x))


class DownBottleneck(nn.Module):
    """Max-pool (indices kept) beside a strided 2x2 bottleneck; the pooled branch is zero-padded in channels."""

    def __init__(self, in_ch: int, out_ch: int, *, dropout: float, prelu: bool = True):
        super().__init__()
        inner = in_ch // 4
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.branch = nn.Sequential(*_conv_bn(in_ch, inner, 2, prelu, stride=2), *_conv_bn(inner, inner, 3, prelu, padding=1),
                                    *_conv_bn(inner, out_ch, 1, prelu), nn.Dropout2d(dropout))
        self.act = _activation(prelu, out_ch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, indices = self.pool(x)
        ext = self.branch(x)
        main = torch.cat([main, main.new_zeros(main.shape[0], ext.shape[1] - main.shape[1], *main.shape[2:])], 1)
        return self.act(main + ext), indices


class UpBottleneck(nn.Module):
    """1x1 conv + max-unpool beside a 1x1 / transposed 2x2 / 1x1 bottleneck."""

    def __init__(self, in_ch: int, out_ch: int, *, dropout: float = 0.1, prelu: bool = False):
        super().__init__()
        inner = in_ch // 4
        self.main = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.unpool = nn.MaxUnpool2d(2)
        self.project = nn.Sequential(*_conv_bn(in_ch, inner, 1, prelu))
        self.up = nn.ConvTranspose2d(inner, inner, 2, stride=2, bias=False)
        self.expand = nn.Sequential(nn.BatchNorm2d(inner), _activation(prelu, inner), *_conv_bn(inner, out_ch, 1, prelu),
                                    nn.Dropout2d(dropout))
        self.act = _activation(prelu, out_ch)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
        main = self.unpool(self.main(x), indices, output_size=size)
        ext = self.expand(self.up(self.project(x), output_size=size))
        return self.act(main + ext)


def _stage_body(prelu: bool) -> list[nn.Module]:
    # Stages 2 and 3 share this pattern: regular, dilated 2, asymmetric, dilated 4, regular, 8, asym, 16.
    return [Bottleneck(128, prelu=prelu), Bottleneck(128, dilation=2, prelu=prelu),
            Bottleneck(128, asymmetric=True, prelu=prelu), Bottleneck(128, dilation=4, prelu=prelu),
            Bottleneck(128, prelu=prelu), Bottleneck(128, dilation=8, prelu=prelu),
            Bottleneck(128, asymmetric=True, prelu=prelu), Bottleneck(128, dilation=16, prelu=prelu)]


class ENet(nn.Module):
    def __init__(self, num_classes: int = 1):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
        self.initial = InitialBlock(16)
        self.down1 = DownBottleneck(16, 64, dropout=0.01)
        self.stage1 = nn.Sequential(*(Bottleneck(64, dropout=0.01) for _ in range(4)))
        self.down2 = DownBottleneck(64, 128, dropout=0.1)
        self.stage2 = nn.Sequential(*_stage_body(True))
        self.stage3 = nn.Sequential(*_stage_body(True))  # same pattern, no down-sampling before it
        self.up4 = UpBottleneck(128, 64)
        self.stage4 = nn.Sequential(Bottleneck(64, prelu=False), Bottleneck(64, prelu=False))
        self.up5 = UpBottleneck(64, 16)
        self.stage5 = Bottleneck(16, prelu=False)
        self.classifier = nn.ConvTranspose2d(16, num_classes, 3, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape
        x = self.initial(x)
        size1 = x.shape
        x, indices1 = self.down1(x)
        x = self.stage1(x)
        size2 = x.shape
        x, indices2 = self.down2(x)
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, indices2, size2))
        x = self.stage5(self.up5(x, indices1, size1))
        return self.classifier(x, output_size=size[-2:])


@register("enet", paper_params=355_000, paper_params_kwargs={"num_classes": 2}, input_size=224)
def build_enet(num_classes: int = 1) -> nn.Module:
    """ENet (davidtvs/PyTorch-ENet structure); 355K in the ExtremeC3Net paper (2 classes)."""
    return ENet(num_classes)
