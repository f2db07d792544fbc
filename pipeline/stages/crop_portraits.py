"""Portrait crops from full-body photos: detect faces, enlarge the box, crop image and mask.

The ExtremeC3Net paper's first way to get more portrait data cheaply: full-body photos
that already have person masks (here CCP's labelled photos) become EG1800-like portraits
by cropping around each detected face, taking in the upper body and some background.
Each crop is a separate sample (``ccp_crops/<key>_f<i>``) whose split is the parent's.

Geometry and quality rules live in params.yaml. Every face that does not become a crop
is written to ``dropped.csv`` with a reason, and every crop keeps its provenance (parent,
face box, landmarks, probability, crop box, shift/padding) in extra manifest columns.
The stage also compares its crops with EG1800's portraits (mask fraction, face size and
position) so the default geometry can be checked against the data it imitates.

A photo that cannot be read is dropped with its reason; a run that yields no crop at
all fails (keeping the previous crops) unless ``allow_empty`` says an empty output is
expected.

The core (box geometry, border policies, crop of image and mask, the drop rules) is
pure; ``main`` only reads the prepared dataset, runs the detector and writes files.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Sequence

import cv2
import numpy as np
import pandas as pd
from pydantic import AfterValidator, Field, model_validator

from pipeline.atomic import atomic_dir, atomic_path, write_csv, write_json
from pipeline.detectors import Face, FaceDetector
from pipeline.devices import Device, resolve_device
from pipeline.images import (DEFAULT_MAX_IMAGE_PIXELS, BadImageError, check_max_pixels, strip_root, write_image,
                             write_mask_png)
from pipeline.manifest import (MANIFEST_NAME, ManifestRow, is_safe_key, load_sample, mask_statistics, read_manifest,
                               safe_key)
from pipeline.params import InputPath, OutputPath, Section, load_section
from pipeline.stage import StageError, make_parser, run_main

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive

# Drop reasons (the values written to dropped.csv and counted in the metrics).
NO_FACE = "no face detected"
LOW_PROBABILITY = "low detection probability"
FACE_TOO_SMALL = "face too small"
FACE_OFF_PERSON = "face not on the annotated person"
FACE_LOW_ON_PERSON = "face not at the top of the annotated person"
UNANNOTATED_FACE = "another, unannotated face in the crop"
CUT_BY_BORDER = "crop cut off by the image border"
MASK_FRACTION_OUT_OF_RANGE = "person mask fraction out of range"
UNREADABLE = "unreadable image"
DROP_REASONS = (NO_FACE, LOW_PROBABILITY, FACE_TOO_SMALL, FACE_OFF_PERSON, FACE_LOW_ON_PERSON, UNANNOTATED_FACE,
                CUT_BY_BORDER, MASK_FRACTION_OUT_OF_RANGE, UNREADABLE)


# --------------------------------------------------------------------------- params


class GeometryParams(Section):
    # Margins around the face box, as multiples of the face's width (left/right) and
    # height (top/bottom). Calibrated on EG1800 with the same detector: its median margins
    # are 0.58 / 0.58 / 0.43 / 0.69, but CCP's street clothes fill more of such a crop
    # (median mask fraction 0.65 against EG1800's 0.63), so the margins are 5% wider:
    # median mask fraction 0.63, face height 43% of the crop (EG1800: 46%, IQR 40-53%).
    # (at most 10 face sizes: a larger box is not a portrait, and a padded one would be huge)
    expand_left: float = Field(0.63, ge=0, le=10)
    expand_right: float = Field(0.63, ge=0, le=10)
    expand_top: float = Field(0.48, ge=0, le=10)
    expand_bottom: float = Field(0.75, ge=0, le=10)
    # Output size; its ratio is the crops' aspect ratio (EG1800: 600x800, 3:4). CCP faces
    # are about 75 px high, so a crop holds about 120x160 real pixels: 300x400 stays above
    # the 224-px training input without storing 5x-upscaled pixels as 600x800 would.
    output_width: int = Field(300, ge=16, le=4096)
    output_height: int = Field(400, ge=16, le=4096)
    # Random (but reproducible: seeded by the crop's id) zoom and offset of the crop box,
    # so crops spread over face sizes and positions as EG1800's portraits do instead of
    # all sharing one framing. Zoom: box side times exp(U(-jitter_scale, +jitter_scale));
    # offset: U(-jitter_shift, +jitter_shift) times the box's width / height. 0 turns it off.
    jitter_scale: float = Field(0.2, ge=0, le=1)
    jitter_shift: float = Field(0.05, ge=0, le=0.5)
    # At the image border: "shift" moves the box inside the photo (zooming in about the
    # face if the box is larger than the photo) so a crop holds only real pixels; "pad"
    # keeps the geometry and fills outside with black, labelled background. Shift is the
    # default: EG1800 portraits have no artificial borders, and the face moving a little
    # off-centre is within EG1800's own spread of face positions.
    border: Literal["shift", "pad"] = "shift"
    # Share of the intended crop area that may be lost to the border: padded (pad) or
    # cut away by zooming in (shift). Beyond it the face is dropped as cut off.
    max_border_fraction: float = Field(0.15, ge=0, le=1)


class QualityParams(Section):
    min_probability: float = Field(0.95, ge=0, le=1)
    min_face_height: float = Field(40, ge=0)  # face box height in full-resolution pixels
    # Share of the face box's central half that the person mask must cover: CCP labels
    # only the main subject, so faces of passers-by lie on background.
    min_face_on_person: float = Field(0.5, ge=0, le=1)
    # Where the face centre may lie down the person mask's height (0 = top of the head,
    # 1 = the feet). MTCNN finds confident "faces" on shoes and bags; a real head is near
    # the top of a standing person.
    max_face_depth_on_person: float = Field(0.35, ge=0, le=1)
    mask_fraction_min: float = Field(0.25, ge=0, le=1)
    mask_fraction_max: float = Field(0.95, ge=0, le=1)
    # Drop a crop that shows another confidently detected face not on the annotated
    # person: a visible person labelled background would teach the network the wrong thing.
    drop_unannotated_faces: bool = True

    @model_validator(mode="after")
    def _range(self):
        if self.mask_fraction_min >= self.mask_fraction_max:
            raise ValueError("mask_fraction_min must be below mask_fraction_max")
        return self


# MTCNN's first network looks at 12x12 windows: nothing smaller can hold a face.
MTCNN_MIN_SIDE = 12
Probability = Annotated[float, Field(ge=0, le=1)]
CanvasSide = Annotated[int, Field(ge=MTCNN_MIN_SIDE, le=8192)]


class DetectorParams(Section):
    name: Literal["mtcnn"] = "mtcnn"
    device: Device = "cpu"  # auto, cpu, cuda, cuda:N
    batch_size: int = Field(16, ge=1, le=1024)
    # Photos are letterboxed onto a canvas of this (width, height) for detection, boxes
    # mapped back to full resolution; null detects at full size (about 2.4x slower).
    detect_size: tuple[CanvasSide, CanvasSide] | None = (320, 480)
    # MTCNN's smallest face in canvas pixels. 24 on the 320x480 canvas is about 41 px in a
    # 550x825 photo, just above quality.min_face_height: smaller faces would be dropped
    # anyway, and skipping the finest pyramid levels makes detection about 1.4x faster
    # (benchmarks/crops.py: no face that becomes a crop is lost).
    min_face_size: int = Field(24, ge=MTCNN_MIN_SIDE)
    # Score thresholds of MTCNN's three stages (P-, R-, O-Net), each a probability.
    thresholds: tuple[Probability, Probability, Probability] = (0.6, 0.7, 0.7)
    pyramid_factor: float = Field(0.709, gt=0.1, lt=1)

    @model_validator(mode="after")
    def _canvas_holds_a_face(self):
        # MTCNN builds no pyramid level (and fails) when the canvas is smaller than a face.
        if self.detect_size is not None and min(self.detect_size) < self.min_face_size:
            raise ValueError(f"detect_size {list(self.detect_size)} is smaller than min_face_size "
                             f"{self.min_face_size}: no face could be found")
        return self


LabelledSplit = Literal["train", "val", "test"]  # "unlabelled" photos have no mask to crop
SourceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]  # as prepare's dataset names


def _distinct(values: list) -> list:
    if not values:
        raise ValueError("must name at least one")
    if len(set(values)) != len(values):
        raise ValueError(f"repeated entries in {values}")
    return values


class CalibrationParams(Section):
    reference_source: SourceName = "eg1800"
    reference_splits: Annotated[list[LabelledSplit], AfterValidator(_distinct)] = ["train", "test"]
    reference_limit: int = Field(150, ge=0)  # EG1800 portraits whose faces are detected; 0 = all
    quantiles: Annotated[list[Probability], AfterValidator(_distinct)] = [0.05, 0.25, 0.5, 0.75, 0.95]


class CropParams(Section):
    input_dir: InputPath = "data/prepared"
    output_dir: OutputPath = "data/crops"
    source: SourceName = "ccp"
    splits: Annotated[list[LabelledSplit], AfterValidator(_distinct)] = ["train", "val"]
    # Crop ids are "<output_source>/<photo key>_f<i>"; also a folder name in the output.
    output_source: SourceName = "ccp_crops"
    limit: int = Field(0, ge=0)  # photos to process (first by id); 0 = all
    image_format: Literal["jpg", "png"] = "jpg"
    metrics_file: OutputPath = "metrics/crops.json"
    report_dir: OutputPath = "reports/crops"
    # No crop at all (every face dropped, thresholds too strict) fails the stage unless allowed.
    allow_empty: bool = False
    # Larger photos are dropped with a reason instead of decoded.
    max_image_pixels: Annotated[int, AfterValidator(check_max_pixels)] = DEFAULT_MAX_IMAGE_PIXELS
    geometry: GeometryParams = GeometryParams()
    quality: QualityParams = QualityParams()
    detector: DetectorParams = DetectorParams()
    calibration: CalibrationParams = CalibrationParams()

    @model_validator(mode="after")
    def _apart(self):
        if self.output_source == self.source:
            raise ValueError(f"output_source must differ from source ({self.source!r}): crops are new samples")
        inputs, output = _absolute(self.input_dir), _absolute(self.output_dir)
        if _nested(output, inputs) or _nested(inputs, output):
            raise ValueError(f"output_dir ({self.output_dir}) and input_dir ({self.input_dir}) overlap; "
                             "the crops would replace their own input")
        for name in ("metrics_file", "report_dir"):
            if _nested(_absolute(getattr(self, name)), output):
                raise ValueError(f"{name} ({getattr(self, name)}) must not lie inside output_dir "
                                 f"({self.output_dir}), which is replaced as a whole")
        return self


def _absolute(path: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def _nested(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Placement:
    """Where a crop is taken: its box in photo pixels (may extend outside when padding)."""

    box: Box
    shift: tuple[int, int] = (0, 0)  # dx, dy the box was moved to stay inside the photo
    zoom: float = 1.0  # < 1 when the box was shrunk about the face to fit the photo
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, top, right, bottom, pixels outside
    border_fraction: float = 0.0  # share of the intended area padded or cut away


def enlarge_box(face_box: Sequence[float], geometry: GeometryParams) -> tuple[float, float, float, float]:
    """The face box grown by the configured multiples of the face's width and height."""
    x0, y0, x1, y1 = face_box
    w, h = x1 - x0, y1 - y0
    return (x0 - geometry.expand_left * w, y0 - geometry.expand_top * h,
            x1 + geometry.expand_right * w, y1 + geometry.expand_bottom * h)


def fix_aspect(box: Sequence[float], aspect: float) -> tuple[float, float, float, float]:
    """Grow the short side about the box centre until width / height == ``aspect``.

    Growing (never shrinking) keeps all the context the margins asked for.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        raise ValueError(f"empty box {tuple(box)}")
    if w / h < aspect:
        grow = (h * aspect - w) / 2
        x0, x1 = x0 - grow, x1 + grow
    else:
        grow = (w / aspect - h) / 2
        y0, y1 = y0 - grow, y1 + grow
    return x0, y0, x1, y1


def jitter_box(box: Sequence[float], rng: np.random.Generator, scale: float,
               shift: float) -> tuple[float, float, float, float]:
    """Zoom ``box`` about its centre by exp(U(-scale, scale)) and move it by U(-shift, shift) of its size."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    zoom = math.exp(rng.uniform(-scale, scale)) if scale else 1.0
    dx = rng.uniform(-shift, shift) * w if shift else 0.0
    dy = rng.uniform(-shift, shift) * h if shift else 0.0
    cx, cy = (x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy
    return cx - w * zoom / 2, cy - h * zoom / 2, cx + w * zoom / 2, cy + h * zoom / 2


def crop_seed(parent_id: str, face_index: int) -> int:
    """A stable seed per crop: the same photo gets the same jitter on every run."""
    return zlib.crc32(f"{parent_id}#{face_index}".encode("utf-8"))


def round_box(box: Sequence[float]) -> Box:
    x0, y0, x1, y1 = box
    rx0, ry0 = math.floor(x0 + 0.5), math.floor(y0 + 0.5)
    return rx0, ry0, max(rx0 + 1, math.floor(x1 + 0.5)), max(ry0 + 1, math.floor(y1 + 0.5))


def fit_to_image(box: Sequence[float], image_size: tuple[int, int], policy: str,
                 anchor: tuple[float, float] | None = None) -> Placement:
    """Place ``box`` relative to an image of ``image_size`` (width, height).

    ``pad``: the box is kept as is; the part outside the image is padding.
    ``shift``: a box larger than the image is first shrunk about ``anchor`` (the face
    centre) keeping its aspect ratio, then moved inside the image.
    """
    width, height = image_size
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    if policy == "pad":
        rb = round_box((x0, y0, x1, y1))
        pad = (max(0, -rb[0]), max(0, -rb[1]), max(0, rb[2] - width), max(0, rb[3] - height))
        inside_w = max(0, min(rb[2], width) - max(rb[0], 0))
        inside_h = max(0, min(rb[3], height) - max(rb[1], 0))
        area = (rb[2] - rb[0]) * (rb[3] - rb[1])
        return Placement(box=rb, padding=pad, border_fraction=1.0 - inside_w * inside_h / area)
    if policy != "shift":
        raise ValueError(f"unknown border policy {policy!r} (shift or pad)")
    zoom = min(1.0, width / bw, height / bh)
    if zoom < 1.0:
        ax, ay = anchor if anchor is not None else ((x0 + x1) / 2, (y0 + y1) / 2)
        x0, x1 = ax + (x0 - ax) * zoom, ax + (x1 - ax) * zoom
        y0, y1 = ay + (y0 - ay) * zoom, ay + (y1 - ay) * zoom
    rb = round_box((x0, y0, x1, y1))
    w, h = min(rb[2] - rb[0], width), min(rb[3] - rb[1], height)
    nx0 = min(max(rb[0], 0), width - w)
    ny0 = min(max(rb[1], 0), height - h)
    placed = (nx0, ny0, nx0 + w, ny0 + h)
    return Placement(box=placed, shift=(nx0 - rb[0], ny0 - rb[1]), zoom=zoom, border_fraction=1.0 - zoom * zoom)


def crop_array(array: np.ndarray, box: Box, fill=0) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` where the part of ``box`` outside the array is ``fill``."""
    x0, y0, x1, y1 = box
    h, w = array.shape[:2]
    out = np.full((y1 - y0, x1 - x0) + array.shape[2:], fill, dtype=array.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging when shrinking, bilinear when enlarging."""
    w, h = size
    if image.shape[1] == w and image.shape[0] == h:
        return image
    shrinking = w < image.shape[1] and h < image.shape[0]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask as coverage, thresholded at one half (smooth, unbiased edges)."""
    return resize_image(mask.astype(np.float32), size) >= 0.5


def crop_image_and_mask(image: np.ndarray, mask: np.ndarray, box: Box,
                        size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The same box cut from image and mask (padding: black / background), resized to ``size``."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    return resize_image(crop_array(image, box), size), resize_mask(crop_array(mask, box, fill=False), size)


def face_in_crop(face_box: Sequence[float], crop_box: Box) -> dict:
    """Face size and centre relative to the crop (the figures compared with EG1800)."""
    cx0, cy0, cx1, cy1 = crop_box
    cw, ch = cx1 - cx0, cy1 - cy0
    x0, y0, x1, y1 = face_box
    return {
        "face_width_frac": (x1 - x0) / cw,
        "face_height_frac": (y1 - y0) / ch,
        "face_cx_frac": ((x0 + x1) / 2 - cx0) / cw,
        "face_cy_frac": ((y0 + y1) / 2 - cy0) / ch,
    }


def face_on_person(face_box: Sequence[float], mask: np.ndarray) -> float:
    """Share of the face box's central half (width and height) covered by the person mask."""
    x0, y0, x1, y1 = face_box
    w, h = x1 - x0, y1 - y0
    core = round_box((x0 + w / 4, y0 + h / 4, x1 - w / 4, y1 - h / 4))
    region = crop_array(mask, core, fill=False)
    return float(region.mean()) if region.size else 0.0


def face_depth_on_person(face_box: Sequence[float], rows_with_person: np.ndarray) -> float:
    """Face centre's height down the person mask's vertical extent (0 top, 1 bottom)."""
    if rows_with_person.size == 0:
        return 1.0
    top, bottom = float(rows_with_person[0]), float(rows_with_person[-1] + 1)
    cy = (face_box[1] + face_box[3]) / 2
    return (cy - top) / max(bottom - top, 1.0)


# --------------------------------------------------------------------------- planning


@dataclass
class CropPlan:
    parent_id: str
    face_index: int
    face: Face
    placement: Placement
    mask_fraction: float  # of the crop at its native resolution


@dataclass
class Dropped:
    parent_id: str
    face_index: int  # -1 for a photo-level reason (no face, unreadable)
    reason: str
    detail: str = ""
    face_box: str = ""
    probability: float = float("nan")


@dataclass
class PhotoResult:
    plans: list[CropPlan] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)


def _fmt(values: Sequence[float], digits: int = 1) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values)


def plan_crops(parent_id: str, mask: np.ndarray, faces: Sequence[Face], params: CropParams) -> PhotoResult:
    """Decide, for every detected face of one photo, its crop box or its drop reason."""
    geometry, quality = params.geometry, params.quality
    height, width = mask.shape
    aspect = geometry.output_width / geometry.output_height
    result = PhotoResult()
    if not faces:
        result.dropped.append(Dropped(parent_id, -1, NO_FACE))
        return result
    on_person = [face_on_person(f.box, mask) for f in faces]
    rows_with_person = np.flatnonzero(mask.any(axis=1))
    # Faces that would make another crop unusable: confident, big enough, on background.
    unannotated = [i for i, f in enumerate(faces)
                   if f.probability >= quality.min_probability and f.height >= quality.min_face_height / 2
                   and on_person[i] < quality.min_face_on_person]
    for index, face in enumerate(faces):
        def drop(reason: str, detail: str = "") -> None:
            result.dropped.append(Dropped(parent_id, index, reason, detail, _fmt(face.box), face.probability))

        if face.probability < quality.min_probability:
            drop(LOW_PROBABILITY, f"{face.probability:.4f} < {quality.min_probability}")
            continue
        if face.height < quality.min_face_height:
            drop(FACE_TOO_SMALL, f"{face.height:.1f} px < {quality.min_face_height}")
            continue
        if on_person[index] < quality.min_face_on_person:
            drop(FACE_OFF_PERSON, f"{on_person[index]:.2f} of the face on the mask")
            continue
        depth = face_depth_on_person(face.box, rows_with_person)
        if depth > quality.max_face_depth_on_person:
            drop(FACE_LOW_ON_PERSON, f"face centre at {depth:.2f} of the person's height")
            continue
        box = fix_aspect(enlarge_box(face.box, geometry), aspect)
        if geometry.jitter_scale or geometry.jitter_shift:
            rng = np.random.default_rng(crop_seed(parent_id, index))
            box = jitter_box(box, rng, geometry.jitter_scale, geometry.jitter_shift)
        centre = ((face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2)
        placement = fit_to_image(box, (width, height), geometry.border, anchor=centre)
        if placement.border_fraction > geometry.max_border_fraction:
            drop(CUT_BY_BORDER, f"{placement.border_fraction:.2f} of the crop outside the photo")
            continue
        if quality.drop_unannotated_faces:
            intruders = [j for j in unannotated if j != index and _centre_inside(faces[j].box, placement.box)]
            if intruders:
                drop(UNANNOTATED_FACE, "faces " + ",".join(str(j) for j in intruders))
                continue
        fraction = float(crop_array(mask, placement.box, fill=False).mean())
        if not quality.mask_fraction_min <= fraction <= quality.mask_fraction_max:
            drop(MASK_FRACTION_OUT_OF_RANGE,
                 f"{fraction:.3f} not in [{quality.mask_fraction_min}, {quality.mask_fraction_max}]")
            continue
        result.plans.append(CropPlan(parent_id, index, face, placement, fraction))
    return result


def _centre_inside(face_box: Sequence[float], box: Box) -> bool:
    cx, cy = (face_box[0] + face_box[2]) / 2, (face_box[1] + face_box[3]) / 2
    return box[0] <= cx < box[2] and box[1] <= cy < box[3]


def crop_key(parent_id: str, face_index: int) -> str:
    """``ccp/0001`` face 0 -> ``0001_f0`` (the crop's key within its source).

    A parent key that is already a key (every prepared id's is) is kept as it is, so a
    photo ``a b.jpg`` (key ``a~20b``) gives ``a~20b_f0``; any other text is encoded.
    """
    parent_key = parent_id.split("/", 1)[-1]
    return f"{parent_key if is_safe_key(parent_key) else safe_key(parent_key)}_f{face_index}"


class CropIds:
    """The crop ids given so far: a second parent giving the same id is an error naming both."""

    def __init__(self):
        self._parents: dict[str, str] = {}

    def claim(self, plan: "CropPlan") -> str:
        key = crop_key(plan.parent_id, plan.face_index)
        other = self._parents.setdefault(key, plan.parent_id)
        if other != plan.parent_id:
            raise StageError(f"crop_portraits: photos {other} and {plan.parent_id} both give the crop key {key!r}; "
                             "rename one of them")
        return key


def provenance(plan: CropPlan) -> dict:
    """The extra manifest columns that say where a crop came from."""
    p = plan.placement
    return {
        "parent_id": plan.parent_id,
        "face_index": plan.face_index,
        "face_box": _fmt(plan.face.box),
        "face_landmarks": _fmt([v for point in plan.face.landmarks for v in point]),
        "face_probability": round(plan.face.probability, 6),
        "crop_box": _fmt(p.box, 0),
        "shift": _fmt(p.shift, 0),
        "zoom": round(p.zoom, 4),
        "padding": _fmt(p.padding, 0),
        "border_fraction": round(p.border_fraction, 4),
        **{k: round(v, 4) for k, v in face_in_crop(plan.face.box, p.box).items()},
    }


# --------------------------------------------------------------------------- calibration


CALIBRATION_COLUMNS = ("mask_fraction", "face_height_frac", "face_width_frac", "face_cx_frac", "face_cy_frac")


def reference_measures(faces: Sequence[Face], image_size: tuple[int, int], mask_fraction: float) -> dict | None:
    """EG1800 figures of one portrait: its largest face relative to the whole image."""
    if not faces:
        return None
    face = max(faces, key=lambda f: f.width * f.height)
    width, height = image_size
    return {"mask_fraction": mask_fraction, **face_in_crop(face.box, (0, 0, width, height)),
            "face_probability": face.probability}


def calibration_table(crops: pd.DataFrame, reference: pd.DataFrame, quantiles: Sequence[float],
                      reference_name: str) -> pd.DataFrame:
    """Quantiles of each calibration figure for the crops beside the reference portraits."""
    rows = []
    for column in CALIBRATION_COLUMNS:
        for q in quantiles:
            row = {"measure": column, "quantile": q}
            for name, frame in (("crops", crops), (reference_name, reference)):
                values = frame[column].dropna() if column in frame.columns else pd.Series(dtype=float)
                row[name] = round(float(values.quantile(q)), 4) if len(values) else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def plot_calibration(crops: pd.DataFrame, reference: pd.DataFrame, reference_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"mask_fraction": "person mask fraction", "face_height_frac": "face height / crop height",
              "face_width_frac": "face width / crop width", "face_cx_frac": "face centre x / crop width",
              "face_cy_frac": "face centre y / crop height"}
    fig, axes = plt.subplots(1, len(CALIBRATION_COLUMNS), figsize=(4 * len(CALIBRATION_COLUMNS), 3.4))
    for ax, column in zip(axes, CALIBRATION_COLUMNS):
        bins = np.linspace(0, 1, 31)
        for frame, label in ((reference, reference_name), (crops, "crops")):
            values = frame[column].dropna() if column in frame.columns else []
            if len(values):
                ax.hist(np.clip(values, 0, 1), bins=bins, alpha=0.5, density=True,
                        label=f"{label} (n={len(values)}, median {np.median(values):.2f})")
        ax.set_title(titles[column], fontsize=10)
        if ax.get_legend_handles_labels()[0]:  # nothing to show when there are no crops (allow_empty)
            ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def summarize(n_photos: int, crops: pd.DataFrame, dropped: pd.DataFrame, reference: pd.DataFrame,
              reference_name: str, faces_detected: int) -> dict:
    """The DVC metrics: counts kept and dropped per reason, medians against the reference."""
    photos_with_crop = int(crops["parent_id"].nunique()) if len(crops) else 0
    reasons = dropped["reason"].value_counts() if len(dropped) else pd.Series(dtype=int)

    def median(frame: pd.DataFrame, column: str):
        if column not in frame.columns or not frame[column].notna().any():
            return None
        return round(float(frame[column].median()), 4)

    return {
        "photos": n_photos,
        "faces_detected": faces_detected,
        "crops_kept": int(len(crops)),
        "photos_with_crop": photos_with_crop,
        "share_photos_with_crop": round(photos_with_crop / n_photos, 4) if n_photos else 0.0,
        "dropped": {reason: int(reasons.get(reason, 0)) for reason in DROP_REASONS},
        "dropped_total": int(len(dropped)),
        "reference_images": int(len(reference)),
        "median_mask_fraction": {"crops": median(crops, "mask_fraction"),
                                 reference_name: median(reference, "mask_fraction")},
        "median_face_height_frac": {"crops": median(crops, "face_height_frac"),
                                    reference_name: median(reference, "face_height_frac")},
        "median_face_cy_frac": {"crops": median(crops, "face_cy_frac"),
                                reference_name: median(reference, "face_cy_frac")},
    }


# --------------------------------------------------------------------------- running


def _batches(frame: pd.DataFrame, size: int):
    for start in range(0, len(frame), size):
        yield frame.iloc[start:start + size]


def crop_photos(frame: pd.DataFrame, input_root: Path, output_root: Path, detector: FaceDetector,
                params: CropParams, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Detect, plan and write the crops of ``frame``'s photos under ``output_root``.

    Returns (manifest with provenance columns, dropped table, faces detected).
    """
    from tqdm import tqdm

    size = (params.geometry.output_width, params.geometry.output_height)
    source = params.output_source
    rows: list[dict] = []
    dropped: list[Dropped] = []
    faces_detected = 0
    ids = CropIds()
    bar = tqdm(total=len(frame), desc="crop_portraits", unit="photo", disable=not progress)
    for batch in _batches(frame, params.detector.batch_size):
        loaded = []
        for _, row in batch.iterrows():
            try:
                image, mask = read_photo(input_root, row, params.max_image_pixels)
            except BadImageError as exc:
                dropped.append(Dropped(row["id"], -1, UNREADABLE, str(exc)))
                continue
            loaded.append((row, image, mask))
        detections = detector.detect([image for _, image, _ in loaded]) if loaded else []
        for (row, image, mask), faces in zip(loaded, detections):
            faces_detected += len(faces)
            result = plan_crops(row["id"], mask, faces, params)
            dropped.extend(result.dropped)
            for plan in result.plans:
                key = ids.claim(plan)
                rows.append(_write_crop(plan, key, row, image, mask, output_root, source, size, params))
        bar.update(len(batch))
    bar.close()
    manifest = pd.DataFrame(rows)
    if manifest.empty:
        manifest = pd.DataFrame(columns=ManifestRow.columns())
    dropped_frame = pd.DataFrame([vars(d) for d in dropped],
                                 columns=["parent_id", "face_index", "reason", "detail", "face_box", "probability"])
    return manifest, dropped_frame, faces_detected


def read_photo(input_root: Path, row, max_pixels: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A manifest row's image and mask; BadImageError (naming files relative to the dataset) if unusable."""
    try:
        return load_sample(input_root, row, max_pixels)
    except (BadImageError, ValueError, OSError) as exc:
        raise BadImageError(strip_root(str(exc), input_root)) from None
    except Exception as exc:  # any other decode failure is this photo's problem, not the stage's
        raise BadImageError(strip_root(f"{row['image']}: cannot read ({type(exc).__name__}: {exc})",
                                       input_root)) from None


def _write_crop(plan: CropPlan, key: str, parent, image: np.ndarray, mask: np.ndarray, output_root: Path,
                source: str, size: tuple[int, int], params: CropParams) -> dict:
    image_rel = f"images/{source}/{key}.{params.image_format}"
    mask_rel = f"masks/{source}/{key}.png"
    crop_rgb, crop_mask = crop_image_and_mask(image, mask, plan.placement.box, size)
    write_image(output_root / image_rel, crop_rgb)
    write_mask_png(output_root / mask_rel, crop_mask)
    notes = []
    if plan.placement.shift != (0, 0):
        notes.append(f"shifted inside the photo by {plan.placement.shift}")
    if plan.placement.zoom < 1:
        notes.append(f"zoomed in {plan.placement.zoom:.3f} to fit the photo")
    if any(plan.placement.padding):
        notes.append(f"padded (l, t, r, b) {plan.placement.padding} px")
    stats = mask_statistics(crop_mask)
    row = ManifestRow(id=f"{source}/{key}", source=source, split=parent["split"], image=image_rel, mask=mask_rel,
                      width=size[0], height=size[1], origin=plan.parent_id, notes="; ".join(notes), **stats)
    return {**vars(row), **provenance(plan)}


def detect_reference(frame: pd.DataFrame, input_root: Path, detector: FaceDetector, batch_size: int,
                     progress: bool = True, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                     unreadable: list[Dropped] | None = None) -> pd.DataFrame:
    """Face and mask figures of the reference portraits (EG1800), one row per image with a face.

    Unreadable reference images are appended to ``unreadable`` (when given) with the reason.
    """
    from tqdm import tqdm

    rows = []
    bar = tqdm(total=len(frame), desc="calibration (reference faces)", unit="image", disable=not progress)
    for batch in _batches(frame, batch_size):
        loaded = []
        for _, row in batch.iterrows():
            try:
                image, mask = read_photo(input_root, row, max_pixels)
            except BadImageError as exc:
                if unreadable is not None:
                    unreadable.append(Dropped(row["id"], -1, UNREADABLE, str(exc)))
                continue
            fraction = float(mask.mean()) if mask is not None else float("nan")
            loaded.append((row["id"], image, fraction))
        for (sample_id, image, fraction), faces in zip(loaded, detector.detect([im for _, im, _ in loaded])):
            measures = reference_measures(faces, (image.shape[1], image.shape[0]), fraction)
            if measures is not None:
                rows.append({"id": sample_id, "faces": len(faces), **measures})
        bar.update(len(batch))
    bar.close()
    return pd.DataFrame(rows, columns=["id", "faces", *CALIBRATION_COLUMNS, "face_probability"])


def remove_own_leftovers(output_dir: Path) -> None:
    """Delete temporary folders a killed earlier run of this stage left beside its output."""
    import shutil

    if output_dir.parent.is_dir():
        for leftover in output_dir.parent.glob(f".{output_dir.name}.*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)


def select_photos(manifest: pd.DataFrame, source: str, splits: Sequence[str], limit: int,
                  spread: bool = False) -> pd.DataFrame:
    """Labelled rows of ``source`` in ``splits`` by id; ``limit`` of them (0 = all), the
    first ones or, with ``spread``, evenly spaced over the ids (a fairer sample)."""
    chosen = manifest[(manifest["source"] == source) & manifest["split"].isin(list(splits)) & (manifest["mask"] != "")]
    chosen = chosen.sort_values("id")
    if not limit or limit >= len(chosen):
        return chosen
    if spread:
        return chosen.iloc[np.unique(np.linspace(0, len(chosen) - 1, limit).round().astype(int))]
    return chosen.head(limit)


def empty_output_error(n_photos: int, dropped: pd.DataFrame) -> StageError:
    counts = Counter(dropped["reason"]) if len(dropped) else Counter()
    top = "; ".join(f"{reason} {n}" for reason, n in counts.most_common(4)) or "nothing dropped"
    return StageError(f"crop_portraits: no crop from {n_photos} photo(s) ({top}); check the detector thresholds and "
                      "the quality params, or set crop_portraits.allow_empty: true to accept an empty output")


def _run(args: argparse.Namespace) -> int:
    params = load_section(CropParams, "crop_portraits", args.params)
    input_root = Path(params.input_dir)
    try:
        manifest = read_manifest(input_root)
    except ValueError as exc:  # duplicate ids, missing columns, not a CSV
        raise StageError(str(exc)) from None
    photos = select_photos(manifest, params.source, params.splits, params.limit)
    if photos.empty:
        raise StageError(f"{input_root / MANIFEST_NAME}: no labelled photos of source {params.source!r} "
                         f"in splits {params.splits}")
    calibration = params.calibration
    reference = select_photos(manifest, calibration.reference_source, calibration.reference_splits,
                              calibration.reference_limit, spread=True)
    if reference.empty:
        raise StageError(f"{input_root / MANIFEST_NAME}: no labelled images of reference source "
                         f"{calibration.reference_source!r} for calibration")
    from pipeline.detectors import build_detector

    d = params.detector
    device = resolve_device(d.device)
    try:
        detector = build_detector(d.name, device=device, detect_size=d.detect_size, min_face_size=d.min_face_size,
                                  thresholds=d.thresholds, pyramid_factor=d.pyramid_factor)
    except ValueError as exc:
        raise StageError(f"detector: {exc}") from exc
    progress = not args.quiet
    remove_own_leftovers(Path(params.output_dir))
    with atomic_dir(params.output_dir) as tmp:
        crops, dropped, faces_detected = crop_photos(photos, input_root, tmp, detector, params, progress)
        if crops.empty and not params.allow_empty:
            raise empty_output_error(len(photos), dropped)  # before the swap: the previous crops stay
        write_csv(tmp / MANIFEST_NAME, crops)
        write_csv(tmp / "dropped.csv", dropped)
    unreadable_reference: list[Dropped] = []
    reference_figures = detect_reference(reference, input_root, detector, d.batch_size, progress,
                                         params.max_image_pixels, unreadable_reference)
    name = calibration.reference_source
    report_dir = Path(params.report_dir)
    write_csv(report_dir / "calibration.csv", calibration_table(crops, reference_figures, calibration.quantiles, name))
    write_csv(report_dir / "reference_faces.csv", reference_figures)
    plot_calibration(crops, reference_figures, name, report_dir / "calibration.png")
    metrics = summarize(len(photos), crops, dropped, reference_figures, name, faces_detected)
    metrics["reference_unreadable"] = len(unreadable_reference)
    write_json(params.metrics_file, metrics)
    if not args.quiet:
        print(f"crop_portraits: {metrics['crops_kept']} crops from {metrics['photos_with_crop']}/{len(photos)} photos, "
              f"{metrics['dropped_total']} dropped; median mask fraction {metrics['median_mask_fraction']}")
    for item in unreadable_reference:
        print(f"crop_portraits: reference image {item.parent_id} skipped: {item.detail}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("crop-portraits", __doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return run_main(_run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
