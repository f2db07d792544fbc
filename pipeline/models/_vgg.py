"""VGG-16/19 convolution stages shared by DeconvNet, the dilated FCN-2s and VGG-seg-net.

Only the five convolution stages (3x3 convolutions + ReLU, optionally batch-normalised);
each network places its own pooling between them, because DeconvNet needs the pooling
switches, the FCN needs every pooled map for its skips and VGG-seg-net just pools.
The leading underscore keeps the registry from importing this file as a network.
"""

from __future__ import annotations

from torch import nn

# Output channels of each 3x3 convolution, stage by stage (Simonyan & Zisserman, configs D and E).
VGG_STAGES: dict[int, tuple[tuple[int, ...], ...]] = {
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier; never below one channel."""
    return max(1, int(round(channels * width)))


def check_width(width: float, name: str) -> None:
    if not width > 0:
        raise ValueError(f"{name}: width must be > 0 (got {width})")


def check_classes(num_classes: int, name: str) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be an integer >= 1 (got {num_classes!r})")


def check_dropout(dropout: float | None, name: str) -> None:
    """A probability in [0, 1): a negative one would silently mean "no dropout", 1 drops everything."""
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"{name}: dropout must be in [0, 1) (got {dropout!r})")


def vgg_stages(depth: int, width: float = 1.0, *, batch_norm: bool = False,
               in_channels: int = 3) -> tuple[nn.ModuleList, list[int]]:
    """The five VGG convolution stages (no pooling) and the output channels of each."""
    if depth not in VGG_STAGES:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_STAGES)} (got {depth})")
    stages, out_channels = nn.ModuleList(), []
    channels = in_channels
    for stage in VGG_STAGES[depth]:
        layers: list[nn.Module] = []
        for out in stage:
            out = scaled(out, width)
            layers.append(nn.Conv2d(channels, out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        stages.append(nn.Sequential(*layers))
        out_channels.append(channels)
    return stages, out_channels
