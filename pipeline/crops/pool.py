"""Portrait crops of pseudo-labelled pool photos: the labelled photos' face crop, on a predicted mask.

The pool here is full-body street photos while the student learns portraits, so with
``pseudo_label.pool_crop: faces`` every pool photo is cut around its detected faces with
``crop_portraits``' own geometry and drop rules (``plan_crops``), the teachers' fused mask
of the whole photo standing in for the ground truth; the crop box, padding and resizing
(``cut_map``) are the ones the labelled crops get, and a crop's id is its photo's key plus
``_f<face>``. ``pseudo_label`` then labels each crop again (measured better than cutting
the photo's mask: ``benchmarks/teacher_fusion.py --crops``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.crops.geometry import Box, crop_array, resize_image
from pipeline.crops.params import DetectorParams, GeometryParams, QualityParams
from pipeline.crops.planning import CropPlan, Dropped, plan_crops
from pipeline.detectors import FaceDetector


def cut_map(array: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """A float map (probability) or an RGB image cut to ``box`` (0 outside the photo), resized to ``size`` (W, H)."""
    return resize_image(crop_array(array, box, fill=0), size)


@dataclass
class PoolCropper:
    """Faces of a pool photo -> crop plans, with the same geometry and rules as ``crop_portraits``."""

    detector: FaceDetector
    geometry: GeometryParams
    quality: QualityParams

    @property
    def size(self) -> tuple[int, int]:
        return self.geometry.output_width, self.geometry.output_height

    def plan(self, photo_id: str, image: np.ndarray, mask: np.ndarray) -> tuple[list[CropPlan], list[Dropped]]:
        (faces,) = self.detector.detect([image])
        result = plan_crops(photo_id, mask, faces, self.geometry, self.quality)
        return result.plans, result.dropped


def no_crop_reason(dropped: Sequence[Dropped]) -> str:
    """skipped.csv's reason for a pool photo that gave no crop: why its faces were dropped."""
    counts = Counter(d.reason for d in dropped)
    return "no portrait crop: " + (", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "no face")


def build_pool_cropper(geometry: GeometryParams, quality: QualityParams, detector: DetectorParams) -> PoolCropper:
    from pipeline import detectors
    from pipeline.devices import resolve_device

    face_detector = detectors.build_detector(detector.name, device=resolve_device(detector.device),
                                             detect_size=detector.detect_size, min_face_size=detector.min_face_size,
                                             thresholds=detector.thresholds, pyramid_factor=detector.pyramid_factor)
    return PoolCropper(face_detector, geometry, quality)
