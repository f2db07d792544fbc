"""EG1800 as distributed with PortraitNet: ``Images/``, ``Labels/`` (PNG, 0/1 or 0/255),
``eg1800_train.txt`` / ``eg1800_test.txt`` (one file name or stem per line)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.sources.base import LoaderReport, RawItem, find_image, png_mask_reader, read_list_file, require_dir


def iter_eg1800_portraitnet(root: Path, report: LoaderReport, **_options) -> Iterator[RawItem]:
    images = require_dir(root / "Images", "Images")
    labels = require_dir(root / "Labels", "Labels")
    for split, list_name in (("train", "eg1800_train.txt"), ("test", "eg1800_test.txt")):
        for line in read_list_file(root / list_name, root):
            stem = Path(line.split()[0]).stem
            image = find_image(images, stem)
            label = find_image(labels, stem)
            if image is None:
                yield RawItem(stem, split, None, origin=f"{list_name}:{line}", skip_reason="listed id has no image")
            elif label is None:
                yield RawItem(stem, split, image, origin=f"{list_name}:{line}", skip_reason="listed id has no mask")
            else:
                yield RawItem(stem, split, image, png_mask_reader(label), origin=image.name, mask_path=label)
