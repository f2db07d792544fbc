"""Teacher inference speed on this machine: images/s and peak memory, per configuration.

    .venv/bin/python benchmarks/pseudo_label.py               # table, one subprocess per row
    .venv/bin/python benchmarks/pseudo_label.py --interleaved # paper teacher, variants A/B/C... interleaved

Rows: the paper teacher (DeepLabv3+ SE-ResNeXt-50, 512x512) and the quick one (ResNet-18,
decoder 64, 128x128), batch 1 and 4, with and without flip TTA, fp32 or bfloat16 (weights cast once),
and the paper teacher run at 384 with its logits upsampled to 512 (same output size).
Every variant goes through ``TeacherRunner.predict`` (resize, normalise, forward, upsample,
sigmoid) on 512x512 RGB images, so each produces the same 512x512 probability map; the
``plain`` row is the bare smp forward on a ready tensor (baselines.md: 1.70 img/s, 751 MB).

Peak memory is the process's ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (resident set,
so it includes Python, torch and the weights), one fresh process per row. Random weights:
speed does not depend on them. ``--interleaved`` times the batch-1 variants in turns in
one process (ratios are what survive a loaded machine) and compares each variant's
output with fp32 at 512: the Pearson correlation of the logits and the share of pixels
with the same person/background decision. With random weights these only show numerical
drift (bf16); whether a lower input size keeps the masks good must be judged on a
trained teacher, by pseudo_label's validation IoU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER = {"encoder_name": "se_resnext50_32x4d", "decoder_channels": 256, "size": 512}
QUICK = {"encoder_name": "resnet18", "decoder_channels": 64, "size": 128}

# (label, teacher, batch, tta, bfloat16, run_size)
ROWS = [
    ("paper plain smp forward (baseline)", "paper", 1, False, False, None),
    ("paper runner fp32", "paper", 1, False, False, None),
    ("paper runner bf16", "paper", 1, False, True, None),
    ("paper runner bf16 @384->512", "paper", 1, False, True, 384),
    ("paper runner fp32 b4", "paper", 4, False, False, None),
    ("paper runner bf16 b4", "paper", 4, False, True, None),
    ("paper runner bf16 +TTA", "paper", 1, True, True, None),
    ("paper runner fp32 +TTA", "paper", 1, True, False, None),
    ("quick runner fp32", "quick", 1, False, False, None),
    ("quick runner fp32 b4", "quick", 4, False, False, None),
    ("quick runner fp32 +TTA", "quick", 1, True, False, None),
    ("quick runner fp32 b4 +TTA", "quick", 4, True, False, None),
]


def _model(which: str):
    import torch

    from pipeline.teachers.deeplab import build_teacher, teacher_config

    spec = PAPER if which == "paper" else QUICK
    torch.manual_seed(0)
    return build_teacher(teacher_config(spec["encoder_name"], 1, spec["decoder_channels"])).eval(), spec


def _images(n: int, size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def measure_row(index: int, runs: int) -> dict:
    import torch

    from pipeline.teachers.deeplab import TeacherRunner, images_to_batch

    torch.set_num_threads(2)
    label, which, batch, tta, bf16, run_size = ROWS[index]
    model, spec = _model(which)
    images = _images(batch, 512)
    if label.endswith("(baseline)"):
        x = images_to_batch(images, spec["size"])

        def step():
            with torch.no_grad():
                model(x)
    else:
        runner = TeacherRunner(model, run_size or spec["size"], flip_tta=tta, channels_last=True, bfloat16=bf16)

        def step():
            runner.predict(images)
    for _ in range(2):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"row": label, "batch": batch, "images_per_s": round(batch / median, 3),
            "best_images_per_s": round(batch / min(times), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def interleaved(rounds: int) -> None:
    """Paper teacher, batch 1: plain forward vs runner variants, timed in turns in one process."""
    import copy

    import numpy as np
    import torch

    from pipeline.teachers.deeplab import TeacherRunner, images_to_batch

    torch.set_num_threads(2)
    model, _ = _model("paper")
    images = _images(1, 512)
    x = images_to_batch(images, 512)
    with torch.inference_mode():
        reference = model(x)[0, 0].numpy()

    def plain():
        with torch.no_grad():
            return model(x)[0, 0].numpy()

    variants = {"plain fp32 (no_grad)": plain}
    for name, kwargs in (("runner fp32 channels_last", {}), ("runner bf16 channels_last", {"bfloat16": True}),
                         ("runner fp32 @384->512", {"size": 384}),
                         ("runner bf16 @384->512", {"size": 384, "bfloat16": True})):
        runner = TeacherRunner(copy.deepcopy(model), kwargs.pop("size", 512), channels_last=True, **kwargs)
        variants[name] = lambda runner=runner: torch.logit(torch.from_numpy(runner.predict(images)[0].probability),
                                                           eps=1e-6).numpy()
    agree, times = {}, {name: [] for name in variants}
    for name, run in variants.items():  # warm-up; how close the logits stay to fp32 at 512
        run()
        out = run()
        agree[name] = (float(np.corrcoef(out.ravel(), reference.ravel())[0, 1]),
                       float(np.mean((out > 0) == (reference > 0))))
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain fp32 (no_grad)"])
    print(f"paper teacher 512x512 batch 1, {rounds} interleaved rounds: median s, img/s, speed-up vs plain, "
          f"logit correlation with fp32@512, same decision share:")
    for name, values in times.items():
        med = statistics.median(values)
        corr, same = agree[name]
        print(f"  {name:28s} {med:7.3f} s  {1 / med:6.2f} img/s  x{base / med:5.2f}  corr {corr:.4f}  same {same:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", default="", help="run rows whose label contains this text")
    parser.add_argument("--interleaved", type=int, nargs="?", const=6, default=0, metavar="ROUNDS")
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if args.row is not None:
        print(json.dumps(measure_row(args.row, args.runs)))
        return
    if args.interleaved:
        interleaved(args.interleaved)
        return
    print(f"{'row':40s} {'batch':>5s} {'img/s':>8s} {'best':>8s} {'peak RSS MB':>12s}")
    for index, row in enumerate(ROWS):
        if args.only not in row[0]:
            continue
        proc = subprocess.run([sys.executable, __file__, "--row", str(index), "--runs", str(args.runs)],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(f"{row[0]:40s} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{result['row']:40s} {result['batch']:5d} {result['images_per_s']:8.2f} "
              f"{result['best_images_per_s']:8.2f} {result['peak_rss_mb']:12d}", flush=True)


if __name__ == "__main__":
    main()
