"""The train stage under ``torchrun --standalone --nproc-per-node 2`` (gloo, 1 thread a rank) beside
one process (2 threads) with the same global batch: per-epoch metrics, weights and seconds per
epoch, plus the figures docs/scaling.md builds on (gloo all-reduce of the parameter vector, the
training step, data loading per image).

Usage: python benchmarks/ddp_train.py [--train-set DIR] [--prepared /tmp/portrait-bench-train-set]
       [--images 96] [--size 128] [--batch 8] [--epochs 2] [--val 16] [--repeats 2] [--arch extremec3net]

``--train-set`` is a canonical folder with a manifest.csv; without it EG1800's train split and the
labelled CCP photos from ``../shared/datasets`` are prepared once into ``--prepared`` (as
``benchmarks/train_epoch.py`` does). The first ``--images`` rows train ``--arch`` (both of
ExtremeC3Net's stages, ``--epochs`` each) through ``portrait-curation train``, the two variants
alternating ``--repeats`` times (A/B, B/A, ...): on a shared machine compare the pairs, not one run.

Batch norm is synchronised across the ranks (``pipeline.distributed.GlooSyncBatchNorm`` on the
CPU), so the two runs differ by float reordering only, amplified over the steps of training: the
figures printed are that difference, measured (``tests/test_ddp.py`` checks the equality on a
small network with batch norm to 1e-5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def project_params(folder: Path, source: Path, args, threads: int) -> Path:
    """A project in ``folder``: params.yaml with this run's train settings, ``--images`` rows of
    ``source`` as its data/train_set (the default paths, relative to the project)."""
    import yaml

    subset_set(source, folder / "data" / "train_set", args.images)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["archs"] = [args.arch]
    params["train"]["settings"].update(input_size=args.size, epochs=args.epochs, batch_size=args.batch, workers=0,
                                       max_steps_per_epoch=0, max_val_images=args.val, threads=threads,
                                       resume=False, device="cpu", val_fraction=0.15)
    path = folder / "params.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def subset_set(source: Path, folder: Path, images: int) -> Path:
    """The first ``images`` labelled rows of ``source`` as a canonical folder (copies of their files)."""
    import shutil

    import pandas as pd

    from pipeline.manifest import MANIFEST_NAME

    frame = pd.read_csv(source / MANIFEST_NAME, keep_default_na=False)
    frame = frame[frame["mask"] != ""].head(images)
    for relative in [*frame["image"], *frame["mask"]]:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, folder / relative)
    frame.to_csv(folder / MANIFEST_NAME, index=False)
    return folder


def run_variant(name: str, params: Path, arch: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1" if name == "ddp" else "2"}
    stage = ["-m", "pipeline.cli", "train", "--params", "params.yaml", "--quiet"]
    command = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *stage]
               if name == "ddp" else [sys.executable, *stage])
    started = time.perf_counter()
    done = subprocess.run(command, cwd=params.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    folder = params.parent
    metrics = json.loads((folder / "metrics" / "train" / f"{arch}.json").read_text())
    import pandas as pd

    plots = pd.read_csv(folder / "plots" / "train" / f"{arch}.csv")
    weights = torch.load(folder / "models" / arch / "model.pt", weights_only=True)["model"]
    epochs = len(plots)
    return {"seconds_per_epoch": metrics["seconds"] / epochs, "wall": wall, "plots": plots, "metrics": metrics,
            "weights": weights}


def allreduce_worker(parameters: int, repeats: int) -> None:
    """Under torchrun: times of an all-reduce (gloo) of ``parameters`` float32 values (the gradient)
    and of 129 (one batch-norm layer's statistics, 2 x 64 channels + the count)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    figures = {"bytes": parameters * 4}
    for name, size in (("", parameters), ("small_", 129)):
        vector = torch.randn(size)
        for _ in range(20):
            dist.all_reduce(vector)
        times = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(vector)
            times.append(time.perf_counter() - start)
        figures[f"{name}median_ms"] = statistics.median(times) * 1e3
        figures[f"{name}p90_ms"] = sorted(times)[int(0.9 * repeats)] * 1e3
    if dist.get_rank() == 0:
        print(json.dumps(figures))
    dist.destroy_process_group()


def measure_allreduce(parameters: int) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
               "--allreduce-worker", str(parameters)]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_loading(train_set: Path, size: int, count: int = 48) -> float:
    """Seconds to decode and augment one training image (one thread, the train stage's dataset)."""
    from pipeline.manifest import read_manifest
    from pipeline.stages.train import seeded_training_data

    rows = read_manifest(train_set)
    data = seeded_training_data(train_set, rows[rows["mask"] != ""].reset_index(drop=True), size, 0)
    data[0]
    start = time.perf_counter()
    for i in range(1, count + 1):
        data[i % len(data)]
    return (time.perf_counter() - start) / count


def measure_step(arch: str, batch: int, size: int, threads: int, steps: int = 6) -> float:
    """Seconds of one forward+backward+Adam step of ``arch`` at ``batch`` x ``size`` px, ``threads`` threads."""
    import yaml

    from pipeline.losses import SegmentationLoss
    from pipeline.models import build_model

    torch.set_num_threads(threads)
    kwargs = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["model_kwargs"][arch]
    model = build_model(arch, **kwargs).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = SegmentationLoss("lovasz", 0.5, 7)
    images, masks = torch.randn(batch, 3, size, size), (torch.rand(batch, size, size) > 0.5).float()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-set", type=Path)
    parser.add_argument("--prepared", type=Path, default=Path(tempfile.gettempdir()) / "portrait-bench-train-set")
    parser.add_argument("--arch", default="extremec3net")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val", type=int, default=16, help="validation images (rank 0 validates)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--allreduce-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each figure as it comes (runs take minutes)
    if args.allreduce_worker:
        allreduce_worker(args.allreduce_worker, 200)
        return

    from pipeline.models import build_model
    from pipeline.models.registry import count_parameters

    if args.train_set is None:
        from train_epoch import prepared_set

        args.train_set = prepared_set(args.prepared, 2)
    work = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    source = args.train_set.resolve()
    import yaml

    kwargs = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["model_kwargs"][args.arch]
    parameters = count_parameters(build_model(args.arch, **kwargs))
    print(f"{args.arch} ({parameters} parameters), {args.images} images from {args.train_set}, batch {args.batch} "
          f"x {args.size}px, {args.epochs} epochs a stage; shared 2-core machine: compare pairs")

    runs: dict[str, list[dict]] = {"single": [], "ddp": []}
    for repeat in range(args.repeats):
        order = ("single", "ddp") if repeat % 2 == 0 else ("ddp", "single")
        for name in order:
            params = project_params(work / f"{name}{repeat}", source, args, 2 if name == "single" else 1)
            result = run_variant(name, params, args.arch)
            runs[name].append(result)
            print(f"  {name:6s} run {repeat + 1}: {result['seconds_per_epoch']:.2f} s/epoch (stage seconds / epochs, "
                  f"with validation), {result['wall']:.1f} s wall incl. start-up")
    one, two = runs["single"][0], runs["ddp"][0]
    for (_, a), (_, b) in zip(one["plots"].iterrows(), two["plots"].iterrows()):
        print(f"  epoch {int(a['epoch'])}: train loss {a['train_loss']:.4f} / {b['train_loss']:.4f} "
              f"(rel diff {abs(a['train_loss'] - b['train_loss']) / abs(a['train_loss']):.2%}), "
              f"val mIoU {a['val_miou']:.2f} / {b['val_miou']:.2f}  (single / ddp)")
    largest = max(float((one["weights"][k].float() - two["weights"][k].float()).abs().max()) for k in one["weights"])
    print(f"  largest weight difference {largest:.3g}; repeats of the same variant are identical: "
          f"{all(torch.equal(r['weights'][k], runs['ddp'][0]['weights'][k]) for r in runs['ddp'] for k in r['weights'])}")
    ratios = [d["seconds_per_epoch"] / s["seconds_per_epoch"] for s, d in zip(runs["single"], runs["ddp"])]
    print(f"  ddp / single seconds per epoch, per pair: {', '.join(f'{r:.2f}' for r in ratios)}")

    reduce = measure_allreduce(parameters)
    print(f"gloo all-reduce of {reduce['bytes'] / 1e3:.0f} KB (2 processes, localhost): median "
          f"{reduce['median_ms']:.2f} ms, p90 {reduce['p90_ms']:.2f} ms; of 129 floats (one batch-norm layer): "
          f"median {reduce['small_median_ms']:.2f} ms, p90 {reduce['small_p90_ms']:.2f} ms")
    per_image = measure_loading(work / "single0" / "data" / "train_set", args.size)
    print(f"decode + augment: {per_image * 1e3:.1f} ms per image (1 thread, {args.size}px)")
    for threads, batch in ((1, args.batch // 2), (2, args.batch)):
        step = measure_step(args.arch, batch, args.size, threads)
        print(f"step (forward+backward+Adam, synthetic batch): {step * 1e3:.0f} ms at batch {batch}, {threads} "
              f"thread(s) = {batch / step:.1f} images/s")


if __name__ == "__main__":
    main()
