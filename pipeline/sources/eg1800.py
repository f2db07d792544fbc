"""EG1800 as released by Shen et al. (the AutoPortraitMatting ``data/`` folder).

``images_data_crop/NNNNN.jpg``, ``images_mask/NNNNN_mask.mat`` (variable ``mask``, 0/1),
``trainlist.mat`` / ``testlist.mat`` (integer ids). Many listed ids have no image (their
Flickr URL died): they are yielded with a skip reason so they are counted, not lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.images import BadImageError, binarize_mask
from pipeline.sources.base import LoaderReport, RawItem, find_image, require_dir, require_inside
from pipeline.sources.matlab import load_mat_variable
from pipeline.errors import StageError

MAX_LISTED_IDS = 10_000_000


def _id_list(path: Path, variable: str, root: Path) -> list[int]:
    if not path.is_file():
        raise StageError(f"{path}: split list not found")
    require_inside(path, root, "split list")
    try:
        values = load_mat_variable(path, variable, max_elements=MAX_LISTED_IDS).ravel()
    except BadImageError as exc:
        raise StageError(str(exc)) from None
    bad = [v for v in values.tolist() if not (float(v).is_integer() and v >= 0)]
    if bad:
        raise StageError(f"{path}: {variable!r} must hold non-negative integer ids; found {bad[:3]}")
    return [int(v) for v in values.tolist()]


def _mask_reader(path: Path):
    def read(max_pixels: int | None = None) -> np.ndarray:
        if not path.is_file():
            raise BadImageError(f"{path.name}: mask file missing")
        mask, _ = binarize_mask(load_mat_variable(path, "mask", max_elements=max_pixels), path.name)
        return mask

    return read


def iter_eg1800_original(root: Path, report: LoaderReport, **_options) -> Iterator[RawItem]:
    images = require_dir(root / "images_data_crop", "images_data_crop")
    masks = require_dir(root / "images_mask", "images_mask")
    seen: set[int] = set()
    for split, list_name in (("train", "trainlist"), ("test", "testlist")):
        for number in _id_list(root / f"{list_name}.mat", list_name, root):
            key = f"{number:05d}"
            if number in seen:
                report.count(f"id listed twice ({split} list)")
                continue
            seen.add(number)
            image = find_image(images, key)
            mask_path = masks / f"{key}_mask.mat"
            if image is None:
                reason = "listed id has no image" + ("" if mask_path.is_file() else " and no mask")
                yield RawItem(key, split, None, origin=f"{list_name}:{number}", skip_reason=reason)
                continue
            if not mask_path.is_file():
                yield RawItem(key, split, image, origin=f"{list_name}:{number}", skip_reason="listed id has no mask")
                continue
            yield RawItem(key, split, image, _mask_reader(mask_path), origin=image.name, mask_path=mask_path)
    unlisted = sum(1 for p in images.iterdir() if p.stem.isdigit() and int(p.stem) not in seen)
    if unlisted:
        report.count("image on neither split list", unlisted)
