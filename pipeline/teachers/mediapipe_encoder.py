"""DeepLabv3+ on MediaPipe's pretrained selfie encoder: a teacher that starts from what MediaPipe knows.

Without ImageNet weights (no hub here) a DeepLabv3+ trained from scratch on ~2,000 photos
labels full-body photos far below MediaPipe. MediaPipe's selfie model is a MobileNetV3-like
encoder pretrained on people plus a small decoder; its encoder (up to its LR-ASPP features
at stride 16) is taken here, weights and all, from the wheel's ``selfie_segmentation.tflite``
(``pipeline.teachers.mediapipe``), and smp's DeepLabv3+ decoder (ASPP on the stride-16
features, the stride-4 features as the low-level skip) and segmentation head sit on it.
Fine-tuning the whole network on the labelled photos teaches it the data's own conventions
(CCP's carried bags are not person) while keeping MediaPipe's features.

The encoder takes the DeepLab teacher's ImageNet-normalised input and undoes the
normalisation (MediaPipe expects RGB in [0, 1]); any input whose sides are multiples of 16
works (the file's squeeze-excite pools stay global). Its strided convolutions pad both sides
(``TfliteNetwork``'s ``centred_strides``), so its features sit on the grid smp's decoder
upsamples to, not 15 input pixels off at stride 16 (in a 40-step probe on CCP photos the
masks peaked 0-4 px from where they should be, against 4-8 px with TFLite's padding).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.data import IMAGENET_MEAN, IMAGENET_STD
from pipeline.errors import StageError

# encoder_name -> MediaPipe variant. Only ``general``: the taps below are its tensors.
MEDIAPIPE_ENCODERS = {"mediapipe_general": "general"}
ENCODER_WEIGHTS = "mediapipe"  # the teacher's encoder_weights for these encoders: the wheel's file
# (stride, tensor index, channels) in the wheel's selfie_segmentation.tflite (its sha256 is checked on load):
# the stride-2 stem, the stride-4 and stride-8 block outputs, the stride-16 LR-ASPP output.
TAPS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "general": ((2, 4, 16), (4, 25, 16), (8, 48, 24), (16, 167, 128)),
}
ATROUS_RATES = (6, 12, 18)  # DeepLabv3+'s rates at output stride 16
STRIDE = 16


class MediaPipeEncoder(nn.Module):
    """MediaPipe's selfie encoder as an smp-style encoder: ``forward`` gives [input, stride 2, 4, 8, 16]."""

    def __init__(self, variant: str = "general"):
        super().__init__()
        from pipeline.teachers.mediapipe import TfliteNetwork, load_selfie_graph

        if variant not in TAPS:
            raise ValueError(f"no MediaPipe encoder for variant {variant!r} (known: {', '.join(TAPS)})")
        graph = load_selfie_graph(variant)  # the wheel's file, its bytes checked
        height, width = graph.tensor(graph.inputs[0]).shape[1:3]
        for stride, index, channels in TAPS[variant]:
            shape = tuple(graph.tensor(index).shape) if index in graph.tensors else None
            if shape != (1, height // stride, width // stride, channels):
                raise StageError(f"{graph.path}: tensor {index} is {shape}, not the stride-{stride} features "
                                 f"(1, {height // stride}, {width // stride}, {channels}) this encoder taps")
        self.network = TfliteNetwork(graph, outputs=[index for _, index, _ in TAPS[variant]], centred_strides=True)
        self.network.requires_grad_(True)
        self.out_channels = (3, *(channels for _, _, channels in TAPS[variant]))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-2] % STRIDE or x.shape[-1] % STRIDE:
            raise ValueError(f"input sides must be multiples of {STRIDE}, got {tuple(x.shape[-2:])}")
        return [x, *self.network.features(x * self.std + self.mean)]


class MediaPipeDeepLabV3Plus(nn.Module):
    """DeepLabv3+ (smp's decoder and head) on ``MediaPipeEncoder``; logits at the input's size."""

    def __init__(self, classes: int = 1, decoder_channels: int = 256, variant: str = "general"):
        super().__init__()
        from pipeline.torchvision_shim import ensure_torchvision

        ensure_torchvision()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder

        self.encoder = MediaPipeEncoder(variant)
        self.decoder = DeepLabV3PlusDecoder(encoder_channels=self.encoder.out_channels, encoder_depth=5,
                                            out_channels=decoder_channels, atrous_rates=ATROUS_RATES,
                                            output_stride=STRIDE, aspp_separable=True, aspp_dropout=0.5)
        self.segmentation_head = SegmentationHead(in_channels=decoder_channels, out_channels=classes,
                                                  kernel_size=1, upsampling=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))
