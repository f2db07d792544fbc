"""Generic layouts: a folder of images with a folder of masks, or images alone.

Masks are matched by stem: ``<masks_dir>/<stem><mask_suffix>`` (e.g. ``.png`` or
``_mask.png``). Unlabelled folders feed the pseudo-labelling pool. The folder names and
the suffix default to this layout's own (``images``, ``masks``, ``.png``; an unlabelled
folder's images are the root itself) when a dataset's params leave them null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.sources.base import LoaderReport, RawItem, hash_split, list_images, png_mask_reader, require_dir


def iter_folder(root: Path, report: LoaderReport, *, split: str, val_fraction: float, images_dir: str = "images",
                masks_dir: str = "masks", mask_suffix: str = ".png", **_options) -> Iterator[RawItem]:
    images = require_dir(root / images_dir, images_dir)
    masks = require_dir(root / masks_dir, masks_dir)
    for image in list_images(images, report):
        mask = masks / f"{image.stem}{mask_suffix}"
        item_split = split if split != "train" else hash_split(image.stem, val_fraction, root.name)
        if not mask.is_file():
            yield RawItem(image.stem, item_split, image, origin=image.name, skip_reason="image has no mask")
        else:
            yield RawItem(image.stem, item_split, image, png_mask_reader(mask), origin=image.name, mask_path=mask)


def iter_unlabelled(root: Path, report: LoaderReport, *, images_dir: str = ".", **_options) -> Iterator[RawItem]:
    images = require_dir(root / images_dir, images_dir)
    for image in list_images(images, report):
        yield RawItem(image.stem, "unlabelled", image, None, origin=image.name)
