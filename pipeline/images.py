"""Decoding images and masks the same way everywhere, with explicit notes on conversions.

Real datasets hold grayscale, RGBA, CMYK, 16-bit and EXIF-rotated files. Every such
case is normalised to 8-bit RGB here and *recorded*, never silently guessed at. Every
way a file can fail to decode (corrupt, truncated, a decompression bomb, more pixels
than the caller's ``max_pixels``) is one ``BadImageError`` the caller records as a skip.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.atomic import atomic_path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

# EXIF orientation tag value -> PIL transpose op (as ImageOps.exif_transpose applies it).
_EXIF_ORIENTATION = 0x0112
_ORIENTATION_OPS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class BadImageError(ValueError):
    """An image or mask file that cannot be used (corrupt, truncated, not an image, too large)."""


# Larger images are refused, not decoded: a few-KB PNG can claim 20000x20000 pixels and
# take gigabytes to decode. Stages make it a param (``max_image_pixels``).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


def pil_pixel_limit() -> int | None:
    """Pixels above which PIL itself refuses to open a file (its DecompressionBombError)."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None


def check_max_pixels(value: int) -> int:
    """A ``max_image_pixels`` param: positive and not above what PIL opens at all."""
    limit = pil_pixel_limit()
    if value < 1:
        raise ValueError("must be at least 1")
    if limit is not None and value > limit:
        raise ValueError(f"must be at most {limit} (above it PIL refuses every image as a decompression bomb)")
    return value


def _max_file_bytes(max_pixels: int) -> int:
    # 8 bytes a pixel (uncompressed 16-bit RGBA) plus room for metadata: no honest image
    # within the pixel limit is bigger, and nothing bigger is read into memory.
    return 8 * max_pixels + (64 << 20)


def strip_root(text: str, root: str | os.PathLike) -> str:
    """``text`` with every ``<root>/`` removed, so messages name files relative to their dataset."""
    root = Path(root)
    forms = sorted({str(root), os.path.abspath(root), str(root.resolve())} - {".", ""}, key=len, reverse=True)
    for form in forms:
        # only where a path starts (line start, blank, quote, bracket): "x/" must not eat "ax/"
        text = re.sub(r"(?<![^\s'\"(\[])" + re.escape(form.rstrip(os.sep) + os.sep), "", text)
    return text


def _bomb_pixels(exc: Exception) -> str:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    return match.group(1) if match else "?"


@dataclass
class LoadedImage:
    rgb: np.ndarray  # HxWx3 uint8, upright (EXIF orientation applied)
    stored_size: tuple[int, int]  # (width, height) of the pixels as stored, before EXIF rotation
    orientation: int = 1  # EXIF orientation tag (1 = none)
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def _open_fully(path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode a whole file; every way it can fail is a BadImageError naming ``path``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if max_pixels is not None and size > _max_file_bytes(max_pixels):
            raise BadImageError(f"{path}: file too large: {size} bytes for an image of at most {max_pixels} pixels")
        data = path.read_bytes()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return _decode_fully(data, str(path), max_pixels)


def _decode_fully(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """Decode encoded bytes completely; every way it can fail is a BadImageError naming ``name``."""
    if not data:
        raise BadImageError(f"{name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise BadImageError(f"{name}: image too large: {width * height} pixels ({width}x{height}), "
                                f"limit {max_pixels}")
        img.load()  # forces a full decode: truncated files fail here, not later
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own limit (or its warning turned into an error): same refusal, same words.
        pixels = _bomb_pixels(exc)
        over_ours = max_pixels is not None and pixels.isdigit() and int(pixels) > max_pixels
        limit = max_pixels if over_ours else f"{Image.MAX_IMAGE_PIXELS} (PIL's Image.MAX_IMAGE_PIXELS)"
        raise BadImageError(f"{name}: image too large: {pixels} pixels, limit {limit}") from None
    except UnidentifiedImageError as exc:
        raise BadImageError(f"{name}: not an image file (unknown format or corrupt header)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(f"{name}: corrupt or truncated image ({exc})") from exc
    except Exception as exc:  # PIL's parsers also fail with struct.error, IndexError, ...
        raise BadImageError(f"{name}: cannot decode ({type(exc).__name__}: {exc})") from exc
    return img


def _to_rgb8(img: Image.Image, notes: list[str]) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if mode == "I" and arr.max() <= 65535:
            top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        notes.append(f"converted {mode} (high bit depth) to 8-bit")
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append(f"dropped alpha channel ({mode}) by compositing on black")
        rgba = img.convert("RGBA")
        arr = np.asarray(rgba).astype(np.float32)
        rgb = arr[:, :, :3] * (arr[:, :, 3:4] / 255.0)
        return np.round(rgb).astype(np.uint8)
    if mode in ("L", "1"):
        notes.append("converted grayscale to RGB")
    elif mode == "CMYK":
        notes.append("converted CMYK to RGB")
    elif mode != "P":
        notes.append(f"converted {mode} to RGB")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> LoadedImage:
    """Decode ``path`` into upright 8-bit RGB; raise BadImageError if it cannot be used.

    Images of more than ``max_pixels`` pixels are refused before they are decoded.
    """
    path = Path(path)
    return _upright_or_refused(_open_fully(path, max_pixels), str(path))


def decode_image_bytes(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> LoadedImage:
    """``load_image`` for an encoded image already in memory (read from any filesystem); ``name`` goes in errors."""
    return _upright_or_refused(_decode_fully(data, name, max_pixels), name)


def _upright_or_refused(img: Image.Image, name: str) -> LoadedImage:
    try:
        return upright_rgb(img)
    except BadImageError:
        raise
    except Exception as exc:  # a decodable file whose pixels still cannot be converted
        raise BadImageError(f"{name}: cannot convert to RGB ({type(exc).__name__}: {exc})") from exc


def upright_rgb(img: Image.Image) -> LoadedImage:
    stored_size = img.size
    orientation = 1
    try:
        orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # malformed EXIF is not a reason to lose the image
        orientation = 1
    notes: list[str] = []
    if orientation in _ORIENTATION_OPS:
        img = ImageOps.exif_transpose(img)
        notes.append(f"applied EXIF orientation {orientation}")
    elif orientation != 1:
        notes.append(f"ignored invalid EXIF orientation {orientation}")
        orientation = 1
    rgb = _to_rgb8(img, notes)
    return LoadedImage(rgb=rgb, stored_size=stored_size, orientation=orientation, notes=notes)


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an array laid out as the stored pixels (e.g. a mask)."""
    op = _ORIENTATION_OPS.get(orientation)
    if op is None:
        return array
    return np.asarray(Image.fromarray(array).transpose(op))


def binarize_mask(values: np.ndarray, what: str = "mask") -> tuple[np.ndarray, list[str]]:
    """Turn a label array into a boolean person mask.

    {0,1} and {0,255} are exact. Anything else (JPEG-compressed masks, soft mattes) is
    thresholded at half range and a note says so, so the choice is visible in the manifest.
    """
    if values.ndim == 3:
        if values.shape[2] in (3, 4) and np.array_equal(values[:, :, 0], values[:, :, 1]):
            values = values[:, :, 0]
        else:
            raise BadImageError(f"{what}: expected a single-channel mask, got shape {values.shape}")
    if values.ndim != 2:
        raise BadImageError(f"{what}: expected a 2-D mask, got shape {values.shape}")
    uniq = np.unique(values)
    notes: list[str] = []
    if uniq.size == 0:
        raise BadImageError(f"{what}: empty mask")
    if values.dtype == bool:
        return values.copy(), notes
    if set(uniq.tolist()) <= {0, 1}:
        return values == 1, notes
    if set(uniq.tolist()) <= {0, 255}:
        return values == 255, notes
    top = 65535 if values.max() > 255 else 255
    notes.append(f"{what} not binary ({uniq.size} distinct values): thresholded at {top // 2 + 1}")
    return values > top // 2, notes


def read_mask_png(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a mask stored as an image (canonical: PNG 0/255) as a boolean array."""
    mask, _ = read_mask_image(path, max_pixels)
    return mask


def read_mask_image(path: str | os.PathLike,
                    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[np.ndarray, list[str]]:
    """A mask image (0/1, 0/255, palette indices 0/1, soft) as booleans and the binarisation notes."""
    path = Path(path)
    img = _open_fully(path, max_pixels)
    try:
        arr = np.asarray(img)
    except Exception as exc:
        raise BadImageError(f"{path}: cannot read the mask's pixels ({type(exc).__name__}: {exc})") from exc
    return binarize_mask(arr, str(path))


def mask_to_png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a boolean mask as an 8-bit PNG with values 0/255, atomically."""
    data = mask_to_png_bytes(mask.astype(bool))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_image(path: str | os.PathLike, rgb: np.ndarray, quality: int = 95) -> None:
    """Write an RGB uint8 array atomically; format from the suffix (PNG is lossless)."""
    path = Path(path)
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    with atomic_path(path) as tmp:
        if fmt == "JPEG":
            img.save(tmp, format=fmt, quality=quality, subsampling=0)
        else:
            img.save(tmp, format=fmt)


def read_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Upright 8-bit RGB array of an image file (for stages reading canonical data)."""
    return load_image(path, max_pixels).rgb
