"""One interface for every teacher: a person probability per image, at the image's own size.

``pseudo_label`` runs one or several teachers and fuses them (``pipeline.teachers.fusion``).
A teacher only has to map a batch of uint8 RGB images (any sizes) to float32 probability
maps of the same sizes (``Teacher.probabilities``); flip TTA is done here, once, for all of
them: each teacher also sees the mirrored images, its output is mirrored back, and the two
views are kept apart so the fused mask's flip agreement can be measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


class Teacher(Protocol):
    """A person segmenter. ``seen_ids``: sample ids (or parent ids) it trained on, kept out of validation."""

    name: str
    seen_ids: frozenset[str]

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Person probability (float32 HxW in [0, 1]) for each uint8 RGB image, at its own size."""
        ...


@dataclass
class Views:
    """One teacher's output on one image: the plain view and the mirrored view mirrored back."""

    plain: np.ndarray
    mirrored: np.ndarray | None  # None without flip TTA

    @property
    def probability(self) -> np.ndarray:
        """The TTA-merged probability (the mean of both views)."""
        return self.plain if self.mirrored is None else 0.5 * (self.plain + self.mirrored)


def predict_views(teacher: Teacher, images: Sequence[np.ndarray], flip_tta: bool) -> list[Views]:
    """``teacher`` on ``images`` (and, with ``flip_tta``, on their mirror images, in one batch)."""
    if not images:
        return []
    batch = list(images)
    if flip_tta:
        batch += [np.ascontiguousarray(image[:, ::-1]) for image in images]
    out = teacher.probabilities(batch)
    if len(out) != len(batch):
        raise RuntimeError(f"teacher {teacher.name} returned {len(out)} probability maps for {len(batch)} images")
    for image, probability in zip(batch, out):
        if probability.shape != image.shape[:2]:
            raise RuntimeError(f"teacher {teacher.name}: probability of shape {probability.shape} for an image of "
                               f"{image.shape[:2]}; a teacher must answer at the image's own size")
    n = len(images)
    return [Views(plain=np.asarray(out[i], np.float32),
                  mirrored=np.ascontiguousarray(out[n + i][:, ::-1], dtype=np.float32) if flip_tta else None)
            for i in range(n)]
