"""Clothing Co-Parsing: ``photos/NNNN.jpg``, ``annotations/pixel-level/NNNN.mat``
(variable ``groundtruth``: labels 0..58, 0 = background), ``label_list.mat``.

Person = any label > 0, except ``carried_items`` (bag, purse, wallet in params.yaml), which
count as person only when ``carried_items_are_person`` is true. Photos without a
pixel-level file become the unlabelled pool (the "web images").
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from pipeline.images import BadImageError
from pipeline.sources.base import LoaderReport, RawItem, hash_split, list_images, require_dir, require_inside
from pipeline.sources.matlab import load_mat_variable
from pipeline.errors import StageError

MAX_LABELS = 100_000


def label_names(root: Path) -> list[str]:
    path = root / "label_list.mat"
    if not path.is_file():
        raise StageError(f"{path}: label list not found")
    require_inside(path, root, "label list")
    try:
        raw = load_mat_variable(path, "label_list", max_elements=MAX_LABELS, numeric=False).ravel()
        names = [_label_name(v) for v in raw]
    except (BadImageError, IndexError, TypeError, ValueError) as exc:
        raise StageError(f"{path}: not a CCP label list ({exc})") from None
    if not names:
        raise StageError(f"{path}: the label list is empty")
    return names


def _label_name(cell) -> str:
    """A label list entry: a (possibly empty) MATLAB string."""
    values = np.asarray(cell).ravel()
    if values.dtype.kind not in "US" or values.size > 1:
        raise ValueError(f"entries must be strings, found {values.dtype} {values[:2].tolist()}")
    return str(values[0]) if values.size else ""


def person_mask(labels: np.ndarray, background_ids: Sequence[int]) -> np.ndarray:
    mask = labels > 0
    for label in background_ids:
        mask &= labels != label
    return mask


def iter_ccp(root: Path, report: LoaderReport, *, val_fraction: float, carried_items: Sequence[str],
             carried_items_are_person: bool, include_unlabelled: bool, **_options) -> Iterator[RawItem]:
    photos = require_dir(root / "photos", "photos")
    annotations = require_dir(root / "annotations" / "pixel-level", "annotations/pixel-level")
    names = label_names(root)
    unknown = [c for c in carried_items if c not in names]
    if unknown:
        raise StageError(f"prepare: carried_items {unknown} are not CCP labels; known: {', '.join(names[1:])}")
    as_background = [] if carried_items_are_person else [names.index(c) for c in carried_items]

    def reader(path: Path):
        def read(max_pixels: int | None = None) -> np.ndarray:
            labels = load_mat_variable(path, "groundtruth", max_elements=max_pixels)
            if labels.ndim != 2:
                raise BadImageError(f"{path.name}: groundtruth has shape {labels.shape}, expected 2-D")
            return person_mask(labels, as_background)

        return read

    for photo in list_images(photos, report):
        key = photo.stem
        annotation = annotations / f"{key}.mat"
        if annotation.is_file():
            yield RawItem(key, hash_split(key, val_fraction, "ccp"), photo, reader(annotation), origin=photo.name,
                          mask_path=annotation)
        elif include_unlabelled:
            yield RawItem(key, "unlabelled", photo, None, origin=photo.name)
    stray = [p for p in annotations.glob("*.mat") if not (photos / f"{p.stem}.jpg").is_file()]
    if stray:
        report.count("annotation without photo", len(stray))
