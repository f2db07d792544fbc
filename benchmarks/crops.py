"""Throughput of portrait cropping on CCP's full-body photos, and the share that yield a crop.

For each detector setting, times the per-photo work of the crop_portraits stage on the
labelled CCP photos in ../shared/datasets/ccp (550x825): JPEG decode, face detection in
batches, the drop rules and the crop of image and mask (writing files is left out). It
prints images per second (wall clock, and per CPU second of this process: both drop
when other processes share the cores), the share of photos that yield at least one crop, and how many faces that the
full-size detector turns into crops the setting loses.

    .venv/bin/python benchmarks/crops.py --photos 100 --detect-size 320x480 full
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.stages import crop_portraits as cp
from pipeline.detectors.mtcnn import MTCNNDetector
from pipeline.images import read_rgb

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def parse_size(text: str):
    if text == "full":
        return None
    w, h = text.lower().split("x")
    return int(w), int(h)


def load_photos(ccp: Path, count: int) -> list[tuple[str, Path, np.ndarray]]:
    from scipy.io import loadmat

    annotations = sorted((ccp / "annotations" / "pixel-level").glob("*.mat"))[:count]
    if not annotations:
        raise SystemExit(f"no CCP annotations under {ccp}")
    return [(a.stem, ccp / "photos" / f"{a.stem}.jpg", loadmat(a)["groundtruth"] > 0) for a in annotations]


def run(photos, detector, params: cp.CropParams, batch_size: int):
    """Time decode + detect + plan + crop.

    Returns (wall s, cpu s, faces per photo, faces kept as crops per photo, photos with a crop).
    """
    size = (params.geometry.output_width, params.geometry.output_height)
    faces_per_photo, kept_per_photo, with_crop = [], [], 0
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(photos), batch_size):
        batch = photos[start:start + batch_size]
        images = [read_rgb(path) for _, path, _ in batch]
        for (photo_id, _, mask), image, faces in zip(batch, images, detector.detect(images)):
            faces_per_photo.append(faces)
            plans = cp.plan_crops(f"ccp/{photo_id}", mask, faces, params).plans
            kept_per_photo.append([plan.face for plan in plans])
            for plan in plans:
                cp.crop_image_and_mask(image, mask, plan.placement.box, size)
            with_crop += bool(plans)
    return time.perf_counter() - wall, time.process_time() - cpu, faces_per_photo, kept_per_photo, with_crop


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def faces_lost(reference, candidate) -> tuple[int, int]:
    """(reference faces with no candidate face at IoU >= 0.5, reference faces)."""
    lost = total = 0
    for ref_faces, faces in zip(reference, candidate):
        for face in ref_faces:
            total += 1
            if not any(iou(face.box, f.box) >= 0.5 for f in faces):
                lost += 1
    return lost, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--datasets", type=Path, default=DATASETS, help="shared datasets root (default: %(default)s)")
    parser.add_argument("--photos", type=int, default=100, help="labelled CCP photos to use (default: %(default)s)")
    parser.add_argument("--detect-size", nargs="+", default=["320x480", "full"],
                        help="detection canvases WxH, or 'full' (default: %(default)s)")
    parser.add_argument("--min-face-size", type=int, nargs="+", default=[20],
                        help="MTCNN min_face_size values in canvas pixels (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per setting, best kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = cp.CropParams()
    photos = load_photos(args.datasets / "ccp", args.photos)
    print(f"{len(photos)} labelled CCP photos, batch {args.batch_size}, {args.threads} torch threads, "
          f"min probability {params.quality.min_probability}")
    settings = [(parse_size(s), m) for s in args.detect_size for m in args.min_face_size]
    reference = None
    if (None, 20) not in settings:
        reference = run(photos, MTCNNDetector(detect_size=None), params, args.batch_size)[3]
    results = []
    for detect_size, min_face in settings:
        detector = MTCNNDetector(detect_size=detect_size, min_face_size=min_face)
        detector.detect([read_rgb(photos[0][1])])  # warm-up
        best = None
        for _ in range(args.repeats):
            outcome = run(photos, detector, params, args.batch_size)
            if best is None or outcome[0] < best[0]:
                best = outcome
        results.append(((detect_size, min_face), best))
        if detect_size is None and min_face == 20:
            reference = best[3]
    print("faces lost: faces that become crops with full-size detection (min_face_size 20) and that this")
    print("setting does not find at IoU >= 0.5")
    print(f"{'detect size':>12} {'min face':>8} {'img/s':>7} {'img/CPU-s':>9} {'with crop':>9} {'faces lost':>10}")
    for (detect_size, min_face), (wall, cpu, faces, _, with_crop) in results:
        lost, total = faces_lost(reference, faces)
        label = "full" if detect_size is None else f"{detect_size[0]}x{detect_size[1]}"
        print(f"{label:>12} {min_face:>8} {len(photos) / wall:7.1f} {len(photos) / cpu:9.1f} "
              f"{with_crop / len(photos):9.1%} {f'{lost}/{total}':>10}")
    print("img/CPU-s counts all threads' CPU time; on an idle 2-core machine wall-clock img/s lies between it "
          "and twice it, depending on how well the detector uses both cores.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
