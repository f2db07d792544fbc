"""A stand-in pseudo-labelled pool for testing and benchmarking the review queue.

Writes the same layout pseudo_label does (canonical manifest, 0/255 mask PNGs, scores.csv
with mask_sha256), from EG1800 photos and their human masks when the real data is there
(some masks deliberately damaged, with low scores, so the queue has failures to find) or
from synthetic shapes otherwise. A test helper (beside teacher_helpers.py), not part of the
package; ``python tests/review_standin.py --out DIR`` writes one for trying the App by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import write_csv
from pipeline.images import mask_to_png_bytes, write_image
from pipeline.manifest import ManifestRow, mask_statistics, to_frame

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_EG1800 = REPO_ROOT.parent / "shared" / "datasets" / "eg1800"


def synthetic_sample(index: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A coloured picture with an elliptic "person"; deterministic per index."""
    rng = np.random.default_rng(index)
    height, width = int(size * 4 / 3), size
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height * rng.uniform(0.45, 0.6), width * rng.uniform(0.4, 0.6)
    mask = ((yy - cy) / (height * 0.35)) ** 2 + ((xx - cx) / (width * 0.3)) ** 2 < 1
    image = np.empty((height, width, 3), np.uint8)
    image[...] = rng.integers(0, 255, 3, dtype=np.uint8)
    image[mask] = rng.integers(0, 255, 3, dtype=np.uint8)
    stripes = (xx // max(2, width // 12)) % 2 == 0  # texture, so a tinted overlay is easy to see
    image[stripes] = (image[stripes] * 0.6).astype(np.uint8)
    return image, mask


def eg1800_samples(count: int, size: int | None = None, start: int = 0):
    """(key, RGB, mask) of the first ``count`` EG1800 photos that have a mask, optionally
    resized to ``size`` pixels wide."""
    from PIL import Image
    from scipy.io import loadmat

    images = sorted((SHARED_EG1800 / "images_data_crop").glob("*.jpg"))
    produced = 0
    for path in images[start:]:
        mask_file = SHARED_EG1800 / "images_mask" / f"{path.stem}_mask.mat"
        if not mask_file.is_file():
            continue
        photo = Image.open(path).convert("RGB")
        mask = loadmat(mask_file)["mask"] > 0
        if mask.shape != (photo.height, photo.width):
            continue
        if size:
            height = round(photo.height * size / photo.width)
            photo = photo.resize((size, height), Image.BILINEAR)
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, height), Image.NEAREST)) > 127
        yield path.stem, np.asarray(photo), mask
        produced += 1
        if produced >= count:
            return


def damage(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible teacher failure: a band of the person cut away or background added."""
    out = mask.copy()
    height, width = out.shape
    y0 = int(rng.uniform(0.3, 0.7) * height)
    if rng.random() < 0.5:
        out[y0:, :] = False
    else:
        out[: height // 3, : width // 2] = True
    return out


def write_pool(out_dir: str | os.PathLike, samples, failure_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Write a pool from (key, RGB, mask) triples; return its scores table."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows, scores = [], []
    for key, image, mask in samples:
        failed = rng.random() < failure_fraction
        if failed:
            mask = damage(mask, rng)
        image_rel, mask_rel = f"images/pseudo/{key}.jpg", f"masks/pseudo/{key}.png"
        write_image(out_dir / image_rel, image)
        png = mask_to_png_bytes(mask)
        (out_dir / mask_rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / mask_rel).write_bytes(png)
        rows.append(ManifestRow(id=f"pseudo/{key}", source="pseudo", split="train", image=image_rel, mask=mask_rel,
                                width=image.shape[1], height=image.shape[0], origin=f"standin/{key}",
                                notes="stand-in (damaged mask)" if failed else "stand-in",
                                **mask_statistics(mask)))
        score = rng.uniform(0.05, 0.5) if failed else rng.uniform(0.45, 1.0)
        scores.append({"id": f"pseudo/{key}", "origin": f"standin/{key}", "score": round(score, 4),
                       "confidence": round(score * 0.9, 4), "mask_fraction": round(float(mask.mean()), 4),
                       "mask_sha256": hashlib.sha256(png).hexdigest()})
    write_csv(out_dir / "manifest.csv", to_frame(rows))
    frame = pd.DataFrame(scores)
    write_csv(out_dir / "scores.csv", frame)
    return frame


def write_quality(quality, items, routes, p_good=None):
    """score_pool's scores.csv and auto.jsonl for ``items`` (routes: id -> auto/audit/review)."""
    from pipeline.quality import auto_accept as aa
    from pipeline.quality.outputs import AUTO_JOURNAL_NAME, SCORES_NAME

    quality.mkdir(parents=True, exist_ok=True)
    p_good = p_good or {i.id: 0.5 + 0.05 * n for n, i in enumerate(items)}
    rows = [{"id": i.id, "origin": i.origin, "mask_sha256": i.mask_sha256, "p_good": p_good[i.id],
             "low_part": "teacher_agreement", "route": routes.get(i.id, "review"), "review_rank": n,
             "contribution_teacher_agreement": -1.25, "contribution_confidence": 0.5} for n, i in enumerate(items)]
    pd.DataFrame(rows).to_csv(quality / SCORES_NAME, index=False)
    choice = aa.choose_threshold(np.linspace(0.999, 0.9, 400), np.ones(400, bool), target=0.02, confidence=0.95,
                                 candidates=4)
    accepted = pd.DataFrame([{"id": r["id"], "mask_sha256": r["mask_sha256"], "p_good": r["p_good"],
                              "audit": r["route"] == "audit"} for r in rows if r["route"] != "review"])
    events = aa.auto_events(accepted, choice, "m", aa.NO_HUMAN_TIME) if len(accepted) else []
    (quality / AUTO_JOURNAL_NAME).write_text(aa.journal_text(events))
    return events


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--size", type=int, default=300, help="width of resized EG1800 photos")
    parser.add_argument("--synthetic", action="store_true", help="do not read EG1800")
    args = parser.parse_args(argv)
    if args.synthetic or not SHARED_EG1800.is_dir():
        samples = ((f"{i:05d}", *synthetic_sample(i)) for i in range(args.count))
    else:
        samples = eg1800_samples(args.count, args.size)
    frame = write_pool(args.out, samples)
    print(f"wrote {len(frame)} samples to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
