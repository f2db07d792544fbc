"""The trained ExtremeC3Net on EG1800's test split: PyTorch vs the fused C kernels.

Evaluates ``models/extremec3net/model.pt`` (from ``dvc repro``) twice with the evaluate
stage's own code and settings (``params.yaml``: evaluate): once as the PyTorch model, once
on ``pipeline.native``. Prints mIoU and boundary F1 of both, how many images' IoU differs,
the largest logit difference, and seconds per image of each (batch 1 forward only).

    .venv/bin/python benchmarks/native_accuracy.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.manifest import read_manifest  # noqa: E402
from pipeline.native import NativeExtremeC3Net  # noqa: E402
from pipeline.params import load_section  # noqa: E402
from pipeline.paths import ProjectPaths  # noqa: E402
from pipeline.stages.evaluate import (EvaluateParams, OriginalSizeDataset, collate_original_size,  # noqa: E402
                                      evaluate_model, summarise, test_rows)
from pipeline.inference import load_trained_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_section(EvaluateParams, "evaluate", args.params)
    paths = load_section(ProjectPaths, "paths", args.params)
    model_path = paths.model_dir("extremec3net") / "model.pt"
    if not model_path.is_file():
        print(f"{model_path} not found: run `dvc repro` first", file=sys.stderr)
        return 2
    trained = load_trained_model(model_path, "extremec3net")
    model = trained.model
    native = NativeExtremeC3Net(model, threads=args.threads)
    input_size = trained.input_size
    frame = test_rows(read_manifest(paths.prepared), params.source, params.split, 0, paths.prepared)
    dataset = OriginalSizeDataset(paths.prepared, frame, input_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate_original_size)

    results, seconds, largest = {}, {"torch": [], "native": []}, 0.0
    with torch.inference_mode():
        for name, net in (("torch", model), ("native", native)):
            results[name] = evaluate_model(net, loader, tolerance_px=params.boundary_tolerance_px)
        for batch in loader:
            image = batch["image"]
            for name, net in (("torch", model), ("native", native)):
                start = time.perf_counter()
                out = net(image)
                seconds[name].append(time.perf_counter() - start)
                if name == "torch":
                    reference = out
            largest = max(largest, float((out - reference).abs().max()))
    differ = int((results["torch"]["iou"] != results["native"]["iou"]).sum())
    print(f"EG1800 {params.split}: {len(frame)} images at {input_size}x{input_size}, {args.threads} thread(s)")
    for name in ("torch", "native"):
        summary = summarise(results[name])
        print(f"{name:7s} mIoU {summary['miou']:.4f}  boundary F1 {summary['boundary_f1']:.4f}  "
              f"{statistics.median(seconds[name]) * 1e3:.2f} ms per image (median)")
    print(f"images whose IoU differs: {differ}; largest |logit difference|: {largest:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
