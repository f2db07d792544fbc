"""Face detectors behind one small interface, so the crop stage does not depend on MTCNN.

A detector takes a batch of RGB images (any sizes) and returns, per image, the faces it
found in that image's own pixel coordinates. ``build_detector(name, ...)`` picks one by
the name in params.yaml; tests pass a fake object with the same ``detect`` method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Face:
    """One detected face in full-resolution pixel coordinates."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    probability: float
    landmarks: tuple[tuple[float, float], ...] = ()  # 5 points: eyes, nose, mouth corners

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


class FaceDetector(Protocol):
    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per image (HxWx3 uint8 RGB), largest first; an empty list when none."""
        ...


def build_detector(name: str, **options) -> FaceDetector:
    if name == "mtcnn":
        from pipeline.detectors.mtcnn import MTCNNDetector

        return MTCNNDetector(**options)
    raise ValueError(f"unknown face detector {name!r}; known: mtcnn")
