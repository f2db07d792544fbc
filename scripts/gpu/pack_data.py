"""Pack the training set into one compact file for the GPU machine, where ../shared does not travel.

Only the working tree goes to the device machine (64 MiB with the code), so the assembled
training set (``paths.train_set`` of the profile) travels as one ``.npz``:

- training rows: each image shrunk once so its short side is ``--short-side`` (aspect kept,
  area-averaged, as the ``cache_resized`` path of ``train`` does, never enlarged) and stored
  as JPEG bytes; its mask shrunk with nearest neighbour and stored as packed bits. The
  default, 288 px at JPEG quality 85, is what fits: measured on EG1800's portraits, about
  21.5 KiB an image, ~37 MiB for 1,757 (train's own cache side, 1.5 x 224 = 336, at quality
  90 needs ~57 MiB: over the limit with the code); the strongest zoom-ins (1.5x) then
  sample 288/336 of the output's resolution;
- validation rows: the ``train`` stage's own choice (``split_train_val`` with the profile's
  settings), resized once to the square training size (bilinear, as ``evaluate``), JPEG;
- ``meta``: JSON with the profile, the manifest's sha256, sizes and counts.

The GPU driver (``scripts/gpu/paper_run.py``) decodes it once and keeps it on the GPU. JPEG
(quality ``--quality``) changes pixels slightly; the figure to quote is ``evaluate`` run here
on the weights it brings back. Arrays are plain numbers and fixed-width strings: the file
loads with ``allow_pickle=False``.

    python scripts/gpu/pack_data.py --profile profiles/paper.yaml --out tmp/gpu/pack.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = Path("tmp/gpu/pack.npz")  # tmp/ is git-ignored: name it in the device tool's carry
FORMAT = 1
DEFAULT_SHORT_SIDE, DEFAULT_QUALITY = 288, 85


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def _concatenate(chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    return np.frombuffer(b"".join(chunks), dtype=np.uint8).copy(), offsets


def pack_rows(root: str | Path, rows, prepare, quality: int, progress: str | None = None) -> dict[str, np.ndarray]:
    """Images (JPEG), masks (packed bits), sizes, ids and sources of manifest ``rows`` after ``prepare``."""
    from tqdm import tqdm

    from pipeline.manifest import load_sample

    jpegs, bits, sizes, ids, sources = [], [], [], [], []
    for row in tqdm(rows.to_dict("records"), desc=progress, disable=progress is None, unit="image"):
        image, mask = load_sample(root, row)
        if mask is None:
            raise ValueError(f"{row['id']}: training row without a mask")
        image, mask = prepare(image, mask.astype(np.uint8))
        jpegs.append(encode_jpeg(image, quality))
        bits.append(np.packbits(mask.astype(bool).ravel()).tobytes())
        sizes.append(mask.shape[:2])
        ids.append(row["id"])
        sources.append(row["source"])
    jpeg, jpeg_offsets = _concatenate(jpegs)
    mask_bits, mask_offsets = _concatenate(bits)
    return {"jpeg": jpeg, "jpeg_offsets": jpeg_offsets, "mask_bits": mask_bits, "mask_offsets": mask_offsets,
            "hw": np.array(sizes, dtype=np.int32).reshape(-1, 2), "ids": np.array(ids, dtype=str),
            "sources": np.array(sources, dtype=str)}


def pack(profile: str | Path, out: str | Path, *, train_set: str | Path | None = None,
         short_side: int = DEFAULT_SHORT_SIDE, quality: int = DEFAULT_QUALITY, limit: int = 0, max_mib: float = 48.0,
         progress: bool = True) -> dict:
    """Write the pack for ``profile``'s training settings; returns its meta. Refuses a pack over ``max_mib``."""
    import cv2

    from pipeline.atomic import atomic_path
    from pipeline.hashing import sha256_file
    from pipeline.manifest import MANIFEST_NAME, read_manifest
    from pipeline.params import load_section
    from pipeline.paths import ProjectPaths
    from pipeline.stages.train import TrainParams, split_train_val

    settings = load_section(TrainParams, "train", profile).settings
    root = Path(train_set or load_section(ProjectPaths, "paths", profile).train_set)
    frame = read_manifest(root)
    train_rows, val_rows = split_train_val(frame, settings)
    if limit:
        train_rows, val_rows = train_rows.iloc[:limit], val_rows.iloc[:max(1, limit // 4)]
    side = short_side
    size = settings.input_size

    def shrink(image, mask):
        h, w = mask.shape
        scale = side / min(h, w)
        if scale >= 1:
            return image, mask
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        return (cv2.resize(image, new, interpolation=cv2.INTER_AREA),
                cv2.resize(mask, new, interpolation=cv2.INTER_NEAREST))

    def square(image, mask):
        return (cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR),
                cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST))

    arrays = {f"train_{k}": v for k, v in pack_rows(root, train_rows, shrink, quality,
                                                     "pack train" if progress else None).items()}
    arrays |= {f"val_{k}": v for k, v in pack_rows(root, val_rows, square, quality,
                                                   "pack val" if progress else None).items()}
    meta = {"format": FORMAT, "profile": Path(profile).as_posix(), "train_set": root.as_posix(),
            "manifest_sha256": sha256_file(root / MANIFEST_NAME), "input_size": size, "short_side": side,
            "quality": quality, "train_images": len(train_rows), "val_images": len(val_rows), "limit": limit}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, meta=np.array(json.dumps(meta)), **arrays)  # masks shrink; JPEG does not
    mib = out.stat().st_size / 2**20
    if mib > max_mib:
        out.unlink()
        raise SystemExit(f"pack_data: {mib:.1f} MiB is over --max-mib {max_mib:g} (the working tree that travels is "
                         f"64 MiB with the code): lower --short-side (now {side}) or --quality (now {quality})")
    meta["mib"] = round(mib, 2)
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pack_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="profiles/paper.yaml", help="params file whose train settings apply")
    parser.add_argument("--train-set", help="training manifest folder (default: the profile's paths.train_set)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"the pack (default {DEFAULT_OUT})")
    parser.add_argument("--short-side", type=int, default=DEFAULT_SHORT_SIDE,
                        help=f"stored short side of training images (default {DEFAULT_SHORT_SIDE})")
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help=f"JPEG quality (default {DEFAULT_QUALITY})")
    parser.add_argument("--limit", type=int, default=0, help="first N training rows only (smoke tests); 0 = all")
    parser.add_argument("--max-mib", type=float, default=48.0, help="refuse a larger pack (default 48)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        meta = pack(args.profile, args.out, train_set=args.train_set, short_side=args.short_side,
                    quality=args.quality, limit=args.limit, max_mib=args.max_mib, progress=not args.quiet)
    except (ValueError, OSError, RuntimeError) as exc:  # ParamsError, StageError, unreadable files
        print(f"pack_data: error: {exc}", file=sys.stderr)
        return 2
    print(f"pack_data: {meta['train_images']} training + {meta['val_images']} validation images, short side "
          f"{meta['short_side']}, JPEG q{meta['quality']}: {args.out} ({meta['mib']} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
