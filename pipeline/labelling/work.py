"""The resumable work folder of ``pseudo_label``: one finished record per pool image.

A run writes each image's result (mask PNGs, crop images, a JSON record of features) as soon
as it has it, under ``<work_dir>/<fingerprint>/``; the fingerprint hashes every setting that
changes a result, so changed settings start a fresh folder and never reuse stale work. The
record is written last and lists the sha256 of every file it owns (mask, copied image or
crop, and with two or more teachers the teacher-disagreement map): an item whose record is
missing, unreadable, or whose files are missing or differ (a job killed mid-item) is not
complete and is redone. The final dataset is assembled from complete records only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.atomic import write_bytes, write_text

WORK_FORMAT = 2  # bump when a record's meaning changes: old folders then stop matching (2: disagreement maps)
RECORD_NAME = "record.json"


@dataclass
class WorkItem:
    """One pool image to label: its file-safe ``key``, pool ``id`` and ``image`` (relative to the pool)."""

    key: str
    id: str
    image: str


@dataclass
class SampleResult:
    """One labelled sample of a pool image (the image itself, or one face crop of it)."""

    key: str  # the sample's file-safe key (the photo's key, or ``<key>_f<face>``)
    size: tuple[int, int]  # (width, height)
    features: dict  # every per-mask feature (``pipeline.labelling.prediction.mask_features``)
    stats: dict  # manifest mask statistics (``pipeline.manifest.mask_statistics``)
    notes: str
    mask_png: bytes = b""
    image_bytes: bytes | None = None  # the crop (or the copied pool file) to write beside the mask
    image_suffix: str = ""  # ".jpg" for crops, the pool file's own suffix for copies
    disagreement_png: bytes = b""  # 0/255 PNG, white where the teachers' masks differ; empty with one teacher


@dataclass
class ItemResult:
    """Everything the stage needs of one pool image; ``skip_reason`` set = it gave no sample."""

    key: str
    id: str
    image: str
    samples: list[SampleResult] = field(default_factory=list)
    skip_reason: str = ""


def fingerprint(settings: dict) -> str:
    """A short stable hash of the settings that decide a result (JSON-able values)."""
    text = json.dumps({"format": WORK_FORMAT, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class WorkFolder:
    """``<root>/<fingerprint>/items/<shard>/<key>/``: the files and the record of each pool image."""

    def __init__(self, root: str | Path, fingerprint_value: str):
        self.root = Path(root)
        self.fingerprint = fingerprint_value
        self.folder = self.root / fingerprint_value

    def item_dir(self, key: str) -> Path:
        return self.folder / "items" / hashlib.sha1(key.encode()).hexdigest()[:2] / key

    def save(self, result: ItemResult) -> None:
        """Write one image's files, then its record (each atomically): a torn item has no valid record."""
        folder = self.item_dir(result.key)
        record_file = folder / RECORD_NAME
        record_file.unlink(missing_ok=True)  # a redone item is incomplete until its new record lands
        samples = []
        for sample in result.samples:
            files = {"mask": f"{sample.key}.mask.png"}
            write_bytes(folder / files["mask"], sample.mask_png)
            sums = {"mask": _sha(sample.mask_png)}
            if sample.image_bytes is not None:
                files["image"] = f"{sample.key}.image{sample.image_suffix}"
                write_bytes(folder / files["image"], sample.image_bytes)
                sums["image"] = _sha(sample.image_bytes)
            if sample.disagreement_png:
                files["disagreement"] = f"{sample.key}.disagreement.png"
                write_bytes(folder / files["disagreement"], sample.disagreement_png)
                sums["disagreement"] = _sha(sample.disagreement_png)
            meta = {k: v for k, v in asdict(sample).items() if k not in ("mask_png", "image_bytes", "disagreement_png")}
            samples.append({**meta, "size": list(sample.size), "files": files, "sha256": sums})
        record = {"key": result.key, "id": result.id, "image": result.image, "skip_reason": result.skip_reason,
                  "fingerprint": self.fingerprint, "samples": samples}
        write_text(record_file, json.dumps(record, allow_nan=True) + "\n")

    def load(self, item: WorkItem, with_files: bool = True) -> ItemResult | None:
        """The complete result of ``item``, or None (never done, torn, or done for another image)."""
        folder = self.item_dir(item.key)
        try:
            record = json.loads((folder / RECORD_NAME).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("fingerprint") != self.fingerprint or \
                (record.get("id"), record.get("image"), record.get("key")) != (item.id, item.image, item.key):
            return None
        samples = []
        try:
            for entry in record["samples"]:
                blobs = {}
                for role, name in entry["files"].items():
                    data = (folder / name).read_bytes()
                    if _sha(data) != entry["sha256"][role]:
                        return None
                    blobs[role] = data
                samples.append(SampleResult(
                    key=entry["key"], size=tuple(entry["size"]), features=entry["features"], stats=entry["stats"],
                    notes=entry["notes"], mask_png=blobs["mask"] if with_files else b"",
                    image_bytes=(blobs.get("image") if with_files else None), image_suffix=entry["image_suffix"],
                    disagreement_png=blobs.get("disagreement", b"") if with_files else b""))
        except (OSError, KeyError, TypeError, ValueError):
            return None
        return ItemResult(item.key, item.id, item.image, samples, record.get("skip_reason") or "")

    def missing(self, items: Iterable[WorkItem]) -> list[WorkItem]:
        """The items without a complete record (what a run still has to do)."""
        return [item for item in items if self.load(item, with_files=False) is None]

    def prune_others(self) -> list[Path]:
        """Remove the work of other fingerprints (older settings); return what was removed."""
        removed = []
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.is_dir() and child.name != self.fingerprint and len(child.name) == 16:
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(child)
        return removed

