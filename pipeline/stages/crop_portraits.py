"""Stage ``crop_portraits``: portraits cropped around detected faces in full-body photos.

The ExtremeC3Net paper's first way to get more portrait data cheaply: full-body photos
that already have person masks (here CCP's labelled photos) become EG1800-like portraits
by cropping around each detected face, taking in the upper body and some background.
Each crop is a separate sample (``ccp_crops/<key>_f<i>``) whose split is the parent's.

Reads ``paths.prepared`` (the photos of ``source`` in ``splits``, and the reference
portraits). Writes ``paths.crops`` (canonical: ``manifest.csv`` with provenance columns,
images, masks, and ``dropped.csv``: every face that did not become a crop, with its
reason), ``paths.crops_report``/{calibration.csv, calibration.png, reference_faces.csv}
(the crops against EG1800's portraits: mask fraction, face size and position) and
``paths.metrics``/crops.json.

A photo that cannot be read is dropped with its reason; a run that yields no crop at
all fails (keeping the previous crops) unless ``allow_empty`` says an empty output is
expected. The geometry, drop rules and calibration are pure (``pipeline.crops``); this
module holds the params, reads the photos, runs the detector and writes the files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import AfterValidator, Field, model_validator
from tqdm import tqdm

from pipeline.atomic import atomic_dir, write_bytes, write_csv, write_json
from pipeline.crops.calibration import (REFERENCE_COLUMNS, calibration_table, plot_calibration, reference_measures,
                                        summarize)
from pipeline.crops.geometry import crop_image_and_mask
from pipeline.crops.params import DetectorParams, GeometryParams, Probability, QualityParams
from pipeline.crops.planning import (UNREADABLE, CropIds, CropPlan, Dropped, dropped_frame, placement_notes,
                                     plan_crops, provenance, select_photos)
from pipeline.detectors import FaceDetector
from pipeline.devices import resolve_device
from pipeline.images import BadImageError, check_max_pixels, strip_root, write_image, write_mask_png
from pipeline.manifest import MANIFEST_NAME, ManifestRow, load_sample, mask_statistics, read_manifest
from pipeline.params import ParamsError, Section, load_section
from pipeline.paths import ProjectPaths, lies_within
from pipeline.stage import StageError, make_parser, run_main

METRICS_FILE = "crops.json"  # in paths.metrics
DROPPED_NAME = "dropped.csv"  # in paths.crops
REPORT_FILES = ("calibration.csv", "reference_faces.csv", "calibration.png")  # in paths.crops_report


# --------------------------------------------------------------------------- params


LabelledSplit = Literal["train", "val", "test"]  # "unlabelled" photos have no mask to crop
SourceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]  # as prepare's dataset names


def _distinct(values: list) -> list:
    if not values:
        raise ValueError("must name at least one")
    if len(set(values)) != len(values):
        raise ValueError(f"repeated entries in {values}")
    return values


class CalibrationParams(Section):
    reference_source: SourceName
    reference_splits: Annotated[list[LabelledSplit], AfterValidator(_distinct)]
    reference_limit: int = Field(ge=0)  # reference portraits whose faces are detected (evenly spaced by id); 0 = all
    quantiles: Annotated[list[Probability], AfterValidator(_distinct)]


class CropParams(Section):
    source: SourceName
    splits: Annotated[list[LabelledSplit], AfterValidator(_distinct)]
    # Crop ids are "<output_source>/<photo key>_f<i>"; also a folder name in the output.
    output_source: SourceName
    limit: int = Field(ge=0)  # photos to process (first by id); 0 = all
    image_format: Literal["jpg", "png"]
    # No crop at all (every face dropped, thresholds too strict) fails the stage unless allowed.
    allow_empty: bool
    # Larger photos are dropped with a reason instead of decoded.
    max_image_pixels: Annotated[int, AfterValidator(check_max_pixels)]
    geometry: GeometryParams
    quality: QualityParams
    detector: DetectorParams
    calibration: CalibrationParams

    @model_validator(mode="after")
    def _new_source(self):
        if self.output_source == self.source:
            raise ValueError(f"output_source must differ from source ({self.source!r}): crops are new samples")
        return self


def check_paths(paths: ProjectPaths, source: str | os.PathLike = "params.yaml") -> None:
    """Refuse a layout where the crops would replace their input or their own reports.

    ``paths.crops`` is replaced as a whole: it may not overlap ``paths.prepared``, nor hold
    the report folder or the metrics file.
    """
    crops, prepared = paths.crops, paths.prepared
    problems = []
    if lies_within(crops, prepared) or lies_within(prepared, crops):
        problems.append(f"paths.crops ({paths.crops}) and paths.prepared ({paths.prepared}) overlap; the crops "
                        "would replace their own input")
    for key, value in (("paths.crops_report", paths.crops_report),
                       ("paths.metrics", str(Path(paths.metrics) / METRICS_FILE))):
        if lies_within(value, crops):
            problems.append(f"{key} ({value}) must not lie inside paths.crops ({paths.crops}), which is "
                            "replaced as a whole")
    if problems:
        raise ParamsError(f"{source}: invalid value(s) in 'paths' for crop_portraits:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------- reading photos, writing crops


def _batches(frame: pd.DataFrame, size: int):
    for start in range(0, len(frame), size):
        yield frame.iloc[start:start + size]


def read_photo(input_root: Path, row, max_pixels: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A manifest row's image and mask; BadImageError (naming files relative to the dataset) if unusable."""
    try:
        return load_sample(input_root, row, max_pixels)
    except (BadImageError, ValueError, OSError) as exc:
        raise BadImageError(strip_root(str(exc), input_root)) from None
    except Exception as exc:  # any other decode failure is this photo's problem, not the stage's
        raise BadImageError(strip_root(f"{row['image']}: cannot read ({type(exc).__name__}: {exc})",
                                       input_root)) from None


def crop_photos(frame: pd.DataFrame, input_root: Path, output_root: Path, detector: FaceDetector,
                params: CropParams, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Detect, plan and write the crops of ``frame``'s photos under ``output_root``.

    Returns (manifest with provenance columns, dropped table, faces detected).
    """
    rows: list[dict] = []
    dropped: list[Dropped] = []
    faces_detected = 0
    ids = CropIds()
    bar = tqdm(total=len(frame), desc="crop_portraits", unit="photo", disable=not progress)
    for batch in _batches(frame, params.detector.batch_size):
        loaded = []
        for _, row in batch.iterrows():
            try:
                image, mask = read_photo(input_root, row, params.max_image_pixels)
            except BadImageError as exc:
                dropped.append(Dropped(row["id"], -1, UNREADABLE, str(exc)))
                continue
            loaded.append((row, image, mask))
        detections = detector.detect([image for _, image, _ in loaded]) if loaded else []
        for (row, image, mask), faces in zip(loaded, detections):
            faces_detected += len(faces)
            result = plan_crops(row["id"], mask, faces, params.geometry, params.quality)
            dropped.extend(result.dropped)
            for plan in result.plans:
                key = ids.claim(plan)
                rows.append(_write_crop(plan, key, row["split"], image, mask, output_root, params))
        bar.update(len(batch))
    bar.close()
    manifest = pd.DataFrame(rows)
    if manifest.empty:
        manifest = pd.DataFrame(columns=ManifestRow.columns())
    return manifest, dropped_frame(dropped), faces_detected


def _write_crop(plan: CropPlan, key: str, split: str, image: np.ndarray, mask: np.ndarray, output_root: Path,
                params: CropParams) -> dict:
    source = params.output_source
    size = (params.geometry.output_width, params.geometry.output_height)
    image_rel = f"images/{source}/{key}.{params.image_format}"
    mask_rel = f"masks/{source}/{key}.png"
    crop_rgb, crop_mask = crop_image_and_mask(image, mask, plan.placement.box, size)
    write_image(output_root / image_rel, crop_rgb)
    write_mask_png(output_root / mask_rel, crop_mask)
    row = ManifestRow(id=f"{source}/{key}", source=source, split=split, image=image_rel, mask=mask_rel,
                      width=size[0], height=size[1], origin=plan.parent_id, notes=placement_notes(plan.placement),
                      **mask_statistics(crop_mask))
    return {**vars(row), **provenance(plan)}


def detect_reference(frame: pd.DataFrame, input_root: Path, detector: FaceDetector, batch_size: int,
                     max_pixels: int | None, progress: bool = True,
                     unreadable: list[Dropped] | None = None) -> pd.DataFrame:
    """Face and mask figures of the reference portraits (EG1800), one row per image with a face.

    Unreadable reference images are appended to ``unreadable`` (when given) with the reason.
    """
    rows = []
    bar = tqdm(total=len(frame), desc="calibration (reference faces)", unit="image", disable=not progress)
    for batch in _batches(frame, batch_size):
        loaded = []
        for _, row in batch.iterrows():
            try:
                image, mask = read_photo(input_root, row, max_pixels)
            except BadImageError as exc:
                if unreadable is not None:
                    unreadable.append(Dropped(row["id"], -1, UNREADABLE, str(exc)))
                continue
            fraction = float(mask.mean()) if mask is not None else float("nan")
            loaded.append((row["id"], image, fraction))
        for (sample_id, image, fraction), faces in zip(loaded, detector.detect([im for _, im, _ in loaded])):
            measures = reference_measures(faces, (image.shape[1], image.shape[0]), fraction)
            if measures is not None:
                rows.append({"id": sample_id, "faces": len(faces), **measures})
        bar.update(len(batch))
    bar.close()
    return pd.DataFrame(rows, columns=REFERENCE_COLUMNS)


def remove_own_leftovers(output_dir: Path) -> None:
    """Delete temporary folders a killed earlier run of this stage left beside its output."""
    if output_dir.parent.is_dir():
        for leftover in output_dir.parent.glob(f".{output_dir.name}.*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)


def empty_output_error(n_photos: int, dropped: pd.DataFrame) -> StageError:
    counts = Counter(dropped["reason"]) if len(dropped) else Counter()
    top = "; ".join(f"{reason} {n}" for reason, n in counts.most_common(4)) or "nothing dropped"
    return StageError(f"crop_portraits: no crop from {n_photos} photo(s) ({top}); check the detector thresholds and "
                      "the quality params, or set crop_portraits.allow_empty: true to accept an empty output")


def build_detector(d: DetectorParams) -> FaceDetector:
    from pipeline import detectors

    device = resolve_device(d.device)
    try:
        return detectors.build_detector(d.name, device=device, detect_size=d.detect_size,
                                        min_face_size=d.min_face_size, thresholds=d.thresholds,
                                        pyramid_factor=d.pyramid_factor)
    except ValueError as exc:
        raise StageError(f"detector: {exc}") from exc


def _run(args: argparse.Namespace) -> int:
    params = load_section(CropParams, "crop_portraits", args.params)
    paths = load_section(ProjectPaths, "paths", args.params)
    check_paths(paths, args.params)
    input_root, output_dir, report_dir = Path(paths.prepared), Path(paths.crops), Path(paths.crops_report)
    try:
        manifest = read_manifest(input_root)
    except ValueError as exc:  # duplicate ids, missing columns, not a CSV
        raise StageError(str(exc)) from None
    photos = select_photos(manifest, params.source, params.splits, params.limit)
    if photos.empty:
        raise StageError(f"{input_root / MANIFEST_NAME}: no labelled photos of source {params.source!r} "
                         f"in splits {params.splits}")
    calibration = params.calibration
    reference = select_photos(manifest, calibration.reference_source, calibration.reference_splits,
                              calibration.reference_limit, spread=True)
    if reference.empty:
        raise StageError(f"{input_root / MANIFEST_NAME}: no labelled images of reference source "
                         f"{calibration.reference_source!r} for calibration")
    detector = build_detector(params.detector)
    progress = not args.quiet
    remove_own_leftovers(output_dir)
    with atomic_dir(output_dir) as tmp:
        crops, dropped, faces_detected = crop_photos(photos, input_root, tmp, detector, params, progress)
        if crops.empty and not params.allow_empty:
            raise empty_output_error(len(photos), dropped)  # before the swap: the previous crops stay
        write_csv(tmp / MANIFEST_NAME, crops)
        write_csv(tmp / DROPPED_NAME, dropped)
    unreadable_reference: list[Dropped] = []
    reference_figures = detect_reference(reference, input_root, detector, params.detector.batch_size,
                                         params.max_image_pixels, progress, unreadable_reference)
    name = calibration.reference_source
    table_file, faces_file, plot_file = (report_dir / f for f in REPORT_FILES)
    write_csv(table_file, calibration_table(crops, reference_figures, calibration.quantiles, name))
    write_csv(faces_file, reference_figures)
    write_bytes(plot_file, plot_calibration(crops, reference_figures, name))
    metrics = summarize(len(photos), crops, dropped, reference_figures, name, faces_detected)
    metrics["reference_unreadable"] = len(unreadable_reference)
    write_json(paths.metrics_file(METRICS_FILE), metrics)
    if not args.quiet:
        print(f"crop_portraits: {metrics['crops_kept']} crops from {metrics['photos_with_crop']}/{len(photos)} photos, "
              f"{metrics['dropped_total']} dropped; median mask fraction {metrics['median_mask_fraction']}")
    for item in unreadable_reference:
        print(f"crop_portraits: reference image {item.parent_id} skipped: {item.detail}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("crop-portraits", __doc__.split("\n\n")[0])
    return run_main(_run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
