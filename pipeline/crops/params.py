"""The face crop's params models, shared by ``crop_portraits`` and ``pseudo_label``'s pool crop.

Both read the one ``crop_portraits`` section (``geometry``, ``quality``, ``detector``), so a
pseudo-labelled full-body photo is cropped exactly as the labelled ones are.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.devices import Device
from pipeline.params import Section


class GeometryParams(Section):
    # Margins around the face box, as multiples of the face's width (left/right) and
    # height (top/bottom). Calibrated on EG1800 with the same detector: its median margins
    # are 0.58 / 0.58 / 0.43 / 0.69, but CCP's street clothes fill more of such a crop
    # (median mask fraction 0.65 against EG1800's 0.63), so the margins are 5% wider:
    # median mask fraction 0.63, face height 43% of the crop (EG1800: 46%, IQR 40-53%).
    # (at most 10 face sizes: a larger box is not a portrait, and a padded one would be huge)
    expand_left: float = Field(ge=0, le=10)
    expand_right: float = Field(ge=0, le=10)
    expand_top: float = Field(ge=0, le=10)
    expand_bottom: float = Field(ge=0, le=10)
    # Output size; its ratio is the crops' aspect ratio (EG1800: 600x800, 3:4). CCP faces
    # are about 75 px high, so a crop holds about 120x160 real pixels: 300x400 stays above
    # the 224-px training input without storing 5x-upscaled pixels as 600x800 would.
    output_width: int = Field(ge=16, le=4096)
    output_height: int = Field(ge=16, le=4096)
    # Random (but reproducible: seeded by the crop's id) zoom and offset of the crop box,
    # so crops spread over face sizes and positions as EG1800's portraits do instead of
    # all sharing one framing. Zoom: box side times exp(U(-jitter_scale, +jitter_scale));
    # offset: U(-jitter_shift, +jitter_shift) times the box's width / height. 0 turns it off.
    jitter_scale: float = Field(ge=0, le=1)
    jitter_shift: float = Field(ge=0, le=0.5)
    # At the image border: "shift" moves the box inside the photo (zooming in about the
    # face if the box is larger than the photo) so a crop holds only real pixels; "pad"
    # keeps the geometry and fills outside with black, labelled background. EG1800
    # portraits have no artificial borders, and the face moving a little off-centre is
    # within EG1800's own spread of face positions.
    border: Literal["shift", "pad"]
    # Share of the intended crop area that may be lost to the border: padded (pad) or
    # cut away by zooming in (shift). Beyond it the face is dropped as cut off.
    max_border_fraction: float = Field(ge=0, le=1)


class QualityParams(Section):
    min_probability: float = Field(ge=0, le=1)
    min_face_height: float = Field(ge=0)  # face box height in full-resolution pixels
    # Share of the face box's central half that the person mask must cover: CCP labels
    # only the main subject, so faces of passers-by lie on background.
    min_face_on_person: float = Field(ge=0, le=1)
    # Where the face centre may lie down the person mask's height (0 = top of the head,
    # 1 = the feet). MTCNN finds confident "faces" on shoes and bags; a real head is near
    # the top of a standing person.
    max_face_depth_on_person: float = Field(ge=0, le=1)
    mask_fraction_min: float = Field(ge=0, le=1)
    mask_fraction_max: float = Field(ge=0, le=1)
    # Drop a crop that shows another confidently detected face not on the annotated
    # person: a visible person labelled background would teach the network the wrong thing.
    drop_unannotated_faces: bool

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
    name: Literal["mtcnn"]
    device: Device  # auto, cpu, cuda, cuda:N
    batch_size: int = Field(ge=1, le=1024)
    # Photos are letterboxed onto a canvas of this (width, height) for detection, boxes
    # mapped back to full resolution; null detects at full size (about 2.4x slower).
    detect_size: tuple[CanvasSide, CanvasSide] | None
    # MTCNN's smallest face in canvas pixels. 24 on the 320x480 canvas is about 41 px in a
    # 550x825 photo, just above quality.min_face_height: smaller faces would be dropped
    # anyway, and skipping the finest pyramid levels makes detection about 1.4x faster
    # (benchmarks/crops.py: no face that becomes a crop is lost).
    min_face_size: int = Field(ge=MTCNN_MIN_SIDE)
    # Score thresholds of MTCNN's three stages (P-, R-, O-Net), each a probability.
    thresholds: tuple[Probability, Probability, Probability]
    pyramid_factor: float = Field(gt=0.1, lt=1)

    @model_validator(mode="after")
    def _canvas_holds_a_face(self):
        # MTCNN builds no pyramid level (and fails) when the canvas is smaller than a face.
        if self.detect_size is not None and min(self.detect_size) < self.min_face_size:
            raise ValueError(f"detect_size {list(self.detect_size)} is smaller than min_face_size "
                             f"{self.min_face_size}: no face could be found")
        return self
