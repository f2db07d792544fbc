"""Small stand-ins shared by test_teacher.py and test_pseudo_label.py, and the real CCP photos the teacher tests read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.images import write_image, write_mask_png
from pipeline.manifest import MANIFEST_NAME, ManifestRow, mask_statistics, to_frame


class BrightnessTeacher(nn.Module):
    """Stand-in teacher: person wherever the image is bright (so the true mask is known).

    Its logit is the mean of the normalised channels, scaled: bright pixels > 0.
    """

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.mean(dim=1, keepdim=True)


class LeftHalfTeacher(nn.Module):
    """Stand-in that ignores the image and calls the left half of the frame person (not mirror-symmetric)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        logits = torch.full((n, 1, h, w), -5.0)
        logits[..., : w // 2] = 5.0
        return logits


def rectangle_image(height: int, width: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A dark RGB image with a bright rectangle (x0, y0, x1, y1) and its boolean mask."""
    x0, y0, x1, y1 = box
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    image = np.full((height, width, 3), 20, dtype=np.uint8)
    image[mask] = 235
    return image, mask


def write_canonical(root: Path, samples: list[dict]) -> None:
    """Write a canonical dataset: each sample has id, split, image (array) and optional mask."""
    rows = []
    for sample in samples:
        source, key = sample["id"].split("/")
        image_rel = f"images/{source}/{key}.png"
        write_image(root / image_rel, sample["image"])
        mask = sample.get("mask")
        mask_rel = ""
        stats = {}
        if mask is not None:
            mask_rel = f"masks/{source}/{key}.png"
            write_mask_png(root / mask_rel, mask)
            stats = mask_statistics(mask)
        h, w = sample["image"].shape[:2]
        rows.append(ManifestRow(id=sample["id"], source=source, split=sample["split"], image=image_rel, mask=mask_rel,
                                width=w, height=h, origin=sample.get("origin", ""), **stats))
    to_frame(rows).to_csv(root / MANIFEST_NAME, index=False)


def write_params(path: Path, sections: dict) -> Path:
    """The quick profile with ``sections`` (``{section: {key: value}}``) merged in, at ``path``."""
    from params_helpers import write_params as write_quick

    return write_quick(path, sections)


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A few-hundred-byte PNG that claims ``side`` x ``side`` pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256: to show that a stage left it alone."""
    import hashlib

    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


class DrawnTeacher:
    """A stand-in teacher with a known mask: the bright pixels, or the left ``share`` of the frame."""

    def __init__(self, name: str, share: float | None):
        self.name, self.share, self.seen_ids = name, share, frozenset()

    def probabilities(self, images):
        out = []
        for image in images:
            if self.share is None:
                mask = image.mean(axis=2) > 128
            else:
                mask = np.zeros(image.shape[:2], bool)
                mask[:, : int(image.shape[1] * self.share)] = True
            out.append(np.where(mask, 0.9, 0.1).astype(np.float32))
        return out


def count_teacher_calls(monkeypatch) -> list[int]:
    """Record the batch size of every call of the fused teachers (what a resumed run must not redo)."""
    from pipeline.labelling.prediction import FusedTeachers

    calls: list[int] = []
    predict = FusedTeachers.predict

    def counting(self, images):
        calls.append(len(images))
        return predict(self, images)

    monkeypatch.setattr(FusedTeachers, "predict", counting)
    return calls


def ccp_items(shared: Path) -> dict:
    """CCP's labelled photos by key, split and labelled as ``prepare`` does by default (carried items are not person)."""
    from pipeline.sources.base import LoaderReport
    from pipeline.sources.ccp import iter_ccp

    items = iter_ccp(shared / "ccp", LoaderReport(), val_fraction=0.1, carried_items=["bag", "purse", "wallet"],
                     carried_items_are_person=False, include_unlabelled=False)
    return {item.key: item for item in sorted(items, key=lambda i: i.key)}


def labelled_photos(shared: Path, source: str, keys: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, RGB, bool mask) read as prepare reads them (CCP: carried items are not person)."""
    from pipeline.sources import LoaderReport
    from pipeline.sources.eg1800 import iter_eg1800_original
    from pipeline.stages.prepare import decode_item

    if source == "eg1800":
        by_key = {item.key: item for item in iter_eg1800_original(shared / "eg1800", LoaderReport()) if item.key in keys}
    else:
        by_key = ccp_items(shared)
    out = []
    for key in keys:
        decoded = decode_item(by_key[key], None)
        out.append((f"{source}/{key}", decoded.image.rgb, decoded.mask))
    return out
