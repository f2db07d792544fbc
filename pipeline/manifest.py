"""The canonical dataset: one folder, one manifest table, images and 0/255 PNG masks.

Every data stage (prepare, crop_portraits, pseudo_label, assemble) writes this layout,
so every consumer reads one format::

    <root>/manifest.csv          one row per sample (columns below)
    <root>/images/<source>/<key>.<jpg|png>
    <root>/masks/<source>/<key>.png    (absent for unlabelled samples)

Paths in the manifest are relative to ``<root>``.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.images import DEFAULT_MAX_IMAGE_PIXELS, read_mask_png, read_rgb

MANIFEST_NAME = "manifest.csv"

SPLITS = ("train", "val", "test", "unlabelled")


@dataclass
class ManifestRow:
    id: str  # "<source>/<key>", unique across the whole pipeline
    source: str  # dataset name from params (eg1800, ccp, ...)
    split: str  # one of SPLITS
    image: str  # relative path of the image
    mask: str  # relative path of the mask PNG, "" when unlabelled
    width: int
    height: int
    mask_fraction: float = float("nan")  # share of pixels that are person
    mask_bbox: str = ""  # "x0 y0 x1 y1" of the person pixels (exclusive end), "" if none
    mask_components: int = -1  # connected components of the person mask
    origin: str = ""  # where it came from (original file, parent sample id, ...)
    notes: str = ""  # conversions applied, "; "-separated

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def mask_statistics(mask: np.ndarray) -> dict:
    """Fraction, bounding box and component count of a boolean mask."""
    from scipy import ndimage

    fraction = float(mask.mean()) if mask.size else float("nan")
    ys, xs = np.nonzero(mask)
    bbox = "" if xs.size == 0 else f"{xs.min()} {ys.min()} {xs.max() + 1} {ys.max() + 1}"
    _, components = ndimage.label(mask)
    return {"mask_fraction": round(fraction, 6), "mask_bbox": bbox, "mask_components": int(components)}


def to_frame(rows: list[ManifestRow]) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(r) for r in rows], columns=ManifestRow.columns())
    return frame


def read_manifest(root: str | os.PathLike) -> pd.DataFrame:
    """Load ``<root>/manifest.csv`` with stable dtypes; raise a clear error if absent."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (has the stage that writes {root} run?)")
    frame = pd.read_csv(path, dtype={"id": str, "source": str, "split": str, "image": str, "mask": str,
                                     "mask_bbox": str, "origin": str, "notes": str},
                        keep_default_na=False, na_values={"mask_fraction": [""]})
    missing = [c for c in ("id", "source", "split", "image", "mask") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    if frame["id"].duplicated().any():
        dup = frame.loc[frame["id"].duplicated(), "id"].iloc[0]
        raise ValueError(f"{path}: duplicate id {dup!r}")
    return frame


def load_sample(root: str | os.PathLike, row,
                max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8 image, boolean mask or None) of one manifest row; BadImageError if unusable."""
    root = Path(root)
    image = read_rgb(root / row["image"], max_pixels=max_pixels)
    mask = read_mask_png(root / row["mask"], max_pixels=max_pixels) if row["mask"] else None
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(f"{row['id']}: mask {mask.shape} and image {image.shape[:2]} differ in size")
    return image, mask


# Keys become file names and media URLs: these bytes stand for themselves, every other
# byte of the UTF-8 text is written "~XX". "~" is unreserved in URLs and safe in file
# names; "%" and "+" are never produced because the FiftyOne App's media URLs decode them.
_KEY_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_ESCAPE = re.compile(r"~([0-9A-F]{2})")
# A key plus ".png" (or a crop's "_f<i>.png") must stay well below the 255-byte file-name limit.
KEY_MAX_LENGTH = 200


def safe_key(text: str) -> str:
    """A file-name- and URL-safe key for ``text``; different texts always give different keys.

    Letters, digits, ``.``, ``_`` and ``-`` stay (so ``00002`` and ``0001`` are their own
    keys); any other byte is ``~XX`` in uppercase hex (``~`` itself is ``~7E``), and a
    leading ``.`` is ``~2E`` (no hidden file, no ``..``). ``decode_key`` inverts it.
    """
    if not text:
        raise ValueError("an empty name has no key")
    # surrogatepass: a file name that is not valid UTF-8 still gets a key of its own.
    data = text.encode("utf-8", errors="surrogatepass")
    out = [chr(b) if b in _KEY_CHARS and not (i == 0 and b == ord(".")) else f"~{b:02X}"
           for i, b in enumerate(data)]
    return "".join(out)


def decode_key(key: str) -> str:
    """The text a key was made from; ValueError if ``key`` is not a key ``safe_key`` makes."""
    data = bytearray()
    pos = 0
    while pos < len(key):
        char = key[pos]
        if char == "~":
            match = _ESCAPE.match(key, pos)
            if match is None:
                raise ValueError(f"{key!r}: '~' must be followed by two uppercase hex digits")
            data.append(int(match.group(1), 16))
            pos = match.end()
        elif ord(char) < 128 and ord(char) in _KEY_CHARS:
            data.append(ord(char))
            pos += 1
        else:
            raise ValueError(f"{key!r}: {char!r} is not allowed in a key")
    text = bytes(data).decode("utf-8", errors="surrogatepass")
    if not text or safe_key(text) != key:
        raise ValueError(f"{key!r} is not the canonical key of any name")
    return text


def is_safe_key(text: str) -> bool:
    """Whether ``text`` is already a key (the output of ``safe_key`` for some name)."""
    try:
        decode_key(text)
    except (ValueError, UnicodeDecodeError):
        return False
    return True
