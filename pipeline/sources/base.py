"""What a dataset-format loader yields: raw items that ``prepare`` turns into canonical samples.

Loaders only *find* things (file paths, split lists, how to read a mask); decoding and
all the checks happen once, in ``pipeline.stages.prepare``, so every format gets the same
treatment of corrupt files, size mismatches and colour modes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import StageError
from pipeline.images import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, read_mask_image


# A mask reader takes the largest pixel count it may decode (``prepare.max_image_pixels``).
MaskReader = Callable[[int | None], np.ndarray]


@dataclass
class RawItem:
    key: str  # the item's name within the source (a stem); prepare turns it into a safe key
    split: str  # train / val / test / unlabelled
    image_path: Path | None  # None: listed but absent
    read_mask: MaskReader | None = None  # boolean mask in the stored pixel layout
    origin: str = ""
    skip_reason: str | None = None  # known before decoding (e.g. listed id with no image)
    mask_path: Path | None = None  # the file read_mask reads (checked to lie inside the root)


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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff", ".webp")


def find_image(folder: Path, stem: str) -> Path | None:
    """The image file named ``stem`` with any image extension, or None.

    Two different files for one stem (``a.jpg`` and ``a.png``) would give one id to two
    images: that is an error naming both, not a silent pick.
    """
    if not stem or "/" in stem or "\0" in stem:
        return None
    found: list[Path] = []
    for ext in IMAGE_SUFFIXES:
        path = folder / f"{stem}{ext}"
        if path.is_file() and not any(_same_file(path, other) for other in found):
            found.append(path)
    if len(found) > 1:
        raise StageError(f"{folder}: {found[0].name} and {found[1].name} are both image {stem!r}; "
                         "one id cannot name two files: remove or rename one")
    return found[0] if found else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)  # one file under two spellings (a case-insensitive file system)
    except OSError:
        return False


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink and '..' resolved, lies inside ``root``.

    A symlink into the project's DVC cache (``cache.type: symlink`` links every file of
    ``data/raw`` there) counts as inside: DVC put it there, it is the dataset's own file.
    """
    try:
        resolved, base = path.resolve(), root.resolve()
        dvc_cache = (Path.cwd() / ".dvc" / "cache").resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    lexical = Path(os.path.normpath(Path.cwd() / path))
    lexical_base = Path(os.path.normpath(Path.cwd() / root))
    if not (lexical == lexical_base or lexical_base in lexical.parents):
        return False
    return resolved == base or base in resolved.parents or dvc_cache in resolved.parents


def confine(item: RawItem, root: Path) -> RawItem:
    """``item``, or a skip record when one of its files lies outside the dataset ``root``.

    A list naming ``../../x.jpg``, an absolute path or a symlink out of the root would
    otherwise copy a file from anywhere on the machine into the dataset.
    """
    for what, path in (("image", item.image_path), ("mask", item.mask_path)):
        if path is not None and not is_inside(path, root):
            return RawItem(item.key, item.split, None, origin=item.origin,
                           skip_reason=f"{what} file is outside the dataset root (a '..', an absolute path "
                                       "or a symlink leading out of it)")
    return item


def require_inside(path: Path, root: Path, what: str) -> Path:
    """A metadata file (split list, label list) must lie inside the root: its text reaches the outputs."""
    if path.exists() and not is_inside(path, root):
        raise StageError(f"{path}: {what} leads outside the dataset root {root} (a symlink?); refusing to read it")
    return path


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
        raise StageError(f"{path}: {what} folder not found (is the source's format right?)")
    return path


# A split list is a few thousand short lines; a bigger "list" is not one.
MAX_LIST_BYTES = 64 << 20


def read_list_file(path: Path, root: Path | None = None) -> list[str]:
    """Non-empty, non-comment lines of a split list (which must lie inside ``root``)."""
    if not path.is_file():
        raise StageError(f"{path}: split list not found")
    if root is not None:
        require_inside(path, root, "split list")
    if path.stat().st_size > MAX_LIST_BYTES:
        raise StageError(f"{path}: {path.stat().st_size} bytes is too large for a split list")
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def png_mask_reader(path: Path) -> MaskReader:
    """Reader of a mask stored as an image (0/1, 0/255, or palette indices 0/1)."""

    def read(max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
        mask, _ = read_mask_image(path, max_pixels)
        return mask

    return read

