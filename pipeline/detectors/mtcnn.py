"""MTCNN (facenet-pytorch) as a ``FaceDetector``: batched, optionally at a reduced size.

MTCNN batches only images of one size, and its image pyramid makes cost grow with the
pixel count. Every image is therefore letterboxed (scaled uniformly, padded right and
bottom) onto one canvas of ``detect_size``; boxes and landmarks are mapped back to the
full-resolution image. On 550x825 photos a 320x480 canvas loses no face and more than
doubles throughput (measured with benchmarks/crops.py). ``detect_size=None`` runs at
full size, batching images of equal size together.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from pipeline.detectors import Face


def letterbox(image: np.ndarray, canvas_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Scale ``image`` uniformly to fit ``canvas_size`` (width, height), pad right/bottom with 0.

    Returns the canvas and the scale (canvas pixels per image pixel).
    """
    canvas_w, canvas_h = canvas_size
    h, w = image.shape[:2]
    scale = min(canvas_w / w, canvas_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    # The mapping back uses the per-axis scale actually applied (rounding differs slightly).
    return canvas, scale


class MTCNNDetector:
    """facenet-pytorch MTCNN; its weights ship inside the wheel, nothing is downloaded."""

    def __init__(self, device: str = "cpu", detect_size: tuple[int, int] | None = (320, 480),
                 min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 pyramid_factor: float = 0.709):
        from pipeline.torchvision_shim import ensure_torchvision

        ensure_torchvision()
        from facenet_pytorch import MTCNN

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        self.device = torch.device(device)
        self.detect_size = tuple(detect_size) if detect_size else None
        self.min_face_size = min_face_size
        if self.detect_size is not None and min(self.detect_size) < min_face_size:
            raise ValueError(f"detect_size {self.detect_size} is smaller than min_face_size {min_face_size}")
        self._mtcnn = MTCNN(keep_all=True, select_largest=True, min_face_size=min_face_size,
                            thresholds=list(thresholds), factor=pyramid_factor, device=self.device)
        self._mtcnn.eval()

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        if not images:
            return []
        if self.detect_size is None:
            return self._detect_full_size(images)
        canvases, scales = zip(*(letterbox(img, self.detect_size) for img in images))
        batch = np.stack(canvases)
        found = self._run(batch)
        return [[_rescale(face, 1.0 / s) for face in faces] for faces, s in zip(found, scales)]

    def _detect_full_size(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        results: list[list[Face] | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            # MTCNN has no pyramid level for an image smaller than a face (and then fails): none found
            if min(img.shape[:2]) >= self.min_face_size:
                by_shape.setdefault(img.shape, []).append(i)
        for indices in by_shape.values():
            found = self._run(np.stack([images[i] for i in indices]))
            for i, faces in zip(indices, found):
                results[i] = faces
        return [r if r is not None else [] for r in results]

    def _run(self, batch: np.ndarray) -> list[list[Face]]:
        with torch.inference_mode():
            boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
        out: list[list[Face]] = []
        for img_boxes, img_probs, img_points in zip(boxes, probs, points):
            if img_boxes is None:
                out.append([])
                continue
            img_boxes = np.asarray(img_boxes, dtype=np.float64).reshape(-1, 4)
            img_probs = np.asarray(img_probs, dtype=np.float64).reshape(-1)
            img_points = np.asarray(img_points, dtype=np.float64).reshape(-1, 5, 2)
            out.append([
                Face(box=tuple(float(v) for v in b), probability=float(p),
                     landmarks=tuple((float(x), float(y)) for x, y in pts))
                for b, p, pts in zip(img_boxes, img_probs, img_points)
            ])
        return out


def _rescale(face: Face, factor: float) -> Face:
    return Face(box=tuple(v * factor for v in face.box), probability=face.probability,
                landmarks=tuple((x * factor, y * factor) for x, y in face.landmarks))
