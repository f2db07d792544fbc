"""How long the bias report's core takes as the test set grows (prints figures only).

The bootstrap is vectorised per group, and the disparity interval resamples all images
jointly in chunks; this shows both stay cheap well beyond EG1800's 300 test images.

    .venv/bin/python benchmarks/bias_report.py [--images 300 3000 30000] [--resamples 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from pipeline.attributes import AGES, GENDERS, RACES, UNKNOWN, normalise_table
from pipeline.bias import build_report


def synthetic(n_images: int, rng: np.random.Generator) -> tuple[pd.Series, pd.DataFrame]:
    ids = [f"{i:06d}" for i in range(n_images)]
    people = rng.choice([1, 2, 3], size=n_images, p=[0.8, 0.15, 0.05])
    rows = []
    for image_id, count in zip(ids, people):
        for person in range(count):
            rows.append({"image_id": image_id, "person": person,
                         "race": rng.choice([*RACES, UNKNOWN], p=[0.7, 0.15, 0.05, 0.1]),
                         "gender": rng.choice([*GENDERS, UNKNOWN], p=[0.4, 0.55, 0.05]),
                         "age": rng.choice(list(AGES), p=[0.1, 0.85, 0.05])})
    iou = pd.Series(np.clip(rng.normal(0.95, 0.03, n_images), 0, 1), index=ids)
    return iou, normalise_table(pd.DataFrame(rows), "synthetic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[300, 3000, 30000])
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'images':>8} {'persons':>8} {'resamples':>9} {'seconds':>8}")
    for n in args.images:
        iou, attributes = synthetic(n, rng)
        settings = {"default_split": "test", "min_group_size": 5, "level": 0.9, "seed": 0}
        build_report("bench", iou.iloc[:10], attributes.iloc[:10], {}, resamples=100, **settings)  # warm-up: imports
        start = time.perf_counter()
        build_report("bench", iou, attributes, {}, resamples=args.resamples, **settings)
        print(f"{n:>8} {len(attributes):>8} {args.resamples:>9} {time.perf_counter() - start:>8.2f}")


if __name__ == "__main__":
    main()
