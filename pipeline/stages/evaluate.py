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

The mIoU comes with a percentile bootstrap interval over the test images
(``evaluate.bootstrap_resamples`` draws, level ``evaluate.confidence_level``, seed 0): with
135 test portraits, two models a point apart may not differ at all.

Reads ``<paths.models>/<arch>/model.pt`` (from ``train``) and the labelled rows of
``evaluate.source``/``evaluate.split`` in ``paths.prepared``. Writes the per-image table
``<paths.models>/<arch>/per_image.csv`` (``id``, ``image_key``, ``iou``, ``boundary_f1``,
values in 0..1; it feeds the bias report) and ``<paths.metrics>/eval/<arch>.json``
(``miou``, ``miou_low``, ``miou_high`` and ``boundary_f1`` in percent, ``n_images``).

Peers (``--peer NAME``, one of ``evaluate.peers``): a pretrained segmenter a user could pick
instead of training one, measured on the same rows, ground-truth masks and metrics, so
``compare`` and the bias report can show where our models stand. ``mediapipe`` and
``mediapipe_landscape`` are MediaPipe's selfie segmenter, general (256x256) and landscape
(144x256), run through its PyTorch port (``pipeline.teachers.mediapipe``) with MediaPipe's
own input handling: the whole image stretched to the network's size, RGB in [0, 1], the
probability resized bilinearly to the image's size, person = probability > 0.5 (the same
as logit > 0). Writes ``<paths.models>/peers/<name>/per_image.csv`` and
``<paths.metrics>/eval/peer_<name>.json``, which also holds the port's parameters, FLOPs
(``pipeline.flops``, at its own input size) and CPU latency, timed as the ``complexity``
stage times (``complexity.threads``, ``warmup_runs``, ``latency_runs``; batch 1, median), but
in PyTorch through the port, not in MediaPipe's own TFLite runtime.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, field_validator
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
BOOTSTRAP_SEED = 0  # fixed: the interval of one model does not move between runs

# Pretrained peers: name -> (MediaPipe variant, how tables name it).
PeerName = Literal["mediapipe", "mediapipe_landscape"]
PEERS: dict[str, tuple[str, str]] = {
    "mediapipe": ("general", "MediaPipe selfie (general, 256x256)"),
    "mediapipe_landscape": ("landscape", "MediaPipe selfie (landscape, 144x256)"),
}
PEER_THRESHOLD = 0.5  # MediaPipe's probability threshold, the same cut as logit > 0


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


def miou_interval(iou_values: Sequence[float] | np.ndarray, *, resamples: int, level: float,
                  seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval (x100) of the mean IoU, resampling images with replacement."""
    values = np.asarray(iou_values, dtype=float)
    if values.size == 0:
        raise StageError("no images were evaluated")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // values.size)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start:start + size] = values[rng.integers(0, values.size, size=(size, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail]) * 100.0
    return round(float(low), 4), round(float(high), 4)


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


def _resize_and_normalise(image: np.ndarray, transform) -> torch.Tensor:
    from pipeline.data import to_tensor

    return to_tensor(transform(image=image)["image"])


def _mediapipe_fit(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    from pipeline.teachers.mediapipe import fit_image

    return torch.from_numpy(fit_image(image, size))


class OriginalSizeDataset(Dataset):
    """Manifest rows as (image as the network takes it, mask at the original size).

    By default the image is resized to ``input_size`` and normalised as ``train`` does; ``fit``
    (uint8 RGB -> (3, H, W) tensor, picklable for workers) replaces that, for a peer.
    """

    def __init__(self, root: str | os.PathLike, frame: pd.DataFrame, input_size: int | None = None,
                 fit: Callable[[np.ndarray], torch.Tensor] | None = None):
        from pipeline.data import eval_transform

        if (input_size is None) == (fit is None):
            raise ValueError("give either input_size or fit")
        self.root = Path(root)
        self.rows = frame[frame["mask"] != ""].reset_index(drop=True)
        self.fit = fit or functools.partial(_resize_and_normalise, transform=eval_transform(input_size))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        from pipeline.manifest import load_sample

        row = self.rows.iloc[index]
        image, mask = load_sample(self.root, row)
        return {"image": self.fit(image), "mask": mask, "id": row["id"]}


def collate_original_size(items: list[dict]) -> dict:
    return {"image": torch.stack([i["image"] for i in items]), "mask": [i["mask"] for i in items],
            "id": [i["id"] for i in items]}


@torch.inference_mode()
def predict_peer_masks(segmenter: torch.nn.Module, images: torch.Tensor,
                       sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """A MediaPipe peer's masks at each image's (height, width): probability resized, > 0.5."""
    from pipeline.teachers.mediapipe import probability_at_size

    probability = segmenter(images)
    return [(probability_at_size(p[None], size) > PEER_THRESHOLD).cpu().numpy() for p, size in zip(probability, sizes)]


def evaluate_model(model: torch.nn.Module, loader, *, tolerance_px: float, device: str = "cpu",
                   progress: str | None = None) -> pd.DataFrame:
    """Per-image IoU and boundary F1 of ``model`` over a loader of ``collate_original_size`` batches."""
    model.eval()
    return evaluate_predictions(functools.partial(predict_masks, model), loader, tolerance_px=tolerance_px,
                                device=device, progress=progress)


def evaluate_predictions(predict: Callable[[torch.Tensor, list[tuple[int, int]]], list[np.ndarray]], loader, *,
                         tolerance_px: float, device: str = "cpu", progress: str | None = None) -> pd.DataFrame:
    """Per-image IoU and boundary F1 of ``predict(images, sizes) -> masks`` over ``collate_original_size`` batches."""
    rows = []
    for batch in tqdm(loader, desc=progress, disable=progress is None, unit="batch"):
        sizes = [m.shape for m in batch["mask"]]
        predicted = predict(batch["image"].to(device), sizes)
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
    bootstrap_resamples: int = Field(ge=100)  # of the mIoU's interval
    confidence_level: float = Field(gt=0.0, lt=1.0)
    peers: list[PeerName]  # pretrained segmenters evaluated the same way (`evaluate --peer NAME`)

    @field_validator("peers")
    @classmethod
    def _peers_once(cls, value: list[str]) -> list[str]:
        twice = sorted({p for p in value if value.count(p) > 1})
        if twice:
            raise ValueError(f"peers listed more than once: {twice}")
        return value


def test_rows(frame: pd.DataFrame, source: str, split: str, max_images: int, where: str) -> pd.DataFrame:
    """The labelled rows of ``source``/``split`` (the first ``max_images``; 0 = all), in manifest order."""
    labelled = frame[frame["mask"] != ""]
    rows = labelled[(labelled["source"] == source) & (labelled["split"] == split)]
    if rows.empty:
        present = sorted({f"{s}/{p}" for s, p in zip(labelled["source"], labelled["split"])})
        raise StageError(f"{where}: no labelled rows of source {source!r}, split {split!r} "
                         f"(labelled source/split pairs there: {', '.join(present) or 'none'})")
    return rows.iloc[:max_images] if max_images else rows


def _test_loader(params: EvaluateParams, paths: ProjectPaths, **fitting) -> DataLoader:
    from pipeline.manifest import read_manifest

    try:
        frame = read_manifest(paths.prepared)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    frame = test_rows(frame, params.source, params.split, params.max_images, paths.prepared)
    dataset = OriginalSizeDataset(paths.prepared, frame, **fitting)
    return DataLoader(dataset, batch_size=params.batch_size, shuffle=False, num_workers=params.workers,
                      collate_fn=collate_original_size)


def dataset_metrics(per_image: pd.DataFrame, params: EvaluateParams) -> dict:
    """What ``<paths.metrics>/eval/*.json`` holds for any evaluated segmenter."""
    low, high = miou_interval(per_image["iou"], resamples=params.bootstrap_resamples, level=params.confidence_level)
    figures = summarise(per_image)
    return {"miou": figures["miou"], "miou_low": low, "miou_high": high, "confidence_level": params.confidence_level,
            "boundary_f1": figures["boundary_f1"], "n_images": figures["n_images"],
            "boundary_tolerance_px": params.boundary_tolerance_px, "data": f"{params.source}/{params.split}"}


def _write_results(name: str, per_image: pd.DataFrame, metrics: dict, table: Path, metrics_file: Path,
                   params: EvaluateParams) -> None:
    write_csv(table, per_image.round({"iou": 6, "boundary_f1": 6}))
    write_json(metrics_file, metrics)
    print(f"evaluate {name}: mIoU {metrics['miou']:.2f} ({params.confidence_level * 100:g}% interval "
          f"{metrics['miou_low']:.2f}-{metrics['miou_high']:.2f}), boundary F1 {metrics['boundary_f1']:.2f} "
          f"on {metrics['n_images']} images ({params.source}/{params.split})")


def evaluate_arch(arch: str, params: EvaluateParams, paths: ProjectPaths, progress: bool) -> dict:
    """Evaluate ``<paths.models>/<arch>/model.pt``; write its per-image table and metrics."""
    trained = load_trained_model(trained_model_path(paths.models, arch), arch)
    device = resolve_device(params.device)
    model = trained.model.to(device)
    loader = _test_loader(params, paths, input_size=trained.input_size)
    per_image = evaluate_model(model, loader, tolerance_px=params.boundary_tolerance_px, device=device,
                               progress=f"evaluate {arch}" if progress else None)
    metrics = {**dataset_metrics(per_image, params), "input_size": trained.input_size}
    _write_results(arch, per_image, metrics, paths.model_dir(arch) / "per_image.csv",
                   paths.metrics_file("eval", f"{arch}.json"), params)
    return metrics


# ---------------------------------------------------------------- peers


def peer_per_image_path(paths: ProjectPaths, peer: str) -> Path:
    return Path(paths.models) / "peers" / peer / "per_image.csv"


def peer_metrics_path(paths: ProjectPaths, peer: str) -> Path:
    return paths.metrics_file("eval", f"peer_{peer}.json")


@torch.inference_mode()
def median_latency_ms(network: torch.nn.Module, input_shape: tuple[int, ...], *, runs: int, warmup: int,
                      threads: int) -> float:
    """Median milliseconds of one forward pass on a random input, with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand(input_shape)
        for _ in range(warmup):
            network(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            network(x)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(before)
    return statistics.median(times)


def peer_complexity(segmenter: torch.nn.Module, input_size: tuple[int, int], *, runs: int, warmup: int,
                    threads: int) -> dict:
    """Parameters, FLOPs and CPU latency of a peer's PyTorch port at its own input size (batch 1)."""
    from pipeline.flops import count_flops

    shape = (1, 3, *input_size)
    flops = count_flops(segmenter, shape)
    return {"params": int(sum(p.numel() for p in segmenter.parameters())),
            "flops_all_ops": round(flops.flops_all_ops / 1e9, 6), "flops_espnetv2": round(flops.macs_espnetv2 / 1e9, 6),
            "latency_ms": round(median_latency_ms(segmenter, shape, runs=runs, warmup=warmup, threads=threads), 3),
            "latency_runtime": "pytorch port (pipeline.teachers.mediapipe), not MediaPipe's TFLite runtime",
            "latency_threads": threads}


def evaluate_peer(peer: str, params: EvaluateParams, paths: ProjectPaths, timing: dict, progress: bool) -> dict:
    """Evaluate pretrained peer ``peer`` as the trained models are; write its per-image table and metrics.

    ``timing``: ``runs``, ``warmup`` and ``threads`` of its latency (the complexity stage's).
    """
    from pipeline.teachers.mediapipe import MediaPipeSelfieSegmenter

    variant, label = PEERS[peer]
    segmenter = MediaPipeSelfieSegmenter(variant)
    complexity = peer_complexity(segmenter, segmenter.input_size, **timing)
    device = resolve_device(params.device)
    segmenter.to(device)
    loader = _test_loader(params, paths, fit=functools.partial(_mediapipe_fit, size=segmenter.input_size))
    per_image = evaluate_predictions(functools.partial(predict_peer_masks, segmenter), loader,
                                     tolerance_px=params.boundary_tolerance_px, device=device,
                                     progress=f"evaluate peer {peer}" if progress else None)
    metrics = {**dataset_metrics(per_image, params), "kind": "peer", "peer": peer, "label": label,
               "input_size": list(segmenter.input_size), **complexity}
    _write_results(f"peer {peer}", per_image, metrics, peer_per_image_path(paths, peer),
                   peer_metrics_path(paths, peer), params)
    return metrics


class PeerTiming(Section):
    """The complexity stage's latency keys, read here so a peer is timed as our models are."""

    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True)  # the rest is complexity's
    threads: int = Field(ge=1, le=256)
    warmup_runs: int = Field(ge=0)
    latency_runs: int = Field(ge=1)


def latency_settings(params_file) -> dict:
    timing = load_section(PeerTiming, "complexity", params_file)
    return {"runs": timing.latency_runs, "warmup": timing.warmup_runs, "threads": timing.threads}


def _body(args: argparse.Namespace) -> int:
    paths = load_section(ProjectPaths, "paths", args.params)
    params = load_section(EvaluateParams, "evaluate", args.params)
    if params.threads:
        torch.set_num_threads(params.threads)
    if args.peer:
        if args.arch:
            raise StageError("give --arch or --peer, not both")
        unknown = [p for p in args.peer if p not in params.peers]
        if unknown:
            raise StageError(f"peer(s) {', '.join(unknown)} not in evaluate.peers ({', '.join(params.peers) or 'none'})")
        timing = latency_settings(args.params)
        for peer in args.peer:
            evaluate_peer(peer, params, paths, timing, progress=not args.quiet)
        return 0
    archs = archs_to_run(args.arch, (load_params(args.params).get("train") or {}).get("archs"))
    for arch in archs:
        evaluate_arch(arch, params, paths, progress=not args.quiet)
    return 0


def main(argv=None) -> int:
    parser = make_parser("evaluate", __doc__.split("\n\n")[0])
    parser.add_argument("--arch", help="evaluate this architecture only (default: every one in train.archs)")
    parser.add_argument("--peer", action="append", choices=sorted(PEERS),
                        help="evaluate this pretrained peer instead (repeatable; one of evaluate.peers)")
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
