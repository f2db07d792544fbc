"""The teachers ``pseudo_label`` can run, by name, and how each is built from its params.

- ``deeplab``: the paper's DeepLabv3+ (``pipeline.teachers.deeplab``), trained in-pipeline by
  ``train_teacher`` and read from ``paths.teacher``; it trained on some labelled photos
  (the checkpoint's ``train_ids``), which validation leaves out.
- ``mediapipe`` / ``mediapipe_landscape``: MediaPipe's pretrained selfie segmenter, variant
  ``general`` (256x256) or ``landscape`` (144x256) (``pipeline.teachers.mediapipe``); it never
  saw CCP or EG1800, so every labelled photo there is fair evidence. Two variants are two
  fairly independent models: their agreement is a failure signal even with no DeepLabv3+.
- ``mediapipe_pose``: the person mask of MediaPipe's pose landmark model
  (``pipeline.teachers.mediapipe_pose``), another network, trained for whole bodies; it
  never saw CCP or EG1800 either. It needs to know how the photos are framed (``framing``;
  ``per_image`` tells portraits from bodies itself).
"""

from __future__ import annotations

import os
from typing import Literal, Sequence

import numpy as np
import torch

from pipeline.teachers.deeplab import TeacherRunner

TeacherName = Literal["deeplab", "mediapipe", "mediapipe_landscape", "mediapipe_pose"]
MEDIAPIPE_VARIANTS = {"mediapipe": "general", "mediapipe_landscape": "landscape"}


class DeepLabTeacher:
    """The DeepLabv3+ behind the teacher interface (no TTA here: ``predict_views`` does it)."""

    name = "deeplab"

    def __init__(self, model: torch.nn.Module, input_size: int, *, device, channels_last: bool, bfloat16: bool,
                 seen_ids: Sequence[str] = ()):
        self.runner = TeacherRunner(model, input_size, flip_tta=False, device=device, channels_last=channels_last,
                                    bfloat16=bfloat16)
        self.input_size = input_size
        self.seen_ids = frozenset(seen_ids)

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [p.probability for p in self.runner.predict(images)]


class MediaPipeTeacher:
    """MediaPipe's selfie segmenter (PyTorch port of the .tflite) behind the teacher interface."""

    def __init__(self, name: str, model_file: str | os.PathLike | None, *, device, batch_size: int):
        from pipeline.teachers.mediapipe import MediaPipeSelfieSegmenter

        self.name = name
        self.segmenter = MediaPipeSelfieSegmenter(MEDIAPIPE_VARIANTS[name], model_file).to(device)
        self.input_size = self.segmenter.input_size
        self.batch_size = batch_size
        self.seen_ids: frozenset[str] = frozenset()

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.segmenter.predict(images, batch_size=self.batch_size)


class MediaPipePoseTeacher:
    """MediaPipe's pose model's person mask behind the teacher interface."""

    name = "mediapipe_pose"

    def __init__(self, model_file: str | os.PathLike | None, *, framing: str, device, batch_size: int):
        from pipeline.teachers.mediapipe_pose import MediaPipePoseSegmenter

        self.segmenter = MediaPipePoseSegmenter(framing, model_file).to(device)
        self.input_size = self.segmenter.input_size
        self.batch_size = batch_size
        self.seen_ids: frozenset[str] = frozenset()

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.segmenter.predict(images, batch_size=self.batch_size)
