"""Stage ``prepare``: read each source in its own format into one canonical dataset.

Reads each dataset of ``prepare.datasets`` from its ``root`` (a folder under
``paths.raw``, or an absolute one). Writes ``paths.prepared`` (swapped in atomically):
images (original JPEG bytes when they need no conversion, lossless PNG otherwise), masks
as PNG 0/255, ``manifest.csv`` (id, source, split, size, mask statistics, notes),
``skipped.csv`` (every item not used, with the reason) and ``summary.json``;
``paths.metrics``/prepare.json holds the counts.

Every item goes through the same checks whatever its format: unreadable, corrupt or
truncated images and masks are skipped with a reason; a mask whose size differs from
its image is skipped; grayscale, RGBA, CMYK, palette and 16-bit images are converted
to 8-bit RGB and the conversion noted; EXIF orientation is applied to the image, and
to the mask too when the mask is laid out like the stored pixels (as MATLAB and most
annotation tools read them). Images and masks above ``max_image_pixels`` are skipped
before they are decoded (a few-KB file can claim 20000x20000 pixels), and so is any
file that lies outside its dataset's root (a ``..`` in a list, a symlink out of it).

Ids are ``<dataset>/<safe_key(name)>``, and ``safe_key`` is injective, so two names
never share an id; two different files that still give one id (``a.jpg`` and ``a.png``)
stop the stage naming both, while the same file listed twice is a counted duplicate.
A dataset that yields no usable sample stops the stage with its skip reasons. Reasons
name files relative to their dataset root, so the outputs are the same in every checkout.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import AfterValidator, Field, field_validator
from tqdm import tqdm

from pipeline.atomic import atomic_dir, write_csv, write_json
from pipeline.images import (BadImageError, LoadedImage, apply_orientation, check_max_pixels,
                             load_image, mask_to_png_bytes, strip_root)
from pipeline.manifest import KEY_MAX_LENGTH, MANIFEST_NAME, ManifestRow, mask_statistics, safe_key, to_frame
from pipeline.params import InputPath, ParamsError, Section, SubPath, load_section
from pipeline.paths import ProjectPaths, lies_within
from pipeline.sources import LOADERS, LoaderReport, RawItem
from pipeline.sources.base import confine
from pipeline.stage import StageError, make_parser, run_main

Format = Literal["eg1800_original", "eg1800_portraitnet", "baidu", "ccp", "folder", "unlabelled"]


class DatasetSpec(Section):
    """One dataset (an entry of ``prepare.datasets``).

    A per-item record: ``name``, ``format`` and ``root`` are required; the format options
    are optional per dataset, with these defaults: ``max_items`` null (all),
    ``val_fraction`` 0.1, ``carried_items`` bag/purse/wallet, ``carried_items_are_person``
    false, ``include_unlabelled`` true, ``split`` train, and ``images_dir``, ``masks_dir``,
    ``mask_suffix`` null (the format's own layout: ``images``, ``masks``, ``.png``; the root
    itself for unlabelled folders). A format ignores the options it has no use for.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    format: Format
    # Under paths.raw, or an absolute folder; read only: a mirror outside the project is fine.
    root: InputPath
    max_items: int | None = Field(None, ge=1, description="keep only the first N usable items (quick runs)")
    val_fraction: float = Field(0.1, ge=0.0, le=1.0)
    carried_items: list[str] = ["bag", "purse", "wallet"]
    carried_items_are_person: bool = False
    include_unlabelled: bool = True
    images_dir: SubPath | None = None
    masks_dir: SubPath | None = None
    mask_suffix: str | None = None  # e.g. "_mask.png"
    split: Literal["train", "val", "test", "unlabelled"] = "train"

    @field_validator("mask_suffix")
    @classmethod
    def _plain_suffix(cls, value):
        # "<stem><suffix>" must stay a file name inside masks_dir
        if value is not None and (not value or any(c in value for c in "/\\") or not value.isprintable()):
            raise ValueError("must be a non-empty file-name ending without a path separator (e.g. '_mask.png')")
        return value


class PrepareParams(Section):
    datasets: list[DatasetSpec]
    workers: int = Field(ge=1, le=64)
    # Larger images (and masks) are skipped with a reason instead of decoded: a few-KB
    # file can claim 20000x20000 pixels. At most PIL's own decompression-bomb limit.
    max_image_pixels: Annotated[int, AfterValidator(check_max_pixels)]

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


METRICS_FILE = "prepare.json"  # in paths.metrics
SKIPPED_NAME = "skipped.csv"  # in paths.prepared
SUMMARY_NAME = "summary.json"  # in paths.prepared


def dataset_root(spec: DatasetSpec, raw: str | os.PathLike) -> Path:
    """Where a dataset is read: its ``root`` under ``paths.raw`` (an absolute root as it is)."""
    return Path(raw) / spec.root


def check_paths(params: PrepareParams, paths: ProjectPaths, source: str | os.PathLike = "params.yaml") -> None:
    """Refuse a layout where prepare would replace its own input or its metrics.

    ``paths.prepared`` is replaced as a whole: nothing else may live in it, least of all
    the data it is made from.
    """
    out = paths.prepared
    problems = []
    metrics = Path(paths.metrics) / METRICS_FILE
    if lies_within(metrics, out):
        problems.append(f"paths.metrics ({paths.metrics}) puts {METRICS_FILE} inside paths.prepared "
                        f"({paths.prepared}), which is replaced as a whole")
    for index, spec in enumerate(params.datasets):
        root = dataset_root(spec, paths.raw)
        if lies_within(root, out):
            problems.append(f"prepare.datasets.{index}.root: dataset {spec.name} ({root}) lies inside "
                            f"paths.prepared ({paths.prepared}): prepare would replace its own input")
    if problems:
        raise ParamsError(f"{source}: invalid value(s) in 'paths' for prepare:\n  " + "\n  ".join(problems))


@dataclass
class Decoded:
    image: LoadedImage
    mask: np.ndarray | None
    notes: list[str]


def decode_item(item: RawItem, max_pixels: int | None) -> Decoded:
    """Decode and check one raw item; raise BadImageError with the reason to skip it."""
    if item.image_path is None:
        raise BadImageError(item.skip_reason or "no image")
    image = load_image(item.image_path, max_pixels)
    notes = list(image.notes)
    mask = None
    if item.read_mask is not None:
        mask = item.read_mask(max_pixels)
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


def skip_reason(exc: Exception, item: RawItem, root: Path) -> str:
    """The reason to record for a failed item: no absolute path, files named relative to ``root``."""
    reason = str(exc)
    if item.image_path is not None:
        reason = reason.replace(f"{item.image_path}: ", "")  # the row names the image already
    return strip_root(reason, root)


def _skip(source: str, key: str, item: RawItem, reason: str) -> dict:
    return {"source": source, "key": key, "split": item.split, "reason": reason, "origin": item.origin}


def process_item(item: RawItem, source: str, key: str, out_root: Path, root: Path,
                 max_pixels: int | None) -> tuple[ManifestRow | None, dict | None]:
    """Write one item into ``out_root``; return its manifest row, or a skip record.

    ``key`` is the item's safe key; ``root`` is the dataset root that reasons name files
    relative to.
    """
    if item.skip_reason:
        return None, _skip(source, key, item, item.skip_reason)
    try:
        decoded = decode_item(item, max_pixels)
    except BadImageError as exc:
        return None, _skip(source, key, item, skip_reason(exc, item, root))
    except Exception as exc:  # a reader failing some other way: still this item's problem, not the stage's
        wrapped = BadImageError(f"cannot decode ({type(exc).__name__}: {exc})")
        return None, _skip(source, key, item, skip_reason(wrapped, item, root))
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


def _files(item: RawItem) -> tuple[Path | None, Path | None]:
    def real(path: Path | None) -> Path | None:
        return None if path is None else path.resolve()

    return real(item.image_path), real(item.mask_path)


def _describe(item: RawItem, root: Path) -> str:
    if item.image_path is None:
        return item.origin or repr(item.key)
    return strip_root(str(item.image_path), root)


def unique_items(spec_name: str, items, root: Path, report: LoaderReport) -> list[tuple[str, RawItem]]:
    """(safe key, item) per id; the same files listed again are a counted duplicate.

    Two different files that give one id (``a.jpg`` and ``a.png``, ``a b.jpg`` when keys
    were lossy) are a StageError naming both: the dataset must not silently keep either.
    Items whose files lie outside ``root``, or whose name gives no usable key, become skips.
    """
    chosen: dict[str, RawItem] = {}
    out: list[tuple[str, RawItem]] = []
    for item in items:
        item = confine(item, root)
        try:
            key = safe_key(item.key)
        except ValueError:
            key = ""
        if not key or len(key) > KEY_MAX_LENGTH:
            what = ("no name" if not key else
                    f"name too long for an id ({len(key)} characters encoded, at most {KEY_MAX_LENGTH})")
            out.append(("", RawItem(item.key, item.split, None, origin=item.origin, skip_reason=what)))
            continue
        first = chosen.get(key)
        if first is not None:
            if first.image_path is None or item.image_path is None or _files(first) == _files(item):
                report.count("id listed more than once (first listing kept)")
                continue
            raise StageError(f"dataset {spec_name}: {_describe(first, root)} and {_describe(item, root)} both give "
                             f"the id {spec_name}/{key}; rename or remove one of them")
        chosen[key] = item
        out.append((key, item))
    return out


def _count_of(record: dict) -> tuple[str, int]:
    """(reason, items) of a skip record; a loader's aggregate row (key "*") says "reason (xN)"."""
    reason = record["reason"]
    if record["key"] == "*" and reason.endswith(")") and " (x" in reason:
        head, count = reason.rsplit(" (x", 1)
        if count[:-1].isdigit():
            return head, int(count[:-1])
    return reason, 1


def _no_usable_item(spec: DatasetSpec, skipped: list[dict]) -> StageError:
    reasons: Counter = Counter()
    for record in skipped:
        reason, n = _count_of(record)
        reasons[reason] += n
    top = "; ".join(f"{reason} {n}" for reason, n in reasons.most_common(3))
    found = f"{sum(reasons.values())} item(s) skipped: {top}" if skipped else "no item found"
    return StageError(f"dataset {spec.name}: no usable sample in {spec.root} ({found}); fix the dataset or "
                      "its format options, or remove it from prepare.datasets")


def prepare_source(spec: DatasetSpec, root: Path, out_root: Path, workers: int, max_pixels: int | None,
                   progress: bool = True) -> tuple[list[ManifestRow], list[dict]]:
    """Every item of one dataset (read from ``root``) written into ``out_root``: (rows, skip records)."""
    if not root.is_dir():
        raise StageError(f"dataset {spec.name}: {root} not found (did `download` run? is prepare.datasets.root right?)")
    report = LoaderReport()
    loader = LOADERS[spec.format]
    options = spec.model_dump(exclude={"name", "format", "root", "max_items"}, exclude_none=True)
    items = unique_items(spec.name, loader(root, report, **options), root, report)
    rows: list[ManifestRow] = []
    skipped: list[dict] = []

    def process(entry):
        key, item = entry
        if not key:
            return None, _skip(spec.name, key, item, item.skip_reason)
        return process_item(item, spec.name, key, out_root, root, max_pixels)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(process, items)
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
    if not rows:
        raise _no_usable_item(spec, skipped)
    return rows, skipped


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
        reason, n = _count_of(row)
        if row["key"] != "*" and ":" not in reason and len(reason) > 80:
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


def prepare_metrics(summary: dict) -> dict:
    """The DVC metrics: samples, skips, and samples per source and split."""
    return {"samples": summary["samples"], "skipped": summary["skipped_total"],
            **{f"{s}_{k}": v for s, d in summary["per_source"].items() for k, v in d.items()}}


def run(params: PrepareParams, raw: Path, out_dir: Path, metrics_file: Path, progress: bool = True) -> dict:
    """Prepare every dataset (roots under ``raw``) into one new ``out_dir``; return the summary."""
    all_rows: list[ManifestRow] = []
    all_skipped: list[dict] = []
    with atomic_dir(out_dir) as tmp:
        for spec in params.datasets:
            rows, skipped = prepare_source(spec, dataset_root(spec, raw), tmp, params.workers,
                                           params.max_image_pixels, progress)
            all_rows += rows
            all_skipped += skipped
        manifest = to_frame(all_rows)
        skipped_frame = pd.DataFrame(all_skipped, columns=["source", "key", "split", "reason", "origin"])
        if manifest.empty:  # each dataset already refuses to be empty; kept as the last guard
            raise StageError("prepare: no usable sample in any dataset")
        duplicated = manifest["id"].duplicated(keep=False)
        if duplicated.any():  # unique by construction; a repeat here is a bug, never a silent overwrite
            clash = manifest[duplicated].head(2)
            raise StageError(f"prepare: id {clash['id'].iloc[0]} given to both {' and '.join(clash['origin'])}")
        write_csv(tmp / MANIFEST_NAME, manifest)
        write_csv(tmp / SKIPPED_NAME, skipped_frame)
        summary = summarise(manifest, skipped_frame)
        write_json(tmp / SUMMARY_NAME, summary)
    write_json(metrics_file, prepare_metrics(summary))
    return summary


def main(argv=None) -> int:
    parser = make_parser("prepare", __doc__)

    def body(args):
        params = load_section(PrepareParams, "prepare", args.params)
        paths = load_section(ProjectPaths, "paths", args.params)
        check_paths(params, paths, args.params)
        base = Path.cwd()
        summary = run(params, base / paths.raw, base / paths.prepared, base / paths.metrics_file(METRICS_FILE),
                      progress=not args.quiet)
        print(format_summary(summary))
        return 0

    return run_main(body, parser, argv)
