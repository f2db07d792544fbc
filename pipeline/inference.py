"""A trained network applied to images of any size, the way ``evaluate`` measures it.

Why one module: a user's ``segment`` run, the ONNX export's check and the evaluation must
see the same model the same way, or the figures of one would not describe the others.

- ``load_trained_model(path)``: the network ``train`` saved in ``models/<arch>/model.pt``
  (``arch``, builder ``config``, weights, ``input_size``), in eval mode; a file of another
  architecture, an unknown one or a size out of range is one ``StageError``.
- ``Segmenter``: each image is resized to the training size (bilinear, OpenCV's
  ``INTER_LINEAR``: what ``pipeline.data.eval_transform`` does) and normalised with the
  ImageNet mean and std (``pipeline.data.to_tensor``); the network's foreground logit is
  upsampled bilinearly (``align_corners=False``) back to the image's own size; person =
  logit > 0, and the probability (for soft cut-out edges) is its sigmoid. Images of one
  call are resized to one size, so they run as one batch whatever their own sizes.
- Runtimes: ``native`` runs ExtremeC3Net on its fused C kernels (``pipeline.native``:
  the same values as PyTorch up to float rounding, several times faster on a CPU),
  ``torch`` the eval-mode PyTorch network, ``auto`` the native kernels where the
  network is an ExtremeC3Net and they build on this machine, else PyTorch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import StageError

MIN_INPUT_SIZE, MAX_INPUT_SIZE = 16, 4096  # train.input_size's range
Runtime = Literal["auto", "native", "torch"]
RUNTIMES: tuple[str, ...] = ("auto", "native", "torch")


@dataclass(frozen=True)
class TrainedModel:
    """A network as ``train`` saved it: eval mode, with the size it was trained at."""

    arch: str
    model: nn.Module
    input_size: int
    path: Path


def load_trained_model(path: str | os.PathLike, arch: str | None = None) -> TrainedModel:
    """The network saved by ``train`` in ``path`` (of architecture ``arch`` when given).

    Refuses a file of another architecture, an unknown one, or one whose builder config or
    input size the network cannot take, with one StageError naming the file."""
    from pipeline.checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint, load_weights
    from pipeline.models import get_spec

    path = Path(path)
    try:
        state = load_checkpoint(path, expected_arch=arch)
        model = build_from_checkpoint(state, path)
        load_weights(model, state, path)
    except CheckpointError as exc:
        raise StageError(str(exc)) from None
    size = state.get("input_size")
    if size is None:
        size = get_spec(state["arch"]).input_size
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise StageError(f"{path}: input_size must be an integer in {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} "
                         f"(got {size!r})")
    return TrainedModel(arch=state["arch"], model=model.eval(), input_size=int(size), path=path)


def trained_model_path(models_dir: str | os.PathLike, arch: str) -> Path:
    """``<paths.models>/<arch>/model.pt``; a StageError saying how to make it when it is missing."""
    path = Path(models_dir) / arch / "model.pt"
    if not path.is_file():
        raise StageError(f"{path}: no trained model (run `portrait-curation train --arch {arch}` first)")
    return path


def archs_to_run(arch: str | None, train_archs) -> list[str]:
    """``[arch]`` if given, else the architectures ``train.archs`` lists; unknown names refused."""
    from pipeline.models import available_models

    if arch:
        archs = [arch]
    else:
        if not train_archs:
            raise StageError("no architecture given: pass --arch NAME or list them in params.yaml train.archs")
        if not isinstance(train_archs, list):
            raise StageError(f"train.archs must be a list of architectures (got {train_archs!r})")
        archs = list(train_archs)
    unknown = [a for a in archs if a not in available_models()]
    if unknown:
        raise StageError(f"unknown architecture(s) {unknown}; known: {', '.join(available_models())}")
    return archs


# ---------------------------------------------------------------- preprocessing


def resize_for_network(rgb: np.ndarray, size: int) -> np.ndarray:
    """``rgb`` (HxWx3 uint8) resized to ``size`` x ``size`` exactly as ``eval_transform`` does."""
    import cv2

    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)


def network_batch(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """(N, 3, size, size) normalised float batch of RGB uint8 images of any sizes."""
    from pipeline.data import to_tensor

    return torch.stack([to_tensor(resize_for_network(image, size)) for image in images])


# ---------------------------------------------------------------- runtimes


def make_forward(model: nn.Module, runtime: str, *, threads: int = 0,
                 device: str = "cpu") -> tuple[Callable[[torch.Tensor], torch.Tensor], str, str]:
    """(forward, runtime actually used, why ``auto`` fell back to torch or "") for ``model``."""
    if runtime not in RUNTIMES:
        raise StageError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    from pipeline.models.extremec3net import ExtremeC3Net

    note = ""
    if runtime in ("auto", "native"):
        why_not = ""
        if not isinstance(model, ExtremeC3Net):
            why_not = f"the native kernels run ExtremeC3Net only, not {type(model).__name__}"
        elif device != "cpu":
            why_not = f"the native kernels run on the CPU, not {device}"
        if not why_not:
            from pipeline.native import NativeBuildError, NativeExtremeC3Net

            try:
                return NativeExtremeC3Net(model, threads=threads or None), "native", ""
            except NativeBuildError as exc:
                why_not = f"the native kernels did not build ({str(exc).splitlines()[0]})"
        if runtime == "native":
            raise StageError(f"runtime native: {why_not}; use --runtime torch")
        note = why_not if isinstance(model, ExtremeC3Net) else ""
    model = model.to(device).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x.to(device)).float().cpu()

    return forward, "torch", note


class Segmenter:
    """Foreground logits, masks and probabilities of a trained network at each image's own size."""

    def __init__(self, trained: TrainedModel, runtime: str = "auto", *, threads: int = 0, device: str = "cpu"):
        self.trained = trained
        self.input_size = trained.input_size
        self.forward, self.runtime, self.note = make_forward(trained.model, runtime, threads=threads, device=device)

    def foreground_logits(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """One (H, W) float32 logit map per RGB image, at that image's (H, W); > 0 means person."""
        from pipeline.models import foreground_logit

        if not images:
            return []
        with torch.inference_mode():
            scores = foreground_logit(self.forward(network_batch(images, self.input_size))).unsqueeze(1)
            return [F.interpolate(score.unsqueeze(0), size=image.shape[:2], mode="bilinear",
                                  align_corners=False)[0, 0]
                    for score, image in zip(scores, images)]

    def masks(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Boolean person masks, one per image, at each image's own size."""
        return [person_mask(logit) for logit in self.foreground_logits(images)]


def person_mask(logit: torch.Tensor) -> np.ndarray:
    """Boolean (H, W) mask of a logit map: the threshold ``evaluate`` uses."""
    return (logit > 0).numpy()


def person_probability(logit: torch.Tensor) -> np.ndarray:
    """(H, W) float32 probability of person in 0..1 (sigmoid of the logit)."""
    return torch.sigmoid(logit).numpy().astype(np.float32, copy=False)
