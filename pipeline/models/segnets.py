"""Simple-seg-net, Alex-seg-net and VGG-seg-net, from "Fast and accurate human segmentation
with very deep CNNs" (trained on the Baidu people-segmentation dataset), with their loss
(squared L2 on the sigmoid output) and metrics (overlap accuracy, mean reconstruction error).

The nets are image-by-image regressors, not fully convolutional: a convolution trunk, then
fully connected layers whose last layer emits one value per mask pixel, reshaped to the
native mask size (48x48 at 48x48 input; ``native_size=112`` for the 112x112 variant) and
read through a sigmoid. The paper's exact layer table was not available to us; this is
our reading of its description, with each trunk taken from the network it is named after:

- Simple-seg-net: three 5-5-3 convolution + 2x2 max-pool stages (32, 64, 128 channels),
  one hidden FC layer of 1024, then the mask layer.
- Alex-seg-net: AlexNet's five convolutions (96-11, 256-5, 384-3, 384-3, 256-3) with its
  overlapping 3x3/2 max-pools, no local response normalisation, AlexNet's two hidden FC
  layers of 4096; conv1 strides by native_size // 48 (1 at 48 px, 2 at 112 px) instead of
  AlexNet's 4, which a 48-px input cannot afford.
- VGG-seg-net: VGG-16's thirteen convolutions and five 2x2 max-pools (ceil mode, so a
  48-px input ends at 2x2), VGG's two hidden FC layers of 4096.
Hidden FC layers use dropout 0.5 in Alex/VGG (as their parents do), none in Simple.

Registry convention: ``forward`` resizes the input to the native size (antialiased
bilinear), predicts the native mask and upsamples its logits bilinearly back to the input
size; ``forward_native`` returns the native-size logits, where the paper's loss and
metrics live (the loss also accepts full-size logits and resizes the target to them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models._vgg import VGG_STAGES, check_classes, check_dropout, check_width, scaled
from pipeline.models.registry import register

# Per net: convolution stages as ((out_channels, kernel), ...) each followed by a pooling,
# the pooling (kernel, stride), and the hidden FC widths.
SEGNET_DESIGNS: dict[str, dict] = {
    "simple": {"stages": (((32, 5),), ((64, 5),), ((128, 3),)), "pool": (2, 2), "hidden": (1024,),
               "dropout": 0.0},
    "alex": {"stages": (((96, 11),), ((256, 5),), ((384, 3), (384, 3), (256, 3))), "pool": (3, 2),
             "hidden": (4096, 4096), "dropout": 0.5, "strided_conv1": True},
    "vgg": {"stages": tuple(tuple((c, 3) for c in stage) for stage in VGG_STAGES[16]), "pool": (2, 2),
            "hidden": (4096, 4096), "dropout": 0.5},
}


def _pooled_size(size: int, kernel: int, stride: int) -> int:
    """Output size of a ceil-mode max-pool without padding (torch's rule)."""
    out = math.ceil((size - kernel) / stride) + 1
    if (out - 1) * stride >= size:  # the last window must start inside the input
        out -= 1
    return out


class SegNetFC(nn.Module):
    """Convolution trunk + fully connected layers that output the whole native-size mask."""

    def __init__(self, design: str, num_classes: int = 1, *, native_size: int = 48, width: float = 1.0,
                 dropout: float | None = None):
        super().__init__()
        if design not in SEGNET_DESIGNS:
            raise ValueError(f"unknown seg-net design {design!r}; known: {', '.join(SEGNET_DESIGNS)}")
        check_classes(num_classes, f"{design}-seg-net")
        check_width(width, f"{design}-seg-net")
        check_dropout(dropout, f"{design}-seg-net")
        spec = SEGNET_DESIGNS[design]
        kernel, stride = spec["pool"]
        if native_size < 16:
            raise ValueError(f"{design}-seg-net: native_size must be >= 16 (got {native_size})")
        self.num_classes, self.native_size = num_classes, native_size
        layers: list[nn.Module] = []
        channels, size = 3, native_size
        conv_stride = max(1, native_size // 48) if spec.get("strided_conv1") else 1
        for stage in spec["stages"]:
            for out, k in stage:
                out = scaled(out, width)
                layers += [nn.Conv2d(channels, out, k, conv_stride, padding=k // 2), nn.ReLU(inplace=True)]
                size = (size + 2 * (k // 2) - k) // conv_stride + 1
                channels, conv_stride = out, 1
            layers.append(nn.MaxPool2d(kernel, stride, ceil_mode=True))
            size = _pooled_size(size, kernel, stride)
        self.trunk = nn.Sequential(*layers)
        self.trunk_output = (channels, size, size)
        drop = spec["dropout"] if dropout is None else dropout
        fc: list[nn.Module] = [nn.Flatten()]
        features = channels * size * size
        for hidden in spec["hidden"]:
            hidden = scaled(hidden, width)
            fc += [nn.Linear(features, hidden), nn.ReLU(inplace=True)]
            if drop > 0:
                fc.append(nn.Dropout(drop))
            features = hidden
        fc.append(nn.Linear(features, num_classes * native_size * native_size))
        self.head = nn.Sequential(*fc)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, s, s) mask logits at the native size s, whatever the input size."""
        s = self.native_size
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return self.head(self.trunk(x)).view(x.shape[0], self.num_classes, s, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_native(x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def _mask_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Target as float (N, 1, h, w) in [0, 1] at the logits' size (area-averaged if resized)."""
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"seg-net loss and metrics need one-channel logits (N, 1, H, W), got {tuple(logits.shape)}")
    if target.dim() == 3:
        target = target[:, None]
    if target.dim() != 4 or target.shape[0] != logits.shape[0] or target.shape[1] != 1:
        raise ValueError(f"mask target must be (N, H, W) or (N, 1, H, W) matching the batch, got {tuple(target.shape)}")
    target = target.to(logits.dtype)
    if target.shape[-2:] != logits.shape[-2:]:
        target = F.interpolate(target, size=logits.shape[-2:], mode="area")
    return target


def squared_l2_mask_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The paper's training loss: squared L2 distance between sigmoid(logits) and the mask.

    ``"mean"`` averages over pixels and images (a learning-rate-friendly scale); ``"sum"``
    is the paper's per-image ||p - y||^2, averaged over the batch.
    """
    target = _mask_target(logits, target)
    per_pixel = (torch.sigmoid(logits) - target).pow(2)
    if reduction == "mean":
        return per_pixel.mean()
    if reduction == "sum":
        return per_pixel.flatten(1).sum(1).mean()
    raise ValueError(f"reduction must be 'mean' or 'sum' (got {reduction!r})")


@torch.no_grad()
def overlap_accuracy(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image IoU of the thresholded sigmoid mask with the target (1.0 when both are empty)."""
    target = _mask_target(logits, target) >= 0.5
    predicted = torch.sigmoid(logits) >= threshold
    intersection = (predicted & target).flatten(1).sum(1).to(torch.float64)
    union = (predicted | target).flatten(1).sum(1).to(torch.float64)
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


@torch.no_grad()
def mean_reconstruction_error(logits: torch.Tensor, target: torch.Tensor, *, binarize: bool = False) -> torch.Tensor:
    """Per-image mean squared difference between the predicted and the true mask.

    Our reading of the paper's "mean reconstruction error": ||p - y||^2 divided by the
    pixel count, p the sigmoid output; ``binarize=True`` thresholds p at 0.5 first, which
    makes it the fraction of mislabelled pixels.
    """
    target = _mask_target(logits, target)
    predicted = torch.sigmoid(logits)
    if binarize:
        predicted = (predicted >= 0.5).to(predicted.dtype)
        target = (target >= 0.5).to(predicted.dtype)
    return (predicted - target).pow(2).flatten(1).mean(1)


def paper_loss(model: SegNetFC, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Training loss as the paper computes it: squared L2 at the native mask size.

    A trainer hook: ``masks`` is the (N, H, W) 0/1 batch of ``pipeline.data``, area-averaged
    down to the native size, so the net is not trained through the upsampling.
    """
    return squared_l2_mask_loss(model.forward_native(images), masks)


# The paper's parameter counts were not available; the counts are pinned in
# tests/test_models_segnets.py at one class and native size 48.
@register("simple_seg_net", input_size=48)
def build_simple_seg_net(num_classes: int = 1, **kwargs) -> nn.Module:
    """Simple-seg-net: 3 conv stages + FC layers that emit the whole 48x48 mask (sigmoid, L2 loss)."""
    return SegNetFC("simple", num_classes, **kwargs)


@register("alex_seg_net", input_size=48)
def build_alex_seg_net(num_classes: int = 1, **kwargs) -> nn.Module:
    """Alex-seg-net: AlexNet convolutions + FC layers that emit the whole 48x48 mask (sigmoid, L2 loss)."""
    return SegNetFC("alex", num_classes, **kwargs)


@register("vgg_seg_net", input_size=48)
def build_vgg_seg_net(num_classes: int = 1, **kwargs) -> nn.Module:
    """VGG-seg-net: VGG-16 convolutions + FC layers that emit the whole 48x48 mask (sigmoid, L2 loss)."""
    return SegNetFC("vgg", num_classes, **kwargs)
