"""The PyTorch port of MediaPipe's selfie segmenter against MediaPipe's own runtime.

MediaPipe 0.10.21 needs numpy<2 (this project pins numpy 2), so it runs in a separate venv
as a subprocess: build one once, e.g.

    python3.11 -m venv /tmp/mpvenv && /tmp/mpvenv/bin/pip install mediapipe==0.10.21 "numpy<2"
    .venv/bin/python benchmarks/mediapipe_parity.py --mediapipe-python /tmp/mpvenv/bin/python

Both sides get the very same decoded RGB arrays (decoded here, passed as .npy files):
real photos from ../shared/datasets (EG1800 test portraits and CCP val photos, the first
``--limit`` of each by id), plus a 256x256 crop (MediaPipe's fitting is then the identity:
the network alone) and a small image (upscaled into the model: the zero border shows).
MediaPipe runs ``SelfieSegmentation(model_selection=0)`` and ``(1)``. Printed per variant:
max and mean absolute probability difference, mask (p > 0.5) IoU per image (worst and
mean), and ms per 224x224 image of both runtimes at batch 1 (blocks alternated between the
two processes, median of the runs; also the CPU time each process spent, all its threads).

``--write-fixture tests/fixtures/mediapipe`` also writes MediaPipe's own masks of the first
two EG1800 test portraits and the first two CCP val photos (both variants) as 1-bit PNGs at
the image's size, with ``fixture.json`` naming the photos; ``tests/test_teacher_mediapipe.py``
checks the port against them without MediaPipe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mediapipe_teacher import REPO, labelled_photos  # noqa: E402

VARIANT_SELECTION = {"general": 0, "landscape": 1}

# Runs in MediaPipe's venv: masks of every input, then optional timing blocks on command.
REFERENCE = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import mediapipe as mp

folder, selections = Path(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")]
names = sorted(p.stem for p in folder.glob("in_*.npy"))
for selection in selections:
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=selection) as seg:
        for name in names:
            mask = seg.process(np.load(folder / f"{name}.npy")).segmentation_mask
            np.save(folder / f"ref{selection}_{name[3:]}.npy", np.asarray(mask, np.float32))
print("ready", flush=True)
timed = np.load(folder / "timed.npy") if (folder / "timed.npy").exists() else None
segs = {s: mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=s) for s in selections}
for line in sys.stdin:
    selection, runs = (int(v) for v in line.split())
    seconds = []
    for _ in range(runs):
        start, cpu_start = time.perf_counter(), time.process_time()
        segs[selection].process(timed)
        seconds.append((time.perf_counter() - start, time.process_time() - cpu_start))
    print(json.dumps(seconds), flush=True)
"""


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def parity_inputs(limit: int, params: str) -> list[tuple[str, np.ndarray]]:
    photos = [(pid, image) for dataset in ("eg1800/test", "ccp/val")
              for pid, image, _ in labelled_photos(dataset, params_file=params, limit=limit)]
    first = photos[0][1]
    photos.append(("crop256", np.ascontiguousarray(first[100:356, 100:356])))
    photos.append(("small", np.ascontiguousarray(first[::7, ::7])))
    return photos


def write_fixture(folder: Path, photos, reference: dict[str, dict[str, np.ndarray]], ours) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    chosen = [p for p in photos if p[0].startswith("eg1800/")][:2] + [p for p in photos if p[0].startswith("ccp/")][:2]
    entries = []
    for pid, image in chosen:
        masks = {}
        for variant, masks_by_id in reference.items():
            name = f"{pid.replace('/', '_')}_{variant}.png"
            Image.fromarray(masks_by_id[pid] > 0.5).save(folder / name, optimize=True)  # mode "1": 1 bit/pixel
            masks[variant] = {"file": name, "iou_of_port_when_written": round(mask_iou(ours[variant][pid] > 0.5,
                                                                                      masks_by_id[pid] > 0.5), 6)}
        entries.append({"id": pid, "height": int(image.shape[0]), "width": int(image.shape[1]),
                        "rgb_sha256": hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest(),
                        "masks": masks})
    doc = {"what": "MediaPipe 0.10.21 SelfieSegmentation masks (probability > 0.5) at each image's size, "
                   "model_selection 0 = general, 1 = landscape; written by benchmarks/mediapipe_parity.py",
           "images": entries}
    (folder / "fixture.json").write_text(json.dumps(doc, indent=1) + "\n")
    sizes = sum((folder / m["file"]).stat().st_size for e in entries for m in e["masks"].values())
    print(f"\nfixture: {len(entries)} images x {len(reference)} variants in {folder} ({sizes} bytes of PNG)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mediapipe-python", required=True, help="python of a venv with mediapipe==0.10.21")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--limit", type=int, default=20, help="photos per dataset (EG1800 test, CCP val)")
    parser.add_argument("--variants", default="general,landscape")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100, help="timed runs per runtime and variant (0: no timing)")
    parser.add_argument("--write-fixture", type=Path, default=None)
    args = parser.parse_args(argv)

    import cv2
    import torch

    from pipeline.teachers.mediapipe import MediaPipeSelfieSegmenter

    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    photos = parity_inputs(args.limit, args.params)
    timed = cv2.resize(photos[0][1], (224, 224), interpolation=cv2.INTER_AREA)
    with tempfile.TemporaryDirectory(prefix="mediapipe-parity-") as tmp:
        folder = Path(tmp)
        for i, (_, image) in enumerate(photos):
            np.save(folder / f"in_{i:04d}.npy", image)
        np.save(folder / "timed.npy", timed)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        proc = subprocess.Popen([args.mediapipe_python, "-c", REFERENCE, str(folder),
                                 ",".join(str(VARIANT_SELECTION[v]) for v in variants)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=env)
        try:
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"{args.mediapipe_python}: MediaPipe's reference run failed (exit {proc.wait()})")
            reference = {v: {pid: np.load(folder / f"ref{VARIANT_SELECTION[v]}_{i:04d}.npy")
                             for i, (pid, _) in enumerate(photos)} for v in variants}
            models = {v: MediaPipeSelfieSegmenter(v) for v in variants}
            ours = {v: dict(zip([pid for pid, _ in photos],
                                models[v].predict([image for _, image in photos], batch_size=8)))
                    for v in variants}
            print(f"{len(photos)} images: {len(photos) - 2} real photos (EG1800 test, CCP val), a 256x256 crop, "
                  "a small image")
            print("| variant | max abs diff | mean abs diff | worst mask IoU | mean mask IoU | "
                  "images with IoU < 0.999 |")
            print("| --- | --- | --- | --- | --- | --- |")
            for v in variants:
                diffs = [np.abs(ours[v][pid] - reference[v][pid]) for pid, _ in photos]
                ious = [mask_iou(ours[v][pid] > 0.5, reference[v][pid] > 0.5) for pid, _ in photos]
                worst = photos[int(np.argmin(ious))][0]
                print(f"| {v} | {max(d.max() for d in diffs):.2e} | {np.mean([d.mean() for d in diffs]):.2e} | "
                      f"{min(ious):.6f} ({worst}) | {np.mean(ious):.6f} | {sum(i < 0.999 for i in ious)} |")
            if args.write_fixture:
                write_fixture(args.write_fixture, photos, reference, ours)
            if args.runs:
                timing(args, proc, models, timed, variants)
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)
    return 0


def timing(args, proc, models, timed: np.ndarray, variants: list[str], block: int = 10) -> None:
    """ms per 224x224 image, batch 1, whole pipeline: MediaPipe and the port in alternating blocks."""
    import torch

    seconds = {(runtime, v): [] for v in variants for runtime in ("mediapipe", "port")}
    with torch.inference_mode():
        for v in variants:
            for _ in range(5):
                models[v].predict([timed], batch_size=1)
        for _ in range(max(1, args.runs // block)):
            for v in variants:
                proc.stdin.write(f"{VARIANT_SELECTION[v]} {block}\n")
                proc.stdin.flush()
                seconds[("mediapipe", v)] += json.loads(proc.stdout.readline())
                for _ in range(block):
                    start, cpu_start = time.perf_counter(), time.process_time()
                    models[v].predict([timed], batch_size=1)
                    seconds[("port", v)].append((time.perf_counter() - start, time.process_time() - cpu_start))
    print(f"\n224x224 image, batch 1, whole pipeline, {args.threads} threads, blocks of {block} alternated")
    print("| variant | runtime | ms median | ms min | CPU ms median |")
    print("| --- | --- | --- | --- | --- |")
    for (runtime, v), values in seconds.items():
        wall, cpu = [w for w, _ in values], [c for _, c in values]
        print(f"| {v} | {runtime} | {statistics.median(wall) * 1e3:.2f} | {min(wall) * 1e3:.2f} | "
              f"{statistics.median(cpu) * 1e3:.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
