"""A person mask turned into what a user keeps: a cut-out or the person on another background.

``alpha`` is an (H, W) float array in 0..1 at the image's own size: the hard mask (0 or 1)
or the network's probability (soft edges). Compositing is ``alpha * image + (1 - alpha) *
background`` per pixel, rounded to 8 bits. A background is a colour, an image (scaled to
cover the frame and centre-cropped, never stretched) or a Gaussian blur of the frame itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Named colours a user may give instead of #rrggbb (green: the chroma-key green).
NAMED_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "green": (0, 177, 64), "blue": (0, 71, 187),
                 "gray": (128, 128, 128), "grey": (128, 128, 128)}
_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")
_RGB = re.compile(r"^(\d{1,3}),(\d{1,3}),(\d{1,3})$")
_BLUR = re.compile(r"^blur(?::(\d+(?:\.\d+)?))?$")


@dataclass(frozen=True)
class Background:
    """What replaces the background: exactly one of ``colour``, ``image``, ``blur_sigma``."""

    colour: tuple[int, int, int] | None = None
    image: np.ndarray | None = None  # HxWx3 uint8 RGB
    blur_sigma: float | None = None
    spec: str = ""

    def canvas(self, frame: np.ndarray) -> np.ndarray:
        """The background at ``frame``'s size (HxWx3 uint8)."""
        h, w = frame.shape[:2]
        if self.colour is not None:
            return np.broadcast_to(np.array(self.colour, dtype=np.uint8), (h, w, 3))
        if self.image is not None:
            return cover(self.image, h, w)
        import cv2

        return cv2.GaussianBlur(frame, (0, 0), sigmaX=self.blur_sigma, sigmaY=self.blur_sigma,
                                borderType=cv2.BORDER_REFLECT)


def parse_background(spec: str, *, default_blur_sigma: float, max_pixels: int | None = None) -> Background:
    """A ``--background`` value: a colour name, ``#rrggbb``, ``r,g,b``, ``blur[:sigma]`` or an image file.

    Raises ValueError saying what is accepted."""
    text = spec.strip()
    if text.lower() in NAMED_COLOURS:
        return Background(colour=NAMED_COLOURS[text.lower()], spec=text)
    if match := _HEX.match(text):
        value = match.group(1)
        return Background(colour=tuple(int(value[i:i + 2], 16) for i in (0, 2, 4)), spec=text)
    if match := _RGB.match(text.replace(" ", "")):
        rgb = tuple(int(v) for v in match.groups())
        if max(rgb) > 255:
            raise ValueError(f"background colour {spec!r}: each of r,g,b must be 0..255")
        return Background(colour=rgb, spec=text)
    if match := _BLUR.match(text.lower()):
        sigma = float(match.group(1)) if match.group(1) else default_blur_sigma
        if not sigma > 0:
            raise ValueError(f"background {spec!r}: the blur's sigma must be above 0")
        return Background(blur_sigma=sigma, spec=text)
    path = Path(text).expanduser()
    if path.is_file():
        from pipeline.images import BadImageError, load_image

        try:
            return Background(image=load_image(path, max_pixels).rgb, spec=text)
        except BadImageError as exc:
            raise ValueError(f"background image {exc}") from None
    raise ValueError(f"background {spec!r}: not a colour ({', '.join(sorted(NAMED_COLOURS))}, #rrggbb or r,g,b), "
                     "not blur or blur:SIGMA, and no such image file")


def cover(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` scaled (aspect kept) to cover ``height`` x ``width`` and centre-cropped to it."""
    import cv2

    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return scaled[top:top + height, left:left + width]


def _alpha3(alpha: np.ndarray) -> np.ndarray:
    return np.asarray(alpha, dtype=np.float32)[:, :, None]


def composite(image: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``alpha * image + (1 - alpha) * background`` as HxWx3 uint8."""
    a = _alpha3(alpha)
    mixed = a * image.astype(np.float32) + (1.0 - a) * background.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def replace_background(image: np.ndarray, alpha: np.ndarray, background: Background) -> np.ndarray:
    return composite(image, alpha, background.canvas(image))


def cutout_rgba(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """HxWx4 uint8: the image's colours with ``alpha`` (0..1) as its transparency."""
    a = np.clip(np.rint(np.asarray(alpha, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.dstack([image, a])


def mask_image(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as the canonical 8-bit 0/255 image."""
    return np.where(mask, 255, 0).astype(np.uint8)
