"""Where a portrait crop lies in its photo, and cutting it out of image and mask together.

A crop box starts as the face box grown by margins (multiples of the face's width and
height), is widened to the output's aspect ratio, optionally jittered (zoom and offset, so
crops spread over face sizes and positions as EG1800's portraits do), and is then placed
on the photo: moved (and if need be zoomed in) to stay inside it, or padded outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


@dataclass(frozen=True)
class Placement:
    """Where a crop is taken: its box in photo pixels (may extend outside when padding)."""

    box: Box
    shift: tuple[int, int] = (0, 0)  # dx, dy the box was moved to stay inside the photo
    zoom: float = 1.0  # < 1 when the box was shrunk about the face to fit the photo
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, top, right, bottom, pixels outside
    border_fraction: float = 0.0  # share of the intended area padded or cut away


def enlarge_box(face_box: Sequence[float], *, left: float, top: float, right: float,
                bottom: float) -> tuple[float, float, float, float]:
    """The face box grown by ``left``/``right`` face widths and ``top``/``bottom`` face heights."""
    x0, y0, x1, y1 = face_box
    w, h = x1 - x0, y1 - y0
    return x0 - left * w, y0 - top * h, x1 + right * w, y1 + bottom * h


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
