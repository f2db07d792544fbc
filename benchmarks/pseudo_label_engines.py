"""pseudo_label's two engines on the same pool: identical results, and images/s of each.

    .venv/bin/python benchmarks/pseudo_label_engines.py                  # 24 unlabelled CCP photos
    .venv/bin/python benchmarks/pseudo_label_engines.py --images 60 --rounds 2 --crop faces

Labels unlabelled CCP photos (read where they lie in ``../shared/datasets/ccp/photos``
through ``pipeline.labelling.pool_files``) with the quick profile's teachers (MediaPipe
``general`` + ``landscape``, flip TTA) twice per round, in turn: the local engine (this
process, ``--threads`` torch threads) and the Ray engine on a local cluster of ``--actors``
actors of one CPU each; each run starts from an empty work folder. It prints:

- whether every mask PNG is byte-identical between the engines, and the largest difference
  of any score column (features and the combined score);
- images/s of each engine (the Ray figure includes starting its actors, not the cluster);
- the figures a scaling model needs: in this process, read + decode time per image, teacher
  time per image (both teachers, TTA, fusion, one image at a time) and features + PNG time per
  image; in each Ray actor (logged by the actor itself), how long after the run's start it was
  ready (actor process, torch, teachers) and its images per busy second.

Timings are wall-clock on whatever else the machine runs; rounds interleave the engines so a
busy spell hits both.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.labelling.work import WorkFolder, WorkItem


class TimedWork(WorkFolder):
    """A work folder that notes when each result arrives (an engine's steady rate, past its start-up)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.arrivals: list[float] = []

    def save(self, result):
        super().save(result)
        self.arrivals.append(time.perf_counter())

    def steady_rate(self, skip: int) -> float:
        later = self.arrivals[skip:]
        return (len(later) - 1) / (later[-1] - later[0]) if len(later) > 1 and later[-1] > later[0] else math.nan


class TimedFactory:
    """Wraps a labeller factory so each actor logs its start-up and busy time to a file of its own."""

    def __init__(self, factory, log_dir: str):
        self.factory, self.log_dir = factory, log_dir

    def __call__(self):
        import os

        started = time.time()
        labeller = self.factory()
        log = Path(self.log_dir) / f"actor_{os.getpid()}.tsv"
        with log.open("a") as fh:
            fh.write(f"build\t{started}\t{time.time()}\t0\n")

        def timed(items):
            t0 = time.time()
            results = labeller(items)
            with log.open("a") as fh:
                fh.write(f"batch\t{t0}\t{time.time()}\t{len(items)}\n")
            return results

        return timed


def actor_figures(log_dir: Path, run_started: float) -> dict:
    """Per actor: seconds from the run's start until its labeller was built, busy seconds, images."""
    figures = {}
    for log in sorted(log_dir.glob("actor_*.tsv")):
        rows = [line.split("\t") for line in log.read_text().splitlines()]
        built = max(float(r[2]) for r in rows if r[0] == "build")
        batches = [(float(r[1]), float(r[2]), int(r[3])) for r in rows if r[0] == "batch"]
        figures[log.stem] = {"ready_after_s": built - run_started, "busy_s": sum(b - a for a, b, _ in batches),
                             "images": sum(n for *_, n in batches)}
    return figures


def unlabelled_photos(ccp: Path, count: int) -> list[str]:
    labelled = {p.stem for p in (ccp / "annotations" / "pixel-level").glob("*.mat")}
    photos = [p.name for p in sorted((ccp / "photos").glob("*.jpg")) if p.stem not in labelled]
    if len(photos) < count:
        raise SystemExit(f"only {len(photos)} unlabelled photos in {ccp / 'photos'}")
    return photos[:count]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=1, help="local/ray pairs, interleaved")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the local engine (an actor: 1)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", choices=["none", "faces"], default="none", help="pool_crop")
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "datasets"))
    args = parser.parse_args(argv)

    import torch

    from pipeline.images import mask_to_png_bytes
    from pipeline.labelling.labeller import LabellerFactory
    from pipeline.labelling.local import run_local
    from pipeline.labelling.pool_files import PoolReader
    from pipeline.labelling.prediction import combine_score, mask_features
    from pipeline.labelling.ray_data import RaySettings, run_ray
    from pipeline.params import load_params, parse_section
    from pipeline.paths import ProjectPaths
    from pipeline.stages import pseudo_label as pl
    from pipeline.teachers.deeplab import TeacherArchitecture

    torch.set_num_threads(args.threads)
    raw = load_params(REPO / "params.yaml")
    section = {**raw["pseudo_label"], "engine": "local", "pool_location": None, "work_dir": "unused",
               "pool_crop": args.crop, "batch_size": args.batch_size, "device": "cpu", "threads": args.threads,
               "ray": {"address": None, "num_actors": args.actors, "num_cpus_per_actor": 1, "num_gpus_per_actor": 0,
                       "batch_size": args.batch_size, "max_restarts": 3, "max_task_retries": 3}}
    settings = pl.PseudoLabelParams.model_validate(section)
    paths = parse_section(ProjectPaths, raw, "paths", "params.yaml")
    teacher_settings = parse_section(TeacherArchitecture, raw, "teacher", "params.yaml")
    ccp = Path(args.shared) / "ccp"
    photos = unlabelled_photos(ccp, args.images)
    reader = PoolReader(str(ccp / "photos"))
    items = [WorkItem(f"ccp_{Path(p).stem}", f"ccp/{Path(p).stem}", p) for p in photos]
    crop_parts = pl.load_crop_parts(raw, "params.yaml") if args.crop == "faces" else None
    factory = LabellerFactory(*pl.absolute_inputs(settings, paths), teacher_settings, crop_parts, reader, False,
                              pl.load_teachers, pl.make_cropper)
    print(f"pool: {len(items)} unlabelled CCP photos, teachers {settings.teachers}, flip_tta {settings.flip_tta}, "
          f"pool_crop {args.crop}; machine shared with other jobs: timings are indicative", flush=True)

    # The parts of one image's work, in this process.
    labeller = factory()
    read_s, teach_s, feature_s = [], [], []
    for item in items:
        t0 = time.perf_counter()
        image, _ = reader.load(item.image)
        t1 = time.perf_counter()
        (prediction,) = labeller.runner.predict([image])
        t2 = time.perf_counter()
        mask_features(prediction, settings.score)
        mask_to_png_bytes(prediction.mask)
        t3 = time.perf_counter()
        read_s.append(t1 - t0), teach_s.append(t2 - t1), feature_s.append(t3 - t2)
    print(f"per image (median, {args.threads} thread(s)): read+decode {1000 * statistics.median(read_s):.1f} ms, "
          f"teachers {1000 * statistics.median(teach_s):.1f} ms, features+PNG {1000 * statistics.median(feature_s):.1f} "
          f"ms", flush=True)

    import ray

    started = time.perf_counter()
    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    print(f"local Ray cluster ({args.actors} CPUs) started in {time.perf_counter() - started:.1f} s", flush=True)
    rates = {"local": [], "ray": []}
    steady = {"local": [], "ray": []}  # after the first batch: without actor start-up and teacher loading
    per_actor: list[float] = []  # images / busy seconds inside each actor
    worst = {"mask_mismatch": 0, "score_diff": 0.0}
    try:
        for round_index in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                work = {name: TimedWork(Path(tmp) / name, "0" * 16) for name in rates}
                t0 = time.perf_counter()
                run_local(lambda: labeller, items, work["local"], args.batch_size, progress=False)
                t1 = time.perf_counter()
                logs = Path(tmp) / "actor_logs"
                logs.mkdir()
                wall_started = time.time()
                run_ray(TimedFactory(factory, str(logs)), items, work["ray"], RaySettings(**settings.ray.model_dump()),
                        progress=False)
                t2 = time.perf_counter()
                for name, fig in actor_figures(logs, wall_started).items():
                    rate = fig["images"] / fig["busy_s"] if fig["busy_s"] else math.nan
                    per_actor.append(rate)
                    print(f"  {name}: ready {fig['ready_after_s']:.1f} s after the run started (Ray actor + torch + "
                          f"teachers), then {fig['images']} images in {fig['busy_s']:.1f} s busy = {rate:.2f} img/s",
                          flush=True)
                rates["local"].append(len(items) / (t1 - t0))
                rates["ray"].append(len(items) / (t2 - t1))
                steady["ray"].append(work["ray"].steady_rate(args.batch_size))
                steady["local"].append(work["local"].steady_rate(args.batch_size))
                for item in items:
                    a, b = work["local"].load(item), work["ray"].load(item)
                    if a.skip_reason != b.skip_reason or len(a.samples) != len(b.samples):
                        worst["mask_mismatch"] += 1
                        continue
                    for sa, sb in zip(a.samples, b.samples):
                        worst["mask_mismatch"] += sa.mask_png != sb.mask_png
                        values = [(sa.features[k], sb.features[k]) for k in sa.features]
                        values.append((combine_score(sa.features, settings.score.weights),
                                       combine_score(sb.features, settings.score.weights)))
                        for x, y in values:
                            if not (math.isnan(x) and math.isnan(y)):
                                worst["score_diff"] = max(worst["score_diff"], abs(float(x) - float(y)))
            print(f"round {round_index + 1}: local {rates['local'][-1]:.2f} img/s, ray ({args.actors} actors) "
                  f"{rates['ray'][-1]:.2f} img/s with actor start-up; after the first batch: local "
                  f"{steady['local'][-1]:.2f}, ray {steady['ray'][-1]:.2f} img/s", flush=True)
    finally:
        ray.shutdown()
    print(f"masks differing (PNG bytes): {worst['mask_mismatch']} of {len(items)} images; largest score/feature "
          f"difference: {worst['score_diff']:.3g}")
    local, distributed = statistics.median(rates["local"]), statistics.median(rates["ray"])
    print(f"images/s (median of {args.rounds} round(s)): local {local:.2f}, ray {distributed:.2f} "
          f"({distributed / args.actors:.2f} per actor, ratio ray/local {distributed / local:.2f})")
    local, distributed = statistics.median(steady["local"]), statistics.median(steady["ray"])
    print(f"images/s after the first batch (results as this process receives them; Ray hands them over in bursts): "
          f"local {local:.2f}, ray {distributed:.2f}")
    if per_actor:
        print(f"images/s per actor while labelling (inside the actor): median {statistics.median(per_actor):.2f}")
    return 0 if worst["mask_mismatch"] == 0 and worst["score_diff"] <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
