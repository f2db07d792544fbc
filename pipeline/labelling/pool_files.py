"""The pool as image files at any location fsspec understands (a folder, ``s3://bucket/prefix``, ``memory://``).

Workers on other machines read the images where they are, so nothing is copied ahead of a
run. A local folder is read with ``pipeline.images.load_image`` (the same pixels and the same
error words as every other stage); other locations are fetched as bytes and decoded the same
way. Listing: every file below the location whose suffix is an image suffix, sorted.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from pipeline.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BadImageError,
    decode_image_bytes,
    load_image,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _filesystem(location: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as exc:  # an unknown protocol, or its package is not installed
        raise ValueError(f"{location!r}: fsspec cannot open it ({exc})") from None


def is_local(location: str) -> bool:
    fs, _ = _filesystem(location)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def list_images(location: str) -> list[str]:
    """Every image file below ``location``, as a POSIX path relative to it, sorted; an empty or missing
    location is a ValueError naming it."""
    fs, root = _filesystem(location)
    try:
        if not fs.isdir(root):
            raise ValueError(f"{location!r}: not a folder (or not reachable)")
        found = fs.find(root)
    except OSError as exc:
        raise ValueError(f"{location!r}: cannot list it ({exc})") from None
    base = root.rstrip("/")
    rels = []
    for path in found:
        path = str(path)
        rel = posixpath.relpath(path, base) if path.startswith(base) else path
        if PurePosixPath(rel).suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in rel.split("/")):
            rels.append(rel)
    if not rels:
        raise ValueError(f"{location!r}: no image files ({', '.join(IMAGE_SUFFIXES)}) below it")
    return sorted(rels)


def decode_rgb(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Upright RGB of an encoded image held in memory, refused as ``load_image`` refuses a file."""
    return decode_image_bytes(data, name, max_pixels).rgb


@dataclass(frozen=True)
class PoolReader:
    """Reads pool images relative to ``location``; picklable, so each Ray worker opens its own filesystem."""

    location: str

    def path_of(self, rel: str) -> str:
        return f"{self.location.rstrip('/')}/{rel}"

    def load(self, rel: str, keep_bytes: bool = False) -> tuple[np.ndarray, bytes | None]:
        """The image's RGB (and, with ``keep_bytes``, its file's bytes); BadImageError when unusable."""
        fs, root = _filesystem(self.location)
        if is_local(self.location) and not keep_bytes:
            return load_image(Path(root) / rel).rgb, None
        url = self.path_of(rel)
        try:
            data = fs.cat_file(f"{root.rstrip('/')}/{rel}")
        except (OSError, ValueError) as exc:
            raise BadImageError(f"{url}: cannot read: {exc}") from exc
        return decode_rgb(data, url), data
