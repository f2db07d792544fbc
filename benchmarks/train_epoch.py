"""End-to-end training throughput (decoding, augmentation, loading, step) of the plain path against the
fast path (train.settings: cache_resized, persistent_workers, fused_loss, channels_last, bf16 where
native), through the train stage's own data builders and ``pipeline.training.run``.

Usage: python benchmarks/train_epoch.py [--train-set DIR] [--arch extremec3net] [--batch 32]
       [--steps 50] [--workers 1] [--threads 2] [--order plain fast] [--prepared /tmp/portrait-bench]
       [--default-allocator]

``--train-set`` is a canonical folder with a manifest.csv (``data/train_set`` after ``assemble``);
without it the real EG1800 train split and the labelled CCP photos (in place of the crops cut from
them) from ``../shared/datasets`` are prepared once into ``--prepared`` (the `prepare` stage's
loaders). Each variant trains ``--steps`` steps (0 = one whole epoch) of ExtremeC3Net's full network
from the same seed; the line per variant gives images/s with and without the one-off cache build,
and the mean loss of the last 10 steps (the fast path's should be within 2% of the plain one's).
Variants run one after the other in one process: on a shared machine repeat with ``--order`` reversed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
FAST = {"cache_resized": True, "persistent_workers": True, "fused_loss": True, "channels_last": True, "bf16": True}
PLAIN = {key: False for key in FAST}
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def plain_adam(parameters, lr: float, weight_decay: float) -> torch.optim.Adam:
    """The optimizer of the plain path (torch's per-tensor loop on CPU)."""
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


def settings_with(switches: dict, **changes):
    """``train.settings`` of params.yaml (the quick profile) with the speed ``switches`` and ``changes``."""
    import yaml

    from pipeline.stages.train import TrainSettings

    values = yaml.safe_load(PARAMS.read_text())["train"]["settings"]
    return TrainSettings(**{**values, **switches, **changes})


def prepared_set(folder: Path, workers: int) -> Path:
    """EG1800 (train split) + CCP (labelled photos) in the canonical layout, prepared once."""
    from pipeline.manifest import MANIFEST_NAME, to_frame
    from pipeline.stages.prepare import DatasetSpec, prepare_source

    if (folder / MANIFEST_NAME).is_file():
        return folder
    rows = []
    for spec in (DatasetSpec(name="eg1800", format="eg1800_original", root=str(SHARED / "eg1800")),
                 DatasetSpec(name="ccp", format="ccp", root=str(SHARED / "ccp"), include_unlabelled=False)):
        got, _ = prepare_source(spec, Path(spec.root), folder, workers, 50_000_000)
        rows += got
    frame = to_frame(rows)
    frame = frame[(frame["split"] == "train") & (frame["mask"] != "")]
    frame.to_csv(folder / MANIFEST_NAME, index=False)
    return folder


def train_variant(root: Path, rows, switches: dict, args, fused_adam: bool) -> dict:
    """``args.steps`` steps of ``args.arch`` as the train stage builds them with ``switches`` (and its
    fused Adam, ``pipeline.training.adam``, when ``fused_adam``; the plain path's per-tensor Adam otherwise)."""
    from pipeline.models import build_model
    from pipeline.stages.train import autocast_dtype, seeded_training_data, training_loss
    from pipeline.training import TrainingJob, adam, run

    settings = settings_with(switches, batch_size=args.batch, workers=args.workers, threads=args.threads,
                             epochs=1, max_steps_per_epoch=args.steps, input_size=args.size)
    started = time.perf_counter()
    data = seeded_training_data(root, rows, settings.input_size, settings.seed, settings.cache_resized, True,
                                args.threads)
    built = time.perf_counter() - started
    autocast, _ = autocast_dtype(settings, "cpu")
    losses: list[float] = []
    chosen: dict = {}

    def loss(net, images, masks):
        if "fn" not in chosen:
            chosen["fn"] = training_loss(net, settings.loss, settings.fused_loss)
        value = chosen["fn"](net, images, masks)
        losses.append(float(value.detach()))
        return value

    with tempfile.TemporaryDirectory() as folder:
        job = TrainingJob(
            name=args.arch, arch=args.arch, config={}, make_model=lambda fresh: build_model(args.arch),
            make_optimizer=lambda model: (adam if fused_adam else plain_adam)(model.parameters(), settings.lr,
                                                                               settings.weight_decay),
            loss=loss, learning_rate=lambda step: settings.lr, epochs=1, batch_size=settings.batch_size,
            train_data=data, checkpoint_dir=Path(folder), fingerprint="bench", seed=settings.seed,
            max_steps_per_epoch=settings.max_steps_per_epoch, keep_best=False, resume=False,
            workers=settings.workers, persistent_workers=settings.persistent_workers,
            channels_last=settings.channels_last, autocast=autocast, progress=True, log=lambda m: None)
        start = time.perf_counter()
        run(job)
        trained = time.perf_counter() - start
    images = len(losses) * settings.batch_size
    return {"images": images, "train_s": trained, "cache_s": built, "autocast": autocast,
            "last10": statistics.mean(losses[-10:]), "steps": len(losses)}


def main() -> None:
    from pipeline.manifest import read_manifest

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-set", type=Path, help="canonical folder with manifest.csv (default: prepare EG1800+CCP)")
    parser.add_argument("--prepared", type=Path, default=Path(tempfile.gettempdir()) / "portrait-bench-train-set")
    parser.add_argument("--arch", default="extremec3net")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=50, help="steps per variant; 0 = one whole epoch")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--order", nargs="+", default=["plain", "fast"], choices=["plain", "fast"])
    parser.add_argument("--default-allocator", action="store_true",
                        help="keep glibc's malloc settings (the train stage retains freed memory: pipeline.allocator)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.default_allocator:
        from pipeline.allocator import retain_freed_memory

        retain_freed_memory()
    root = args.train_set or prepared_set(args.prepared, args.threads)
    rows = read_manifest(root)
    rows = rows[rows["mask"] != ""].reset_index(drop=True)
    print(f"{len(rows)} training images from {root}; {args.arch}, batch {args.batch} x {args.size}px, "
          f"{args.threads} threads, {args.workers} loader processes")
    results = {}
    for name in args.order:
        results[name] = r = train_variant(root, rows, FAST if name == "fast" else PLAIN, args, name == "fast")
        print(f"{name:6s} {r['steps']} steps: {r['images'] / r['train_s']:6.1f} images/s training "
              f"({r['images'] / (r['train_s'] + r['cache_s']):6.1f} with the {r['cache_s']:.0f} s data setup), "
              f"autocast {r['autocast']}, mean loss of the last 10 steps {r['last10']:.4f}")
    if {"plain", "fast"} <= results.keys():
        p, f = results["plain"], results["fast"]
        print(f"fast / plain: x{(f['images'] / f['train_s']) / (p['images'] / p['train_s']):.2f} images/s; "
              f"last-10 loss ratio {f['last10'] / p['last10']:.4f}")


if __name__ == "__main__":
    main()
