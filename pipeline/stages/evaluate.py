"""Stage ``evaluate``: mIoU as the paper reports it, boundary F1, and a per-image table.

mIoU follows the ExtremeC3Net paper: the network sees the image resized to its training
size; its foreground logit is upsampled bilinearly back to the image's own size and
thresholded at 0; the foreground IoU of each image at that original resolution is averaged
over images (x100). Boundary F1 adds what IoU hides on large masks: whether the outline is
in the right place, within a tolerance of a few pixels.

Conventions for empty masks (the official code's ``EMPTY=1`` for IoU):
- IoU: both empty -> 1 (nothing to find, nothing found); exactly one empty -> 0.
- Boundary F1: the outline of a mask is its pixels with a 4-neighbour outside it; the image
  frame is not an outline. Both outlines empty -> 1; exactly one empty -> 0.

Reads ``<paths.models>/<arch>/model.pt`` (from ``train``) and the labelled rows of
``evaluate.source``/``evaluate.split`` in ``paths.prepared``. Writes the per-image table
``<paths.models>/<arch>/per_image.csv`` (``id``, ``image_key``, ``iou``, ``boundary_f1``,
values in 0..1; it feeds the bias report) and ``<paths.metrics>/eval/<arch>.json``
(``miou`` and ``boundary_f1`` in percent, ``n_images``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.atomic import write_csv, write_json
from pipeline.devices import Device, resolve_device
from pipeline.inference import archs_to_run, load_trained_model, trained_model_path
from pipeline.metrics import boundary_f1, iou
from pipeline.params import Section, load_params, load_section
from pipeline.paths import ProjectPaths
from pipeline.stage import StageError, make_parser, run_main

PER_IMAGE_COLUMNS = ["id", "image_key", "iou", "boundary_f1"]


# ---------------------------------------------------------------- pure metrics


def summarise(per_image: pd.DataFrame) -> dict:
    """Dataset figures from the per-image table: means in percent, as the paper reports them."""
    if per_image.empty:
        raise StageError("no images were evaluated")
    return {
        "miou": round(float(per_image["iou"].mean()) * 100, 4),
        "boundary_f1": round(float(per_image["boundary_f1"].mean()) * 100, 4),
        "n_images": int(len(per_image)),
    }


# ---------------------------------------------------------------- prediction


@torch.inference_mode()
def predict_masks(model: torch.nn.Module, images: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Boolean masks at each image's own (height, width) from a batch resized to the training size."""
    from pipeline.models import foreground_logit

    scores = foreground_logit(model(images)).unsqueeze(1)
    masks = []
    for score, (h, w) in zip(scores, sizes):
        full = F.interpolate(score.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False)
        masks.append((full[0, 0] > 0).cpu().numpy())
    return masks


class OriginalSizeDataset(Dataset):
    """Manifest rows as (image resized to the network's size, mask at the original size)."""

    def __init__(self, root: str | os.PathLike, frame: pd.DataFrame, input_size: int):
        from pipeline.data import eval_transform

        self.root = Path(root)
        self.rows = frame[frame["mask"] != ""].reset_index(drop=True)
        self.transform = eval_transform(input_size)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        from pipeline.data import to_tensor
        from pipeline.manifest import load_sample

        row = self.rows.iloc[index]
        image, mask = load_sample(self.root, row)
        resized = self.transform(image=image)["image"]
        return {"image": to_tensor(resized), "mask": mask, "id": row["id"]}


def collate_original_size(items: list[dict]) -> dict:
    return {"image": torch.stack([i["image"] for i in items]), "mask": [i["mask"] for i in items],
            "id": [i["id"] for i in items]}


def evaluate_model(model: torch.nn.Module, loader, *, tolerance_px: float, device: str = "cpu",
                   progress: str | None = None) -> pd.DataFrame:
    """Per-image IoU and boundary F1 of ``model`` over a loader of ``collate_original_size`` batches."""
    model.eval()
    rows = []
    for batch in tqdm(loader, desc=progress, disable=progress is None, unit="batch"):
        sizes = [m.shape for m in batch["mask"]]
        predicted = predict_masks(model, batch["image"].to(device), sizes)
        for sample_id, pred, truth in zip(batch["id"], predicted, batch["mask"]):
            rows.append({"id": sample_id, "image_key": sample_id.split("/", 1)[-1], "iou": iou(pred, truth),
                         "boundary_f1": boundary_f1(pred, truth, tolerance_px)})
    return pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS)


# ---------------------------------------------------------------- stage


class EvaluateParams(Section):
    source: str = Field(min_length=1)
    split: Literal["train", "val", "test"]
    boundary_tolerance_px: float = Field(ge=0, allow_inf_nan=False)
    batch_size: int = Field(ge=1)
    workers: int = Field(ge=0, le=64)
    max_images: int = Field(ge=0)  # 0 = all (a smaller number only for smoke runs)
    device: Device
    threads: int = Field(ge=0, le=256)  # torch CPU threads; 0 = torch's default


def test_rows(frame: pd.DataFrame, source: str, split: str, max_images: int, where: str) -> pd.DataFrame:
    """The labelled rows of ``source``/``split`` (the first ``max_images``; 0 = all), in manifest order."""
    labelled = frame[frame["mask"] != ""]
    rows = labelled[(labelled["source"] == source) & (labelled["split"] == split)]
    if rows.empty:
        present = sorted({f"{s}/{p}" for s, p in zip(labelled["source"], labelled["split"])})
        raise StageError(f"{where}: no labelled rows of source {source!r}, split {split!r} "
                         f"(labelled source/split pairs there: {', '.join(present) or 'none'})")
    return rows.iloc[:max_images] if max_images else rows


def evaluate_arch(arch: str, params: EvaluateParams, paths: ProjectPaths, progress: bool) -> dict:
    """Evaluate ``<paths.models>/<arch>/model.pt``; write its per-image table and metrics."""
    from pipeline.manifest import read_manifest

    model_dir = paths.model_dir(arch)
    trained = load_trained_model(trained_model_path(paths.models, arch), arch)
    device = resolve_device(params.device)
    model = trained.model.to(device)
    input_size = trained.input_size
    try:
        frame = read_manifest(paths.prepared)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    frame = test_rows(frame, params.source, params.split, params.max_images, paths.prepared)
    dataset = OriginalSizeDataset(paths.prepared, frame, input_size)
    loader = DataLoader(dataset, batch_size=params.batch_size, shuffle=False, num_workers=params.workers,
                        collate_fn=collate_original_size)
    per_image = evaluate_model(model, loader, tolerance_px=params.boundary_tolerance_px, device=device,
                               progress=f"evaluate {arch}" if progress else None)
    metrics = {**summarise(per_image), "boundary_tolerance_px": params.boundary_tolerance_px,
               "input_size": input_size, "data": f"{params.source}/{params.split}"}
    write_csv(model_dir / "per_image.csv", per_image.round({"iou": 6, "boundary_f1": 6}))
    write_json(paths.metrics_file("eval", f"{arch}.json"), metrics)
    print(f"evaluate {arch}: mIoU {metrics['miou']:.2f}, boundary F1 {metrics['boundary_f1']:.2f} "
          f"on {metrics['n_images']} images ({params.source}/{params.split})")
    return metrics


def _body(args: argparse.Namespace) -> int:
    paths = load_section(ProjectPaths, "paths", args.params)
    params = load_section(EvaluateParams, "evaluate", args.params)
    archs = archs_to_run(args.arch, (load_params(args.params).get("train") or {}).get("archs"))
    if params.threads:
        torch.set_num_threads(params.threads)
    for arch in archs:
        evaluate_arch(arch, params, paths, progress=not args.quiet)
    return 0


def main(argv=None) -> int:
    parser = make_parser("evaluate", __doc__.split("\n\n")[0])
    parser.add_argument("--arch", help="evaluate this architecture only (default: every one in train.archs)")
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
