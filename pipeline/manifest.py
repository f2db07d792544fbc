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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.images import read_mask_png, read_rgb

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


def load_sample(root: str | os.PathLike, row) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8 image, boolean mask or None) of one manifest row."""
    root = Path(root)
    image = read_rgb(root / row["image"])
    mask = read_mask_png(root / row["mask"]) if row["mask"] else None
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(f"{row['id']}: mask {mask.shape} and image {image.shape[:2]} differ in size")
    return image, mask


def safe_key(text: str) -> str:
    """A file-name-safe key (ids become paths)."""
    out = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in text)
    return out.strip(".") or "_"
