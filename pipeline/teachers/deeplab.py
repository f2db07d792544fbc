"""The DeepLabv3+ teacher: building it, loading it, and running it on whole images.

Shared by ``train_teacher`` (fine-tuning) and ``pseudo_label`` (inference) so both see
the same network, the same resizing and the same normalisation. The paper's teacher is
DeepLabv3+ with an SE-ResNeXt-50 encoder; the encoder is a parameter so a quick profile
can use a small one.

Inference contract: an image of any size is resized to the network's input size, the
foreground logit is upsampled back to the image's own size (bilinear, half-pixel
centres, the same convention as the resize) and the mask is ``logit > 0``; so a
pseudo-mask always has exactly its image's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, field_validator
from torch import nn

from pipeline.checkpoint import CheckpointError, load_checkpoint, load_weights
from pipeline.data import to_tensor
from pipeline.metrics import iou
from pipeline.models.registry import foreground_logit
from pipeline.params import Section
from pipeline.teachers.mediapipe_encoder import ENCODER_WEIGHTS, MEDIAPIPE_ENCODERS, MediaPipeDeepLabV3Plus

TEACHER_ARCH = "deeplabv3plus"
OUTPUT_STRIDE = 16  # smp DeepLabV3Plus default; input sides must be multiples of it


def teacher_config(encoder_name: str, classes: int = 1, decoder_channels: int = 256) -> dict:
    """The builder kwargs a checkpoint records and is checked against."""
    return {"encoder_name": encoder_name, "classes": int(classes), "decoder_channels": int(decoder_channels),
            "encoder_output_stride": OUTPUT_STRIDE}


class TeacherArchitecture(Section):
    """The keys of the ``teacher`` section that decide the network (not how it is trained).

    ``train_teacher`` builds it from these and ``pseudo_label`` checks the checkpoint it is
    given against them, so both read one definition; other keys of the section are left
    to the training stage (``extra="ignore"`` here, ``"forbid"`` in the stage's model).
    """

    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True)

    encoder_name: str = Field(min_length=1)  # the paper: se_resnext50_32x4d
    decoder_channels: int = Field(ge=8)
    classes: Literal[1, 2]
    input_size: int = Field(ge=OUTPUT_STRIDE)  # the paper: 512

    @field_validator("input_size")
    @classmethod
    def _multiple_of_stride(cls, value: int) -> int:
        if value % OUTPUT_STRIDE:
            raise ValueError(f"must be a multiple of {OUTPUT_STRIDE} (DeepLabv3+ output stride)")
        return value

    def arch_config(self) -> dict:
        return teacher_config(self.encoder_name, self.classes, self.decoder_channels)


def build_teacher(config: dict, encoder_weights: str | None = None) -> nn.Module:
    """smp DeepLabV3Plus; ``encoder_weights`` is None, "imagenet" (smp's download) or a local file.

    Encoder ``mediapipe_general`` is MediaPipe's pretrained selfie encoder, its weights read
    from the installed wheel (``encoder_weights`` None or "mediapipe"; ``mediapipe_encoder``).
    """
    if config["encoder_name"] in MEDIAPIPE_ENCODERS:
        if encoder_weights not in (None, ENCODER_WEIGHTS):
            raise ValueError(f"teacher encoder {config['encoder_name']!r} takes its weights from the mediapipe wheel: "
                             f"encoder_weights must be {ENCODER_WEIGHTS!r} (got {encoder_weights!r})")
        return MediaPipeDeepLabV3Plus(config["classes"], config.get("decoder_channels", 256),
                                      MEDIAPIPE_ENCODERS[config["encoder_name"]])
    from pipeline.torchvision_shim import ensure_torchvision

    ensure_torchvision()
    import segmentation_models_pytorch as smp

    local_file = encoder_weights if encoder_weights not in (None, "imagenet") else None
    smp_weights = "imagenet" if encoder_weights == "imagenet" else None
    try:
        model = smp.DeepLabV3Plus(encoder_name=config["encoder_name"], encoder_weights=smp_weights,
                                  classes=config["classes"], decoder_channels=config.get("decoder_channels", 256),
                                  encoder_output_stride=config["encoder_output_stride"])
    except KeyError as exc:  # smp's message lists the known encoders
        raise ValueError(f"teacher encoder {config['encoder_name']!r}: {exc}") from None
    except OSError as exc:  # huggingface_hub errors offline are OSError subclasses
        raise OSError(f"could not fetch ImageNet weights for encoder {config['encoder_name']!r} "
                      f"(offline? use a local weights file or encoder_weights: null): {type(exc).__name__}: {exc}") from None
    if local_file is not None:
        load_encoder_weights(model.encoder, local_file)
    return model


# Classifier heads that ImageNet checkpoints carry but smp encoders drop.
_HEAD_PREFIXES = ("fc.", "last_linear.", "classifier.", "head.")


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load an ImageNet state dict (.pth/.pt via weights_only, or .safetensors) into the encoder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # SafetensorError is no OSError: a corrupt file must still be one line
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).splitlines()[:3])
        raise CheckpointError(f"{path}: weights do not fit the encoder: {first}") from None


_CONFIG_KEYS = frozenset(teacher_config("x"))


def checked_teacher_config(config, path: str | os.PathLike) -> dict:
    """The builder kwargs of a checkpoint, refused unless every key is known and well-typed.

    A key this code does not know (a newer or foreign checkpoint) or a different output
    stride would otherwise be dropped silently and the weights loaded into a network
    that is not the one they were trained in.
    """
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a teacher checkpoint (its 'config' is {type(config).__name__}, "
                              "not a mapping)")
    unknown = sorted(str(k) for k in set(config) - _CONFIG_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: teacher checkpoint config has unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(_CONFIG_KEYS))})")
    missing = [k for k in ("encoder_name", "classes") if k not in config]
    if missing:
        raise CheckpointError(f"{path}: teacher checkpoint config lacks {', '.join(missing)}")
    encoder, classes = config["encoder_name"], config["classes"]
    decoder = config.get("decoder_channels", 256)
    stride = config.get("encoder_output_stride", OUTPUT_STRIDE)
    if not isinstance(encoder, str) or not encoder:
        raise CheckpointError(f"{path}: teacher checkpoint encoder_name {encoder!r} is not a name")
    if isinstance(classes, bool) or classes not in (1, 2):
        raise CheckpointError(f"{path}: teacher checkpoint classes {classes!r} is not 1 or 2")
    if isinstance(decoder, bool) or not isinstance(decoder, int) or decoder < 1:
        raise CheckpointError(f"{path}: teacher checkpoint decoder_channels {decoder!r} is not a positive integer")
    if stride != OUTPUT_STRIDE:
        raise CheckpointError(f"{path}: teacher checkpoint encoder_output_stride {stride!r} is not {OUTPUT_STRIDE}, "
                              "the only stride this code builds")
    return teacher_config(encoder, classes, decoder)


def checked_input_size(state: dict, path: str | os.PathLike) -> int | None:
    """The input size a checkpoint says it was trained at (None if it does not say)."""
    size = state.get("input_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < OUTPUT_STRIDE or size % OUTPUT_STRIDE:
        raise CheckpointError(f"{path}: teacher checkpoint input_size {size!r} is not a positive multiple of "
                              f"{OUTPUT_STRIDE}")
    return size


def load_teacher(path: str | os.PathLike, expected_config: dict | None = None) -> tuple[nn.Module, dict]:
    """Build the teacher a checkpoint describes and load it; refuse a mismatching one.

    Every refusal is a CheckpointError (one line), also for a checkpoint that is not a
    teacher's at all or names an encoder this installation cannot build.
    """
    state = load_checkpoint(path, expected_arch=TEACHER_ARCH)
    config = checked_teacher_config(state.get("config"), path)
    if expected_config is not None:
        diff = {k: (config.get(k), v) for k, v in expected_config.items() if config.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs configured {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"{path}: checkpoint does not match the configured model ({details})")
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"{path}: not a teacher checkpoint (its 'model' is {type(state['model']).__name__}, "
                              "not a state dict)")
    try:
        model = build_teacher(config)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    load_weights(model, state, path)
    model.eval()
    return model, state


# ---------------------------------------------------------------------------- inference


def input_shape(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a [height, width] pair."""
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def images_to_batch(images: Sequence[np.ndarray], size: int | Sequence[int]) -> torch.Tensor:
    """Resize each RGB uint8 image to the network's input and normalise: (N, 3, h, w)."""
    import cv2

    h, w = input_shape(size)
    tensors = [to_tensor(cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)) for img in images]
    return torch.stack(tensors)


def merge_flip(plain: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Average foreground logits of an image and of its mirror image, mirrored back.

    ``flipped`` is the network's output on the horizontally flipped input, so its last
    axis is reversed before averaging.
    """
    return 0.5 * (plain + torch.flip(flipped, dims=[-1]))


def native_bfloat16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (CPU: AVX-512-BF16/AMX via oneDNN)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class Prediction:
    """One image's teacher output at the image's own size."""

    probability: np.ndarray  # HxW float32 in [0, 1], person probability
    flip_iou: float  # IoU of the plain and the mirrored prediction (nan without TTA)

    @property
    def mask(self) -> np.ndarray:
        return self.probability > 0.5


class TeacherRunner:
    """Runs a segmentation network on lists of whole images, optionally with flip TTA.

    Speed options measured in benchmarks/pseudo_label.py: ``channels_last`` memory
    layout, ``bfloat16`` (weights and activations cast once, for AMX/AVX-512-BF16 CPUs
    and GPUs; it changes the logits slightly, so it is off unless asked for) and a lower
    ``input_size`` (the logits are upsampled to each image's size anyway).
    """

    def __init__(self, model: nn.Module, input_size: int | Sequence[int], *, flip_tta: bool = False,
                 device: str | torch.device = "cpu", channels_last: bool = False, bfloat16: bool = False):
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if bfloat16 else torch.float32
        self.model = model.eval().to(self.device, self.dtype)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.input_size = input_shape(input_size)
        self.flip_tta = flip_tta

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, self.dtype)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        logits = self.model(batch)
        return foreground_logit(logits.float()).unsqueeze(1)  # (N, 1, h, w)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        if not images:
            return []
        batch = images_to_batch(images, self.input_size)
        logits = self._forward(batch)
        flipped = self._forward(torch.flip(batch, dims=[-1])) if self.flip_tta else None
        out = []
        for i, image in enumerate(images):
            height, width = image.shape[:2]
            plain_i = F.interpolate(logits[i:i + 1], size=(height, width), mode="bilinear", align_corners=False)
            if flipped is None:
                merged, agreement = plain_i, float("nan")
            else:
                # Resizing commutes with mirroring, so mirror back after upsampling.
                mirrored_i = F.interpolate(flipped[i:i + 1], size=(height, width), mode="bilinear",
                                           align_corners=False)
                merged = merge_flip(plain_i, mirrored_i)
                agreement = iou((plain_i > 0).cpu().numpy(),
                                     (torch.flip(mirrored_i, dims=[-1]) > 0).cpu().numpy())
            prob = torch.sigmoid(merged)[0, 0].cpu().numpy().astype(np.float32)
            out.append(Prediction(probability=prob, flip_iou=agreement))
        return out
