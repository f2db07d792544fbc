"""C-DLinkNet (Lu et al., "C-DLinkNet: considering multi-level semantic features for human
parsing", 2020), a human-parsing net (LIP, 20 classes) run here with 2 classes for portraits.

D-LinkNet's layout: a ResNet-34 encoder (our own, randomly initialised: nothing is
downloaded), a centre block on the stride-32 features, and LinkNet's decoder (per block:
1x1 reduce to a quarter, 3x3 stride-2 transposed convolution, 1x1 expand; the output is
added to the encoder features of the same stride). C-DLinkNet's changes, as we read them:
- the centre block is an ASPP with atrous rates 12, 24, 36 (plus DeepLab-v3's 1x1 and
  image-pooling branches), projected back to the encoder's width;
- a Smooth module concatenates the outputs of all four decoder blocks (upsampled to the
  stride-2 map), fuses them with a 3x3 convolution and feeds the final head (D-LinkNet's
  4x4 stride-2 transposed convolution and two 3x3 convolutions) that gives the refined
  prediction;
- multi-scale supervision: every decoder block also gets a 1x1 classifier; the loss is
  loss(refined) + 0.5 x sum of the four decoder losses (``cdlinknet_loss``).
The image-pooling branch has no batch norm, so training works with one image per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models._vgg import check_classes, check_width, scaled
from pipeline.models.registry import register

RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
ASPP_RATES = (12, 24, 36)
AUX_WEIGHT = 0.5


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn_relu(in_ch, out_ch, 3, stride)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity() if stride == 1 and in_ch == out_ch else nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x), inplace=True)


class ResNetEncoder(nn.Module):
    """ResNet-18/34 without its classifier; returns the stride 4, 8, 16 and 32 features."""

    def __init__(self, depth: int = 34, width: float = 1.0):
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"C-DLinkNet encoder depth must be one of {sorted(RESNET_BLOCKS)} (got {depth})")
        stem = scaled(64, width)
        self.stem = nn.Sequential(_conv_bn_relu(3, stem, 7, 2), nn.MaxPool2d(3, 2, 1))
        self.channels = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.layers = nn.ModuleList()
        in_ch = stem
        for index, (blocks, out_ch) in enumerate(zip(RESNET_BLOCKS[depth], self.channels)):
            stride = 1 if index == 0 else 2
            layer = [BasicBlock(in_ch, out_ch, stride)] + [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
            self.layers.append(nn.Sequential(*layer))
            in_ch = out_ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        h = self.stem(x)
        for layer in self.layers:
            h = layer(h)
            features.append(h)
        return features


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3 and image pooling, concatenated."""

    def __init__(self, in_ch: int, branch_ch: int, out_ch: int, rates: tuple[int, ...] = ASPP_RATES):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_ch, branch_ch, 1)] +
                                      [_conv_bn_relu(in_ch, branch_ch, 3, dilation=r) for r in rates])
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, branch_ch, 1), nn.ReLU(inplace=True))
        self.project = _conv_bn_relu(branch_ch * (len(rates) + 2), out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class LinkNetDecoderBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        mid = max(1, in_ch // 4)
        self.reduce = _conv_bn_relu(in_ch, mid, 1)
        self.up = nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, bias=False)
        self.up_bn = nn.BatchNorm2d(mid)
        self.expand = _conv_bn_relu(mid, out_ch, 1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        h = self.up(self.reduce(x), output_size=size)  # output_size resolves odd skip sizes
        return self.expand(F.relu(self.up_bn(h), inplace=True))


class CDLinkNet(nn.Module):
    def __init__(self, num_classes: int = 20, *, width: float = 1.0, encoder_depth: int = 34):
        super().__init__()
        check_classes(num_classes, "C-DLinkNet")
        check_width(width, "C-DLinkNet")
        self.encoder = ResNetEncoder(encoder_depth, width)
        c1, c2, c3, c4 = self.encoder.channels
        self.center = ASPP(c4, scaled(256, width), c4)
        self.decoders = nn.ModuleList([LinkNetDecoderBlock(c4, c3), LinkNetDecoderBlock(c3, c2),
                                       LinkNetDecoderBlock(c2, c1), LinkNetDecoderBlock(c1, c1)])
        decoder_channels = (c3, c2, c1, c1)
        self.aux_heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in decoder_channels)
        self.smooth = _conv_bn_relu(sum(decoder_channels), c1, 3)
        head = scaled(32, width)
        self.final = nn.Sequential(nn.ConvTranspose2d(c1, head, 4, 2, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(head, head, 3, padding=1), nn.ReLU(inplace=True),
                                   nn.Conv2d(head, num_classes, 3, padding=1))

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        e1, e2, e3, e4 = self.encoder(x)
        h = self.center(e4)
        outputs = []
        for decoder, skip in zip(self.decoders[:3], (e3, e2, e1)):
            h = decoder(h, skip.shape[-2:]) + skip
            outputs.append(h)
        stride2 = (e1.shape[-2] * 2, e1.shape[-1] * 2)
        outputs.append(self.decoders[3](h, stride2))
        fused = torch.cat([outputs[-1]] + [F.interpolate(o, size=stride2, mode="bilinear", align_corners=False)
                                           for o in outputs[:-1]], dim=1)
        refined = self.final(self.smooth(fused))
        if refined.shape[-2:] != x.shape[-2:]:
            refined = F.interpolate(refined, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return refined, outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._decode(x)[0]

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Refined logits and the four decoder-level logits, all at the input resolution."""
        refined, outputs = self._decode(x)
        aux = [F.interpolate(head(o), size=x.shape[-2:], mode="bilinear", align_corners=False)
               for head, o in zip(self.aux_heads, outputs)]
        return refined, aux


def _segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    if logits.shape[1] == 1:
        valid = target != ignore_index
        return F.binary_cross_entropy_with_logits(logits[:, 0][valid], target[valid].to(logits.dtype))
    return F.cross_entropy(logits, target.long(), ignore_index=ignore_index)


def cdlinknet_loss(logits: torch.Tensor, aux_logits: list[torch.Tensor], target: torch.Tensor, *,
                   aux_weight: float = AUX_WEIGHT, ignore_index: int = 255) -> torch.Tensor:
    """loss(refined) + aux_weight x sum of the decoder losses; target (N, H, W) class indices.

    Cross-entropy for C >= 2; binary cross-entropy on the foreground logit for C = 1.
    """
    if target.dim() != 3 or target.shape[0] != logits.shape[0] or target.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"target must be (N, H, W) matching logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    loss = _segmentation_loss(logits, target, ignore_index)
    for aux in aux_logits:
        loss = loss + aux_weight * _segmentation_loss(aux, target, ignore_index)
    return loss


def paper_loss(model: CDLinkNet, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Trainer hook: the multi-scale loss on a (N, H, W) 0/1 (or class-index) mask batch."""
    return cdlinknet_loss(*model.forward_with_aux(images), masks)


# The paper gives no parameter count; the count at 20 classes (LIP) is pinned in
# tests/test_models_cdlinknet.py.
@register("c_dlinknet", input_size=224)
def build_cdlinknet(num_classes: int = 1, **kwargs) -> nn.Module:
    """C-DLinkNet: ResNet-34 LinkNet with an ASPP centre, a Smooth module and multi-scale auxiliary loss."""
    return CDLinkNet(num_classes, **kwargs)
