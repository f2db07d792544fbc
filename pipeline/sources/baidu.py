"""The Baidu people dataset as the ExtremeC3Net code lays it out: ``input/`` (images),
``target/`` (masks, 0/255), ``train.txt`` / ``val.txt``.

A list line is either one name (looked up by stem in ``input/`` and ``target/``) or an
image path and a mask path relative to the root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pipeline.sources.base import LoaderReport, RawItem, find_image, png_mask_reader, read_list_file, require_dir


def iter_baidu(root: Path, report: LoaderReport, **_options) -> Iterator[RawItem]:
    inputs = require_dir(root / "input", "input")
    targets = require_dir(root / "target", "target")
    for split, list_name in (("train", "train.txt"), ("val", "val.txt")):
        if not (root / list_name).is_file():
            report.count(f"no {list_name}: split absent")
            continue
        for line in read_list_file(root / list_name, root):
            parts = line.split()
            if len(parts) >= 2:
                image, mask = root / parts[0], root / parts[1]
                stem = Path(parts[0]).stem
                image = image if image.is_file() else None
                mask = mask if mask.is_file() else None
            else:
                stem = Path(parts[0]).stem
                image, mask = find_image(inputs, stem), find_image(targets, stem)
            if image is None:
                yield RawItem(stem, split, None, origin=f"{list_name}:{line}", skip_reason="listed id has no image")
            elif mask is None:
                yield RawItem(stem, split, image, origin=f"{list_name}:{line}", skip_reason="listed id has no mask")
            else:
                yield RawItem(stem, split, image, png_mask_reader(mask), origin=image.name, mask_path=mask)
