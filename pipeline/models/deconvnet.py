"""DeconvNet (Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation",
ICCV 2015).

A VGG-16 convolution network, fc6 (7x7 convolution to 4096 on the 7x7 pool5 map, so a
1x1 map at 224x224 input) and fc7 (1x1, 4096), then the mirrored deconvolution network:
a 7x7 deconvolution back to 7x7 and, stage by stage, unpooling with the switches (max
locations) stored by the matching pooling layer followed by 3x3 deconvolutions that
mirror the VGG stage. Batch normalisation follows every convolution and deconvolution,
as in the paper; a 1x1 convolution scores the classes at full resolution.

Choices where the paper leaves room: the deconvolution widths mirror VGG-16 in reverse
(each stage's last deconvolution narrows to the next stage's width, as in the released
model); no dropout (the paper relies on batch normalisation). An input smaller than
224x224 gives a pool5 map under 7x7: it is zero-padded to 7x7 before fc6 and the
deconvolved map cropped back, so every size >= 32 works and 224 runs exactly as the
paper. In training mode the batch must hold at least 2 images, because fc6/fc7 are
batch-normalised over 1x1 maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models._vgg import VGG_STAGES, check_classes, check_width, scaled, vgg_stages
from pipeline.models.registry import register

FC_KERNEL = 7  # fc6 sees a 7x7 pool5 map at 224x224 input


def _deconv_bn_relu(in_ch: int, out_ch: int, kernel: int, padding: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, kernel, padding=padding),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class DeconvNet(nn.Module):
    def __init__(self, num_classes: int = 21, *, width: float = 1.0):
        super().__init__()
        check_classes(num_classes, "DeconvNet")
        check_width(width, "DeconvNet")
        self.stages, channels = vgg_stages(16, width, batch_norm=True)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        fc = scaled(4096, width)
        self.fc6 = nn.Sequential(nn.Conv2d(channels[4], fc, FC_KERNEL), nn.BatchNorm2d(fc), nn.ReLU(inplace=True))
        self.fc7 = nn.Sequential(nn.Conv2d(fc, fc, 1), nn.BatchNorm2d(fc), nn.ReLU(inplace=True))
        self.deconv_fc6 = _deconv_bn_relu(fc, channels[4], FC_KERNEL, 0)
        # Mirror of the VGG stages, deepest first: every deconvolution keeps the stage's
        # width except the last, which narrows to the width of the stage below.
        self.deconv_stages = nn.ModuleList()
        for index in reversed(range(5)):
            widths = [scaled(c, width) for c in VGG_STAGES[16][index]]
            target = channels[index - 1] if index > 0 else widths[-1]
            layers = []
            for position, w in enumerate(widths):
                out = target if position == len(widths) - 1 else w
                layers.append(_deconv_bn_relu(w, out, 3, 1))
            self.deconv_stages.append(nn.Sequential(*layers))
        self.score = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 32 or x.shape[-2] < 32:
            raise ValueError(f"DeconvNet needs inputs of at least 32x32 (got {tuple(x.shape[-2:])})")
        if self.training and x.shape[0] < 2:
            raise ValueError("DeconvNet trains with at least 2 images per batch: fc6/fc7 are batch-normalised "
                             "over 1x1 maps, which one image cannot do")
        switches, sizes = [], []
        h = x
        for stage in self.stages:
            h = stage(h)
            sizes.append(h.shape[-2:])
            h, indices = self.pool(h)
            switches.append(indices)
        pool5_size = h.shape[-2:]
        pad_h, pad_w = max(0, FC_KERNEL - pool5_size[0]), max(0, FC_KERNEL - pool5_size[1])
        if pad_h or pad_w:
            h = F.pad(h, (0, pad_w, 0, pad_h))
        h = self.deconv_fc6(self.fc7(self.fc6(h)))
        h = h[..., :pool5_size[0], :pool5_size[1]]
        for deconv, indices, size in zip(self.deconv_stages, reversed(switches), reversed(sizes)):
            h = deconv(self.unpool(h, indices, output_size=size))
        return self.score(h)


# The paper: "about 252M parameters" (21 classes). This implementation at width 1.0 and
# 21 classes has 251,805,653 (0.08% under 252M): convolution weights and biases plus
# batch-norm scales and shifts; running statistics are buffers, not parameters.
@register("deconvnet", paper_params=252_000_000, paper_params_kwargs={"num_classes": 21}, input_size=224)
def build_deconvnet(num_classes: int = 1, **kwargs) -> nn.Module:
    """DeconvNet: VGG-16 + fc6/fc7 + mirrored deconvolution network with switch unpooling, BN throughout."""
    return DeconvNet(num_classes, **kwargs)
