"""What a dataset-format loader yields: raw items that ``prepare`` turns into canonical samples.

Loaders only *find* things (file paths, split lists, how to read a mask); decoding and
all the checks happen once, in ``pipeline.prepare``, so every format gets the same
treatment of corrupt files, size mismatches and colour modes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.images import IMAGE_EXTENSIONS, binarize_mask


@dataclass
class RawItem:
    key: str  # file-name-safe id within the source
    split: str  # train / val / test / unlabelled
    image_path: Path | None  # None: listed but absent
    read_mask: Callable[[], np.ndarray] | None = None  # boolean mask in the stored pixel layout
    origin: str = ""
    skip_reason: str | None = None  # known before decoding (e.g. listed id with no image)


@dataclass
class LoaderReport:
    """Findings a loader makes while listing (files ignored, ids on no list...)."""

    ignored: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str, n: int = 1) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + n


def hash_split(key: str, val_fraction: float, seed: str = "") -> str:
    """Deterministic train/val assignment that does not depend on listing order."""
    if val_fraction <= 0:
        return "train"
    h = int(hashlib.sha256(f"{seed}{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def find_image(folder: Path, stem: str) -> Path | None:
    """The image file named ``stem`` with any image extension, or None."""
    for ext in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff", ".webp"):
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def list_images(folder: Path, report: LoaderReport) -> list[Path]:
    """Image files in ``folder`` (sorted); other files are counted as ignored, not read."""
    images = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            report.count(f"not an image file ({path.suffix or 'no extension'})")
    return images


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        from pipeline.stage import StageError

        raise StageError(f"{path}: {what} folder not found (is the source's format right?)")
    return path


def read_list_file(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a split list."""
    if not path.is_file():
        from pipeline.stage import StageError

        raise StageError(f"{path}: split list not found")
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def png_mask_reader(path: Path) -> Callable[[], np.ndarray]:
    """Reader of a mask stored as an image (0/1, 0/255, or palette indices 0/1)."""

    def read() -> np.ndarray:
        from pipeline.images import _open_fully

        mask, _ = binarize_mask(np.asarray(_open_fully(path)), path.name)
        return mask

    return read


Loader = Callable[..., Iterator[RawItem]]
