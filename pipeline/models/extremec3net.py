"""ExtremeC3Net (Park et al., 2019): a 37.7K-parameter portrait segmenter built from advanced C3 modules.

Structure, following the official code (clovaai/ext_portrait_segmentation, models/extremeC3.py)
because the pinned parameter count (37,738 for one output channel, p=1, q=5) comes from it:

- **Advanced C3 module**: a 1x1 (or, when down-sampling, a stride-2 3x3) reduction to n = C/3
  channels feeding three parallel C3 blocks with different dilation ratios, concatenated,
  an optional residual sum, then BN + PReLU. A C3 block with dilation d > 1 is a depth-wise
  (2d-1)x1 conv, BN, PReLU, a depth-wise 1x(2d-1) conv, BN, a depth-wise 3x3 conv with
  dilation d and a 1x1 conv; with d = 1 it is a depth-wise 3x3 conv and a 1x1 conv. When C
  is not a multiple of 3 the first block gets the extra channels.
- **CoarseNet** (the stage-1 network): stride-2 CBR (3->24), the image down-sampled x2
  concatenated (BN+PReLU over 27 channels), a down-sampling C3 module (27->48, ratios
  1,2,3), p C3 modules (48, ratios 1,3,4), concatenation of their output, the first
  module's output and the image down-sampled x4 (BN+PReLU over 99), a C3 module without
  residual (99->56, ratios 1,3,5: a 1x1 reduction, so no further down-sampling), q C3
  modules (56, ratios 2,4,8), and a BN+PReLU over the concatenation of the last two (112).
  Its features are at 1/4 of the input resolution.
- **FineNet**: a stride-2 3x3 conv (3->24) and one C3 module (24, ratios 2,4,8).
- **Head**: 1x1 conv (112->24) + BN on the coarse features, bilinear upsampling x2 to the
  fine features' size, element-wise sum, BN+PReLU, bilinear upsampling x2 to the input
  size, 1x1 conv to the classes. No deconvolution. The two upsamplings make the coarse
  branch x4 in total and the fine branch x2, as in the paper.

Where the paper and the code differ: the paper's Table 1 lists other dilation ratios for
some layers; the code's per-layer ratios (above) are used. The code's C3-block BNs use
PyTorch's default eps (1e-5) while its BR/CBR use 1e-3; kept as in the code. Upsampling is
``UpsamplingBilinear2d`` in the code, i.e. ``align_corners=True``; kept.

Odd input sizes: the official code only works when H and W are multiples of 4 (its x2 and
x4 average-pooled images stop matching the stride-2 convs' outputs otherwise). Here the
image pyramid pools with ``ceil_mode=True`` (a border window averages the pixels it has) and
each upsampling targets the exact size of the tensor it is summed with, then the input
size. For H and W multiples of 4 this computes exactly what the official code computes.

Stage 1 (``extremec3net_stage1``): CoarseNet with its own 1x1 classifier. The official
trainer compares its 1/4-resolution output with labels down-sampled by 4 (``scaleIn: 4``).
Here ``forward`` upsamples the 1/4 logits bilinearly to the input size (the registry's
convention); ``forward_low_res`` returns the raw 1/4 map for the official scheme. Its
encoder weights initialise the full model through ``load_stage1_into``.

Inference speed: ``pipeline.deploy.deploy(model)`` returns an equivalent
inference-only form; see that module.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import register
from pipeline.trainops import batchnorm_prelu, depthwise_conv, is_depthwise

COARSE_STEM = 24
LEVEL2_CHANNELS = 48
LEVEL3_CHANNELS = 56
FINE_CHANNELS = 24
BR_EPS = 1e-3
MAX_REPEATS = 100  # p, q: the paper uses 1 and 5; thousands of modules only stall the builder


def check_arguments(num_classes: int, p: int, q: int) -> None:
    """Refuse what would build a broken net (no output channel) or fail obscurely (a float depth)."""
    for name, value, low in (("num_classes", num_classes, 1), ("p", p, 1), ("q", q, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"ExtremeC3Net: {name} must be an integer >= {low} (got {value!r})")
    for name, value in (("p", p), ("q", q)):
        if value > MAX_REPEATS:
            raise ValueError(f"ExtremeC3Net: {name} must be <= {MAX_REPEATS} (got {value})")


class BNPReLU(nn.Module):
    """BN then PReLU: the code's ``BR``."""

    def __init__(self, channels: int, eps: float = BR_EPS):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batchnorm_prelu(x, self.bn, self.act)


class ConvBNPReLU(nn.Module):
    """Bias-free conv, BN, PReLU: the code's ``CBR``."""

    _bn_after_conv = (("conv", "bn"),)  # for pipeline.deploy.fold_batchnorms

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BR_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batchnorm_prelu(self.conv(x), self.bn, self.act)


class C3Block(nn.Module):
    """One dilated branch of a C3 module: factorised depth-wise convs, then a 1x1 projection.

    For d > 1 the (2d-1)x1 / 1x(2d-1) pair widens the receptive field of each tap of the
    dilated 3x3 conv, which removes the gridding artefacts of a plain dilated conv.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int):
        super().__init__()
        self.dilation = dilation
        c = in_channels
        layers: list[nn.Module] = []
        if dilation > 1:
            k = 2 * dilation - 1
            layers += [
                nn.Conv2d(c, c, (k, 1), padding=(dilation - 1, 0), groups=c, bias=False),
                nn.BatchNorm2d(c),
                nn.PReLU(c),
                nn.Conv2d(c, c, (1, k), padding=(0, dilation - 1), groups=c, bias=False),
                nn.BatchNorm2d(c),
            ]
        layers += [
            nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, out_channels, 1, bias=False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers, i = list(self.conv), 0
        while i < len(layers):  # as nn.Sequential, each BN (+ PReLU) as one op
            layer = layers[i]
            if isinstance(layer, nn.BatchNorm2d):
                act = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.PReLU) else None
                x = batchnorm_prelu(x, layer, act)
                i += 1 if act is None else 2
            else:
                x = depthwise_conv(x, layer) if is_depthwise(layer) else layer(x)
                i += 1
        return x


class AdvancedC3(nn.Module):
    """Reduce -> three parallel C3 blocks -> concatenate (-> residual) -> BN + PReLU.

    ``downsample=True`` is the code's ``Down_advancedC3``: the reduction is a stride-2 3x3
    conv and there is no residual.
    """

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int] = (2, 4, 8),
                 residual: bool = True, downsample: bool = False):
        super().__init__()
        if len(dilations) != 3:
            raise ValueError(f"an advanced C3 module has three branches, got dilations {tuple(dilations)}")
        if residual and (downsample or in_channels != out_channels):
            raise ValueError("a residual C3 module needs in_channels == out_channels and no down-sampling")
        n = out_channels // 3
        extra = out_channels - 3 * n
        self.residual = residual
        self.downsample = downsample
        self.dilations = tuple(int(d) for d in dilations)
        if downsample:
            self.reduce = nn.Conv2d(in_channels, n, 3, stride=2, padding=1, bias=False)
        else:
            self.reduce = nn.Conv2d(in_channels, n, 1, bias=False)
        self.branches = nn.ModuleList([
            C3Block(n, n + extra, self.dilations[0]),
            C3Block(n, n, self.dilations[1]),
            C3Block(n, n, self.dilations[2]),
        ])
        self.out = BNPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        merged = torch.cat([branch(reduced) for branch in self.branches], 1)
        if self.residual:
            merged = merged + x
        return self.out(merged)


def downsample_image(x: torch.Tensor, times: int) -> torch.Tensor:
    """Average-pool x2 ``times`` times; ceil mode keeps sizes equal to a stride-2 conv's."""
    for _ in range(times):
        x = F.avg_pool2d(x, 2, stride=2, ceil_mode=True)
    return x


class CoarseEncoder(nn.Module):
    """CoarseNet without its classifier: features at 1/4 resolution, 2 * 56 channels."""

    def __init__(self, p: int = 1, q: int = 5):
        super().__init__()
        check_arguments(1, p, q)
        self.level1 = ConvBNPReLU(3, COARSE_STEM, 3, stride=2)
        self.bn1 = BNPReLU(COARSE_STEM + 3)
        self.level2_0 = AdvancedC3(COARSE_STEM + 3, LEVEL2_CHANNELS, (1, 2, 3), residual=False, downsample=True)
        self.level2 = nn.ModuleList([AdvancedC3(LEVEL2_CHANNELS, LEVEL2_CHANNELS, (1, 3, 4)) for _ in range(p)])
        self.bn2 = BNPReLU(2 * LEVEL2_CHANNELS + 3)
        self.level3_0 = AdvancedC3(2 * LEVEL2_CHANNELS + 3, LEVEL3_CHANNELS, (1, 3, 5), residual=False)
        self.level3 = nn.ModuleList([AdvancedC3(LEVEL3_CHANNELS, LEVEL3_CHANNELS, (2, 4, 8)) for _ in range(q)])
        self.bn3 = BNPReLU(2 * LEVEL3_CHANNELS)

    out_channels = 2 * LEVEL3_CHANNELS

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        half = downsample_image(image, 1)
        quarter = downsample_image(half, 1)
        x0 = self.bn1(torch.cat([self.level1(image), half], 1))
        x1_0 = self.level2_0(x0)
        x1 = x1_0
        for layer in self.level2:
            x1 = layer(x1)
        x2_0 = self.level3_0(self.bn2(torch.cat([x1, x1_0, quarter], 1)))
        x2 = x2_0
        for layer in self.level3:
            x2 = layer(x2)
        return self.bn3(torch.cat([x2_0, x2], 1))


class ExtremeC3NetStage1(nn.Module):
    """CoarseNet alone (stage-1 training): encoder + 1x1 classifier at 1/4 resolution."""

    def __init__(self, num_classes: int = 1, p: int = 1, q: int = 5):
        super().__init__()
        check_arguments(num_classes, p, q)
        self.encoder = CoarseEncoder(p, q)
        self.classifier = nn.Conv2d(CoarseEncoder.out_channels, num_classes, 1, bias=False)

    def forward_low_res(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the encoder's resolution (ceil(ceil(H/2)/2)), as the official stage 1 trains."""
        return self.classifier(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.forward_low_res(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ExtremeC3Net(nn.Module):
    """Full two-branch network: CoarseNet features (x4 up) + FineNet features (x2 up)."""

    _bn_after_conv = (("coarse_proj", "coarse_bn"),)  # for pipeline.deploy.fold_batchnorms

    def __init__(self, num_classes: int = 1, p: int = 1, q: int = 5):
        super().__init__()
        check_arguments(num_classes, p, q)
        # None: the classifier before the last upsampling in training only (see forward);
        # True: always (fuse_for_inference); False: never, the official code's order
        self.classify_before_upsampling: bool | None = None
        self.encoder = CoarseEncoder(p, q)
        self.coarse_proj = nn.Conv2d(CoarseEncoder.out_channels, FINE_CHANNELS, 1, bias=False)
        self.coarse_bn = nn.BatchNorm2d(FINE_CHANNELS)
        self.fine_stem = nn.Conv2d(3, FINE_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.fine_c3 = AdvancedC3(FINE_CHANNELS, FINE_CHANNELS, (2, 4, 8))
        self.head_act = BNPReLU(FINE_CHANNELS)
        self.classifier = nn.Conv2d(FINE_CHANNELS, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fine_c3(self.fine_stem(x))
        coarse = batchnorm_prelu(self.coarse_proj(self.encoder(x)), self.coarse_bn)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=True)
        merged = self.head_act(coarse + fine)
        # The 1x1 classifier before the last upsampling is the same function (see fuse_for_inference)
        # and in training saves the step's largest op: the classifier's backward on a full-size
        # 24-channel map (benchmarks/train_step.py). Evaluation keeps the code's order unless
        # fused, so FLOPs are counted as the paper counts them.
        early = self.training if self.classify_before_upsampling is None else self.classify_before_upsampling
        if early:
            return F.interpolate(self.classifier(merged), size=x.shape[-2:], mode="bilinear", align_corners=True)
        merged = F.interpolate(merged, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(merged)

    def fuse_for_inference(self) -> None:
        """Apply the 1x1 classifier before the last upsampling: both are linear and act on
        different axes (channels vs pixels, interpolation weights summing to 1), so the
        result is the same while the upsampling handles num_classes channels instead of 24."""
        self.classify_before_upsampling = True


def load_stage1_into(full_model: ExtremeC3Net, stage1_state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy a trained stage-1 CoarseNet's encoder into ``full_model``; return the keys copied.

    The stage-1 classifier has no counterpart in the full model and is skipped. Raises
    ValueError if an encoder tensor is missing or has another shape (a different p, q).
    """
    prefix = "encoder."
    target = full_model.state_dict()
    wanted = [k for k in target if k.startswith(prefix)]
    missing = [k for k in wanted if k not in stage1_state_dict]
    if missing:
        raise ValueError(f"stage-1 state dict lacks {len(missing)} encoder tensor(s), e.g. {missing[0]!r}: "
                         "is it an extremec3net_stage1 checkpoint?")
    bad = [k for k in wanted if tuple(stage1_state_dict[k].shape) != tuple(target[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"stage-1 tensor {k!r} has shape {tuple(stage1_state_dict[k].shape)}, the full model "
                         f"expects {tuple(target[k].shape)} (different p/q?)")
    with torch.no_grad():
        for k in wanted:
            target[k].copy_(stage1_state_dict[k])
    return wanted


@register("extremec3net", paper_params=37_738, paper_params_kwargs={"num_classes": 1, "p": 1, "q": 5},
          description="ExtremeC3Net (Park et al. 2019): CoarseNet + FineNet of advanced C3 modules")
def build_extremec3net(num_classes: int = 1, p: int = 1, q: int = 5) -> ExtremeC3Net:
    """ExtremeC3Net, full model (stage 2)."""
    return ExtremeC3Net(num_classes=num_classes, p=p, q=q)


@register("extremec3net_stage1", paper_params=33_178, paper_params_kwargs={"num_classes": 1, "p": 1, "q": 5},
          description="ExtremeC3Net stage 1: CoarseNet alone, logits upsampled to the input size")
def build_extremec3net_stage1(num_classes: int = 1, p: int = 1, q: int = 5) -> ExtremeC3NetStage1:
    """ExtremeC3Net stage 1 (CoarseNet alone)."""
    return ExtremeC3NetStage1(num_classes=num_classes, p=p, q=q)
