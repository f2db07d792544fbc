"""Which detected faces become crops, and what a crop records about where it came from.

For every face of one photo, ``plan_crops`` either places a crop (``CropPlan``) or records
why not (``Dropped``, one of ``DROP_REASONS``). The rules follow from what the photos are:
the person mask labels only the main subject, so a face must lie on it, near its top (MTCNN
finds confident "faces" on shoes and bags), and no other person's face may show in the crop,
where it would be labelled background.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import pandas as pd

from pipeline.crops.geometry import (Box, Placement, crop_array, enlarge_box, face_in_crop, fit_to_image, fix_aspect,
                                     jitter_box, round_box)
from pipeline.detectors import Face
from pipeline.errors import StageError
from pipeline.manifest import is_safe_key, safe_key

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

DROPPED_COLUMNS = ["parent_id", "face_index", "reason", "detail", "face_box", "probability"]


class Framing(Protocol):
    """What ``plan_crops`` reads of the crop geometry (the stage's ``crop_portraits.geometry``)."""

    expand_left: float
    expand_right: float
    expand_top: float
    expand_bottom: float
    output_width: int
    output_height: int
    jitter_scale: float
    jitter_shift: float
    border: str
    max_border_fraction: float


class DropRules(Protocol):
    """What ``plan_crops`` reads of the quality rules (the stage's ``crop_portraits.quality``)."""

    min_probability: float
    min_face_height: float
    min_face_on_person: float
    max_face_depth_on_person: float
    mask_fraction_min: float
    mask_fraction_max: float
    drop_unannotated_faces: bool


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


def dropped_frame(dropped: Sequence[Dropped]) -> pd.DataFrame:
    """The ``dropped.csv`` table (its columns even when nothing was dropped)."""
    return pd.DataFrame([vars(d) for d in dropped], columns=DROPPED_COLUMNS)


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


def crop_seed(parent_id: str, face_index: int) -> int:
    """A stable seed per crop: the same photo gets the same jitter on every run."""
    return zlib.crc32(f"{parent_id}#{face_index}".encode("utf-8"))


def _fmt(values: Sequence[float], digits: int = 1) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values)


def plan_crops(parent_id: str, mask: np.ndarray, faces: Sequence[Face], geometry: Framing,
               quality: DropRules) -> PhotoResult:
    """Decide, for every detected face of one photo, its crop box or its drop reason."""
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
        box = fix_aspect(enlarge_box(face.box, left=geometry.expand_left, top=geometry.expand_top,
                                     right=geometry.expand_right, bottom=geometry.expand_bottom), aspect)
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

    def claim(self, plan: CropPlan) -> str:
        key = crop_key(plan.parent_id, plan.face_index)
        other = self._parents.setdefault(key, plan.parent_id)
        if other != plan.parent_id:
            raise StageError(f"crop_portraits: photos {other} and {plan.parent_id} both give the crop key {key!r}; "
                             "rename one of them")
        return key


def placement_notes(placement: Placement) -> str:
    """The manifest ``notes`` of a crop: how its box was moved, zoomed or padded to fit the photo."""
    notes = []
    if placement.shift != (0, 0):
        notes.append(f"shifted inside the photo by {placement.shift}")
    if placement.zoom < 1:
        notes.append(f"zoomed in {placement.zoom:.3f} to fit the photo")
    if any(placement.padding):
        notes.append(f"padded (l, t, r, b) {placement.padding} px")
    return "; ".join(notes)


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
