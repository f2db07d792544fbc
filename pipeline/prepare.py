"""Stage ``prepare``: read each source in its own format into one canonical dataset.

Output (``data/prepared/``, swapped in atomically): images (original JPEG bytes when
they need no conversion, lossless PNG otherwise), masks as PNG 0/255, ``manifest.csv``
(id, source, split, size, mask statistics, notes), ``skipped.csv`` (every item not
used, with the reason) and ``summary.json``. ``metrics/prepare.json`` holds the counts.

Every item goes through the same checks whatever its format: unreadable, corrupt or
truncated images and masks are skipped with a reason; a mask whose size differs from
its image is skipped; grayscale, RGBA, CMYK, palette and 16-bit images are converted
to 8-bit RGB and the conversion noted; EXIF orientation is applied to the image, and
to the mask too when the mask is laid out like the stored pixels (as MATLAB and most
annotation tools read them).
"""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator
from tqdm import tqdm

from pipeline.atomic import atomic_dir, write_csv, write_json
from pipeline.images import BadImageError, LoadedImage, apply_orientation, load_image, mask_to_png_bytes
from pipeline.manifest import MANIFEST_NAME, ManifestRow, mask_statistics, safe_key, to_frame
from pipeline.params import Section, load_section
from pipeline.sources import LOADERS, LoaderReport, RawItem
from pipeline.stage import StageError, make_parser, run_main

Format = Literal["eg1800_original", "eg1800_portraitnet", "baidu", "ccp", "folder", "unlabelled"]


class DatasetSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    format: Format
    root: str
    max_items: int | None = Field(None, ge=1, description="keep only the first N usable items (quick runs)")
    # format options (ignored by formats that have no use for them)
    val_fraction: float = Field(0.1, ge=0.0, le=1.0)
    carried_items: list[str] = ["bag", "purse", "wallet"]
    carried_items_are_person: bool = False
    include_unlabelled: bool = True
    images_dir: str | None = None  # folder/unlabelled formats; default "images" / the root itself
    masks_dir: str | None = None  # folder format; default "masks"
    mask_suffix: str | None = None  # folder format; default ".png" (e.g. "_mask.png")
    split: Literal["train", "val", "test", "unlabelled"] = "train"


class PrepareParams(Section):
    datasets: list[DatasetSpec]
    out_dir: str = "data/prepared"
    metrics: str = "metrics/prepare.json"
    workers: int = Field(2, ge=1, le=64)

    @field_validator("datasets")
    @classmethod
    def _unique(cls, value):
        if not value:
            raise ValueError("at least one dataset is needed")
        names = [d.name for d in value]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"dataset names must be unique; repeated: {sorted(dup)}")
        return value


@dataclass
class Decoded:
    image: LoadedImage
    mask: np.ndarray | None
    notes: list[str]


def decode_item(item: RawItem) -> Decoded:
    """Decode and check one raw item; raise BadImageError with the reason to skip it."""
    if item.image_path is None:
        raise BadImageError(item.skip_reason or "no image")
    image = load_image(item.image_path)
    notes = list(image.notes)
    mask = None
    if item.read_mask is not None:
        mask = item.read_mask()
        stored_hw = (image.stored_size[1], image.stored_size[0])
        upright_hw = image.rgb.shape[:2]
        if mask.shape == stored_hw:
            if image.orientation != 1:
                mask = apply_orientation(mask.astype(np.uint8), image.orientation).astype(bool)
                notes.append("rotated mask with the image's EXIF orientation")
        elif mask.shape == upright_hw:
            notes.append("mask already upright (matches the EXIF-rotated image)")
        else:
            raise BadImageError(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
                                f"{upright_hw[1]}x{upright_hw[0]}")
    return Decoded(image, mask, notes)


def _is_plain_jpeg(path: Path, decoded: Decoded) -> bool:
    if decoded.image.notes or path.suffix.lower() not in (".jpg", ".jpeg"):
        return False
    with open(path, "rb") as fh:
        return fh.read(3) == b"\xff\xd8\xff"


def process_item(item: RawItem, source: str, out_root: Path) -> tuple[ManifestRow | None, dict | None]:
    """Write one item into ``out_root``; return its manifest row, or a skip record."""
    if item.skip_reason:
        return None, {"source": source, "key": item.key, "split": item.split, "reason": item.skip_reason,
                      "origin": item.origin}
    try:
        decoded = decode_item(item)
    except BadImageError as exc:
        reason = str(exc)
        if item.image_path is not None and str(item.image_path) in reason:
            reason = reason.replace(f"{item.image_path}: ", "")
        return None, {"source": source, "key": item.key, "split": item.split, "reason": reason, "origin": item.origin}
    key = safe_key(item.key)
    image_rel = Path("images") / source / (f"{key}.jpg" if _is_plain_jpeg(item.image_path, decoded) else f"{key}.png")
    (out_root / image_rel).parent.mkdir(parents=True, exist_ok=True)
    if image_rel.suffix == ".jpg":
        shutil.copyfile(item.image_path, out_root / image_rel)
    else:
        from PIL import Image

        Image.fromarray(decoded.image.rgb).save(out_root / image_rel, format="PNG")
    h, w = decoded.image.rgb.shape[:2]
    row = ManifestRow(id=f"{source}/{key}", source=source, split=item.split, image=image_rel.as_posix(), mask="",
                      width=w, height=h, origin=item.origin, notes="; ".join(decoded.notes))
    if decoded.mask is not None:
        mask_rel = Path("masks") / source / f"{key}.png"
        (out_root / mask_rel).parent.mkdir(parents=True, exist_ok=True)
        (out_root / mask_rel).write_bytes(mask_to_png_bytes(decoded.mask))
        row.mask = mask_rel.as_posix()
        stats = mask_statistics(decoded.mask)
        row.mask_fraction, row.mask_bbox, row.mask_components = (stats["mask_fraction"], stats["mask_bbox"],
                                                                 stats["mask_components"])
    return row, None


def prepare_source(spec: DatasetSpec, base: Path, out_root: Path, workers: int, progress: bool = True):
    root = base / spec.root
    if not root.is_dir():
        raise StageError(f"dataset {spec.name}: {root} not found (did `download` run? is prepare.datasets.root right?)")
    report = LoaderReport()
    loader = LOADERS[spec.format]
    options = spec.model_dump(exclude={"name", "format", "root", "max_items"}, exclude_none=True)
    items = []
    seen: set[str] = set()
    for item in loader(root, report, **options):
        if item.key in seen:
            report.count("id listed more than once (first listing kept)")
            continue
        seen.add(item.key)
        items.append(item)
    rows: list[ManifestRow] = []
    skipped: list[dict] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda it: process_item(it, spec.name, out_root), items)
        for row, skip in tqdm(results, total=len(items), desc=f"prepare {spec.name}", unit="img", disable=not progress):
            if row is not None:
                if spec.max_items is None or len(rows) < spec.max_items:
                    rows.append(row)
                else:
                    skipped.append({"source": spec.name, "key": row.id.split("/", 1)[1], "split": row.split,
                                    "reason": "beyond max_items", "origin": row.origin})
            else:
                skipped.append(skip)
    for reason, count in report.ignored.items():
        skipped.append({"source": spec.name, "key": "*", "split": "", "reason": f"{reason} (x{count})",
                        "origin": ""})
    return rows, skipped, report


def summarise(manifest: pd.DataFrame, skipped: pd.DataFrame) -> dict:
    summary: dict = {"samples": int(len(manifest)), "per_source": {}, "skipped": {}}
    for source, group in manifest.groupby("source"):
        summary["per_source"][source] = {split: int(n) for split, n in group["split"].value_counts().sort_index().items()}
    notes = Counter()
    for text in manifest["notes"]:
        for note in filter(None, text.split("; ")):
            notes[note] += 1
    summary["conversions"] = dict(notes)
    grouped: dict = defaultdict(dict)
    for _, row in skipped.iterrows():
        reason = row["reason"]
        n = 1
        if reason.endswith(")") and " (x" in reason:
            reason, n = reason.rsplit(" (x", 1)[0], int(reason.rsplit(" (x", 1)[1][:-1])
        elif row["key"] != "*" and ":" not in reason and len(reason) > 80:
            reason = reason[:80]
        grouped[row["source"]][reason] = grouped[row["source"]].get(reason, 0) + n
    summary["skipped"] = {s: dict(sorted(r.items())) for s, r in grouped.items()}
    summary["skipped_total"] = int(sum(sum(r.values()) for r in grouped.values()))
    return summary


def format_summary(summary: dict) -> str:
    lines = ["prepared samples per source and split:"]
    for source, splits in summary["per_source"].items():
        parts = ", ".join(f"{split} {n}" for split, n in splits.items())
        lines.append(f"  {source:12s} {parts}")
    lines.append(f"  total        {summary['samples']}")
    if summary["skipped"]:
        lines.append(f"skipped ({summary['skipped_total']}):")
        for source, reasons in summary["skipped"].items():
            for reason, n in reasons.items():
                lines.append(f"  {source:12s} {n:5d}  {reason}")
    if summary["conversions"]:
        lines.append("converted (kept):")
        for note, n in sorted(summary["conversions"].items()):
            lines.append(f"  {n:5d}  {note}")
    return "\n".join(lines)


def run(params: PrepareParams, base: Path, progress: bool = True) -> dict:
    all_rows: list[ManifestRow] = []
    all_skipped: list[dict] = []
    with atomic_dir(base / params.out_dir) as tmp:
        for spec in params.datasets:
            rows, skipped, _ = prepare_source(spec, base, tmp, params.workers, progress)
            all_rows += rows
            all_skipped += skipped
        manifest = to_frame(all_rows)
        skipped_frame = pd.DataFrame(all_skipped, columns=["source", "key", "split", "reason", "origin"])
        if manifest.empty:
            raise StageError("prepare: no usable sample in any dataset; see the skip reasons above")
        write_csv(tmp / MANIFEST_NAME, manifest)
        write_csv(tmp / "skipped.csv", skipped_frame)
        summary = summarise(manifest, skipped_frame)
        write_json(tmp / "summary.json", summary)
    write_json(base / params.metrics, {"samples": summary["samples"], "skipped": summary["skipped_total"],
                                       **{f"{s}_{k}": v for s, d in summary["per_source"].items() for k, v in d.items()}})
    return summary


def main(argv=None) -> int:
    parser = make_parser("prepare", __doc__)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")

    def body(args):
        params = load_section(PrepareParams, "prepare", args.params)
        summary = run(params, Path.cwd(), progress=not args.quiet)
        print(format_summary(summary))
        return 0

    return run_main(body, parser, argv)
