"""The calibrated quality score and the auto-accept rule, measured on labelled photos no teacher trained on.

What it does: runs the two pretrained MediaPipe teachers (``general`` and ``landscape``,
``pipeline.teachers.mediapipe``; neither saw CCP or EG1800) with flip TTA on every
labelled photo of ``../shared/datasets`` (CCP's 600 full-body photos, EG1800's portraits)
and on CCP's 500 unlabelled photos (the pool), fuses them by the mean probability and
computes pseudo_label's features per mask (``pipeline.labelling.prediction.score_components``, the
teachers' agreement and ``pipeline.quality.features.probability_features``) and, on
labelled photos, the IoU with the truth twice: CCP carried items (bags) as non-person,
prepare's default, and as person (the teachers see a carried bag as part of the person),
so what the label convention costs is printed beside every figure.

Every held-out figure is printed for two models in one run: ``--before`` (score_pool's
features before the probability features) and ``--after`` (params.yaml's
``score_pool.features``, or the list given): failure ROC AUC, Brier, reliability, the
risk-coverage points and the largest coverage whose pointwise error bound is <= the
target.

Then, honestly held out: the labelled photos are split in two halves by a seeded hash of
the photo id; on one half the score is cross-fitted and the auto-accept threshold chosen
(exactly as ``score_pool`` does on its evidence), and on the *other* half, which neither
fitting nor the threshold saw, it measures the failure ROC AUC (IoU < good_iou), Brier
score, reliability, and the auto-accepted share, error rate and its Clopper-Pearson upper
bound; then the halves swap. Last, ``score_pool``'s own core runs on all the labelled
evidence and the unlabelled pool, for the share of the pool a person never sees and the
expected key presses per accepted label (no person takes part: presses are counted, one
per mask shown, with each shown mask's P(good) as its chance of being accepted; no time is
measured or assumed).

    .venv/bin/python benchmarks/auto_accept.py                      # all photos (minutes on 2 cores)
    .venv/bin/python benchmarks/auto_accept.py --limit 100           # a quick look
    .venv/bin/python benchmarks/auto_accept.py --features /tmp/aa.csv   # keep/reuse the features
    .venv/bin/python benchmarks/auto_accept.py --features /tmp/aa.csv \\
        --sets ccp:train+val,eg1800:test,eg1800:train:400,ccp:unlabelled:200     # what was measured here

``--crops`` measures what the profiles score: CCP's photos become the portrait crops that
reach the reviewer, cut with ``crop_portraits``' MTCNN framing (labelled photos planned on
their true mask, pool photos on the teachers' fused mask, as ``pool_crop: faces`` does) and
labelled again by the teachers; EG1800's portraits stay as they are. A photo's crops stay in
one half. Its features go in a CSV of their own (the source is ``ccp_crops``).

    .venv/bin/python benchmarks/auto_accept.py --crops --features /tmp/aa_crops.csv    # the README's table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
SETS = "ccp:train+val,eg1800:train+test,ccp:unlabelled"  # source:splits, in this order
VARIANTS = ("general", "landscape")
BEFORE = ("confidence", "boundary_certainty", "flip_agreement", "largest_component_share", "presence", "components",
          "teacher_agreement")  # score_pool's features before issue 14's probability features


def photos(source: str, splits: tuple[str, ...], params_file: Path, limit: int):
    """(id, split, RGB image, bool mask or None, mask with carried items as person or None) through prepare's loader.

    The second mask exists for CCP only (prepare counts bags, purses and wallets as
    background by default; the teachers see them as part of the person).
    """
    from pipeline.params import load_section
    from pipeline.sources import LOADERS, LoaderReport
    from pipeline.stages.prepare import PrepareParams, decode_item

    params = load_section(PrepareParams, "prepare", params_file)
    spec = next(s for s in params.datasets if s.name == source)
    options = spec.model_dump(exclude={"name", "format", "root", "max_items"}, exclude_none=True)
    root = Path(spec.root) if Path(spec.root).is_absolute() else SHARED / spec.root
    items = [i for i in LOADERS[spec.format](root, LoaderReport(), **options)
             if i.split in splits and not i.skip_reason]
    items.sort(key=lambda i: i.key)
    carried_as_person = {}
    if "carried_items_are_person" in options and not options["carried_items_are_person"]:
        carried_as_person = {i.key: i for i in LOADERS[spec.format](root, LoaderReport(),
                                                                    **{**options, "carried_items_are_person": True})}
    for item in items[:limit] if limit else items:
        decoded = decode_item(item, params.max_image_pixels)
        other = carried_as_person.get(item.key)
        other_mask = other.read_mask(params.max_image_pixels) if other is not None and other.read_mask else None
        if other_mask is not None and (decoded.mask is None or other_mask.shape != decoded.mask.shape):
            other_mask = None  # an EXIF-rotated photo: only prepare's own convention is measured
        yield f"{source}/{item.key}", item.split, decoded.image.rgb, decoded.mask, other_mask


def features_of(images, models, score_settings) -> list[dict]:
    """pseudo_label's features of the fused, flip-TTA'd masks of the teachers."""
    from pipeline.metrics import iou
    from pipeline.teachers.fusion import teacher_agreement
    from pipeline.quality.features import probability_features
    from pipeline.labelling.prediction import score_components

    mirrored_images = [np.ascontiguousarray(image[:, ::-1]) for image in images]
    plain = {name: m.predict(images, batch_size=8) for name, m in models.items()}
    mirrored = {name: [p[:, ::-1] for p in m.predict(mirrored_images, batch_size=8)] for name, m in models.items()}
    out = []
    for i in range(len(images)):
        fused_plain = np.mean([plain[n][i] for n in models], axis=0)
        fused_mirrored = np.mean([mirrored[n][i] for n in models], axis=0)
        probability = 0.5 * (fused_plain + fused_mirrored)
        teacher_probability = {n: 0.5 * (plain[n][i] + mirrored[n][i]) for n in models}
        teacher = {n: p > 0.5 for n, p in teacher_probability.items()}
        row = score_components(probability, iou(fused_plain > 0.5, fused_mirrored > 0.5), score_settings)
        row.update(probability_features(probability, teacher_probability, score_settings.uncertain_band))
        names = list(models)
        row["teacher_agreement"] = teacher_agreement([teacher[n] for n in names])  # mean pairwise IoU
        row.update({f"mediapipe_{n}_mask_fraction": float(teacher[n].mean()) for n in names})
        row["_mask"] = probability > 0.5
        row["mask_sha256"] = hashlib.sha256(np.packbits(row["_mask"]).tobytes()).hexdigest()  # stands in for the file's
        out.append(row)
    return out


def face_crops(samples, cropper, models, score_settings):
    """Labelled or pool photos -> their portrait crops, cut as ``crop_portraits`` and ``pool_crop: faces`` cut them.

    A labelled photo's crops are planned on its true mask (as ``crop_portraits`` plans them),
    a pool photo's on the teachers' fused mask of the whole photo (as pseudo_label does); the
    teachers then label each crop again, as the stage does. Yields (crop id, photo id, split,
    crop, cut truth or None, cut carried-as-person truth or None).
    """
    from pipeline.crops.pool import cut_map

    for sample_id, split, image, truth, carried in samples:
        guide = truth if truth is not None else features_of([image], models, score_settings)[0]["_mask"]
        plans, _ = cropper.plan(sample_id, image, guide)
        for plan in plans:
            box = plan.placement.box

            def cut(mask, box=box):
                return None if mask is None else cut_map(mask.astype(np.float32), box, cropper.size) >= 0.5

            yield f"{sample_id}_f{plan.face_index}", sample_id, split, cut_map(image, box, cropper.size), \
                cut(truth), cut(carried)


def compute_features(args) -> pd.DataFrame:
    import torch
    import yaml

    from pipeline.metrics import iou
    from pipeline.teachers.mediapipe import MediaPipeSelfieSegmenter

    torch.set_num_threads(args.threads)
    score = yaml.safe_load(Path(args.params).read_text())["pseudo_label"]["score"]
    score_settings = SimpleNamespace(uncertain_band=score["uncertain_band"],
                                     min_mask_fraction=score["min_mask_fraction"])
    models = {v: MediaPipeSelfieSegmenter(v) for v in VARIANTS}
    if args.pose != "none":
        from pipeline.teachers.mediapipe_pose import MediaPipePoseSegmenter

        pose = {f: MediaPipePoseSegmenter(f) for f in ("full_body", "portrait", "per_image")}
    cropper = None
    if args.crops:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from teacher_fusion import crop_portraits_cropper

        cropper = crop_portraits_cropper(Path(args.params))
    done = pd.read_csv(args.features, dtype={"id": str, "origin": str}) if args.features and args.features.is_file() \
        else pd.DataFrame(columns=["source", "split"])
    rows, started = done.to_dict("records"), time.perf_counter()
    for entry in args.sets.split(","):
        photo_source, splits = entry.split(":")[0], tuple(entry.split(":")[1].split("+"))
        as_crops = cropper is not None and photo_source == "ccp"  # EG1800's photos are portraits already
        source = "ccp_crops" if as_crops else photo_source
        if ((done["source"] == source) & done["split"].isin(splits)).any():
            print(f"features: {source} {'+'.join(splits)} already in {args.features}", file=sys.stderr)
            continue
        batch = []
        if args.pose != "none":  # by-source: CCP's photos are bodies, EG1800's portraits
            framing = args.pose if args.pose != "by-source" else ("full_body" if source == "ccp" else "portrait")
            if as_crops:  # the photo is a body, its crop a portrait
                framing = "per_image"
            models["pose"] = pose[framing]

        def flush():
            for (sample_id, origin, split, _, truth, carried), row in zip(
                    batch, features_of([b[3] for b in batch], models, score_settings)):
                mask = row.pop("_mask")
                measured = iou(mask, truth) if truth is not None else np.nan
                rows.append({"id": sample_id, "origin": origin, "source": source, "split": split,
                             "evidence": "full_body" if source == "ccp" else "portrait", "iou": measured,
                             "iou_carried_as_person": iou(mask, carried) if carried is not None else measured,
                             **row})
            batch.clear()

        limit = args.limit if len(entry.split(":")) < 3 else int(entry.split(":")[2])
        samples = photos(photo_source, splits, Path(args.params), limit)
        samples = face_crops(samples, cropper, models, score_settings) if as_crops else \
            ((sample_id, sample_id, *rest) for sample_id, *rest in samples)
        for sample in samples:
            batch.append(sample)
            if len(batch) == 16:
                flush()
        flush()
        print(f"features: {source} {'+'.join(splits)} done, {len(rows)} masks, "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        if args.features:  # what is done so far survives an interrupted run (and is not computed again)
            pd.DataFrame(rows).to_csv(args.features, index=False)
    return pd.DataFrame(rows)


def half_of(sample_id: str, seed: int) -> int:
    return hashlib.sha256(f"{seed}\0{sample_id}".encode()).digest()[0] % 2


def held_out(labelled: pd.DataFrame, settings, features: list[str], truth: str = "iou"
             ) -> tuple[list[dict], pd.DataFrame]:
    """Fit + threshold on one half, measure on the other; both ways. Returns summaries and the held-out rows.

    ``truth``: the IoU column that says which masks are good.
    """
    from pipeline.metrics import roc_auc
    from pipeline.quality import auto_accept as aa
    from pipeline.quality.calibration import brier, cross_fit, fit_model

    rule = settings.auto_accept
    good = (labelled[truth] >= settings.good_iou).to_numpy()
    halves = labelled["origin"].map(lambda i: half_of(i, settings.seed)).to_numpy()  # a photo's crops: one half
    summaries, measured = [], []
    for fit_half in (0, 1):
        fit, test = labelled[halves == fit_half], labelled[halves != fit_half].copy()
        fit_good, test_good = good[halves == fit_half], good[halves != fit_half]
        oof = cross_fit(fit, fit_good, fit["origin"], features, folds=settings.folds, l2=settings.l2,
                        seed=settings.seed)
        choice = aa.choose_threshold(oof.probability, fit_good, target=rule.target_error,
                                     confidence=rule.confidence, candidates=rule.candidates,
                                     start_coverage=rule.start_coverage)
        model = fit_model(fit, fit_good, features, settings.l2)
        test["p_good"], test["good"], test["fitted_on_half"] = model.predict(test), test_good, fit_half
        auto = (test["p_good"] >= choice.threshold).to_numpy() if choice.threshold is not None else \
            np.zeros(len(test), bool)
        errors = int((auto & ~test_good).sum())
        summaries.append({
            "fit_on": f"half {fit_half} ({len(fit)} masks, {int((~fit_good).sum())} bad)",
            "measured_on": f"half {1 - fit_half} ({len(test)} masks, {int((~test_good).sum())} bad)",
            "failure_auc": round(roc_auc(-test["p_good"].to_numpy(), ~test_good), 4),
            "brier": round(brier(test["p_good"].to_numpy(), test_good), 4),
            "threshold": None if choice.threshold is None else round(choice.threshold, 4),
            "threshold_reason": choice.reason,
            "auto_accepted_share": round(float(auto.mean()), 4), "auto_accepted": int(auto.sum()),
            "errors": errors, "precision": round(1 - errors / auto.sum(), 4) if auto.any() else None,
            "error_upper_bound_95": round(aa.clopper_pearson_upper(errors, int(auto.sum()), 0.95), 4)
            if auto.any() else None,
        })
        measured.append(test)
    return summaries, pd.concat(measured)


def print_held_out(summaries: list[dict], measured: pd.DataFrame, settings) -> None:
    """AUC, Brier, reliability and the risk-coverage points of held-out predictions."""
    from pipeline.quality import auto_accept as aa
    from pipeline.quality.calibration import calibration_summary

    print("held out: fitted and thresholded on one half of the photos, measured on the other")
    for summary in summaries:
        print("  " + json.dumps(summary))
    measured_good = measured["good"].to_numpy(dtype=bool)
    both = calibration_summary(measured["p_good"].to_numpy(), measured_good, settings.reliability_bins)
    print(f"both halves' held-out predictions: {both['masks']} masks, {both['bad']} bad, failure ROC AUC "
          f"{both['failure_auc']}, Brier {both['brier']} (base rate's {both['brier_of_base_rate']}), "
          f"ECE {both['expected_calibration_error']}")
    for source, part in measured.groupby("source"):
        s = calibration_summary(part["p_good"].to_numpy(), part["good"].to_numpy(dtype=bool), settings.reliability_bins)
        print(f"  {source}: {s['masks']} masks, {s['bad']} bad, failure ROC AUC {s['failure_auc']}, Brier {s['brier']}")
    print("reliability (held out): bin | masks | mean predicted | observed good")
    for row in both["reliability"]:
        print(f"  [{row['bin_low']:.1f}, {row['bin_high']:.1f}) | {row['masks']} | {row['mean_predicted']:.3f} | "
              f"{row['observed_good']:.3f}")
    curve = aa.risk_coverage(measured["p_good"], measured_good, 0.95)
    print("risk-coverage (held out, pointwise 95% Clopper-Pearson bound): coverage | threshold | error rate | bound")
    for target in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        row = curve[curve["coverage"] >= target - 1e-9].iloc[0]
        print(f"  {row['coverage']:.3f} | {row['threshold']:.4f} | {row['error_rate']:.4f} | {row['upper_bound']:.4f}")
    target = settings.auto_accept.target_error
    within = curve[curve["upper_bound"] <= target]
    print(f"largest held-out coverage whose pointwise bound is <= {target:.0%}: "
          f"{float(within['coverage'].max()) if len(within) else 0.0:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--sets", default=SETS, help="source:split+split[:limit],... (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="photos per set without its own limit (0 = all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--before", default=",".join(BEFORE), type=lambda t: t.split(","),
                        help="features of the model compared against (default: %(default)s)")
    parser.add_argument("--after", type=lambda t: t.split(","),
                        help="features of the new model (default: params.yaml's score_pool.features)")
    parser.add_argument("--pose", choices=("none", "full_body", "portrait", "per_image", "by-source"), default="none",
                        help="add MediaPipe's pose model as a third teacher, framing every photo so, or by-source "
                             "(CCP full_body, EG1800 portrait); default: the two selfie teachers only")
    parser.add_argument("--crops", action="store_true",
                        help="CCP's photos as the portrait crops the pool's reviewer sees (crop_portraits' MTCNN "
                             "framing; pool photos planned on the teachers' mask, as pool_crop: faces does); "
                             "EG1800's portraits as they are: the profiles' evidence kinds")
    parser.add_argument("--features", type=Path,
                        help="CSV of the features: sets already in it are read, not computed again; new ones added")
    args = parser.parse_args(argv)

    from pipeline.attributes import read_table
    from pipeline.params import load_section
    from pipeline.paths import ProjectPaths
    from pipeline.quality.features import usable_features
    from pipeline.quality.groups import attribute_rates
    from pipeline.stages.score_pool import ScorePoolParams, score_pool

    settings = load_section(ScorePoolParams, "score_pool", args.params)
    args.after = args.after or list(settings.features)
    # the pool section scores with "after", on all of this script's labelled photos: its evidence kinds are
    # full_body and portrait, not the stage's <source>/<split> kinds that score_pool.evidence_kinds names
    settings = settings.model_copy(update={"features": list(args.after), "evidence_kinds": None})
    frame = compute_features(args)
    labelled, pool = frame[frame["iou"].notna()].reset_index(drop=True), frame[frame["iou"].isna()]
    print("machine shared with other jobs (figures below are accuracies, not timings)")
    good = labelled["iou"] >= settings.good_iou
    print(f"labelled masks: {len(labelled)} ({int((~good).sum())} with IoU < {settings.good_iou}); "
          f"mean IoU {labelled['iou'].mean():.4f} (ccp {labelled.loc[labelled.source == 'ccp', 'iou'].mean():.4f}, "
          f"eg1800 {labelled.loc[labelled.source == 'eg1800', 'iou'].mean():.4f}); pool masks: {len(pool)}")

    conventions = [("iou", "CCP carried items (bags) as background, prepare's default")]
    if "iou_carried_as_person" in labelled.columns and \
            (labelled["iou_carried_as_person"].fillna(labelled["iou"]) != labelled["iou"]).any():
        labelled["iou_carried_as_person"] = labelled["iou_carried_as_person"].fillna(labelled["iou"])
        conventions.append(("iou_carried_as_person", "CCP carried items counted as person"))
        bad_default = labelled["iou"] < settings.good_iou
        bad_carried = labelled["iou_carried_as_person"] < settings.good_iou
        print(f"label convention: {int(bad_default.sum())} masks fail (IoU < {settings.good_iou}) with bags as "
              f"background, {int(bad_carried.sum())} with bags as person; {int((bad_default & ~bad_carried).sum())} "
              "failures are only the bag convention")
    measured = None
    for truth, convention in conventions:
        for name, wanted in (("before", args.before), ("after", args.after)):
            used, left_out = usable_features(wanted, {"evidence": labelled})
            print(f"\n## {name} ({convention}): {', '.join(used)}{'; ' + '; '.join(left_out) if left_out else ''}")
            summaries, part = held_out(labelled, settings, used, truth)
            print_held_out(summaries, part, settings)
            if truth == "iou" and name == "after":
                measured = (summaries, part)
    summaries, measured = measured

    attributes_path = REPO / load_section(ProjectPaths, "paths", args.params).attributes
    if attributes_path.is_file():
        per_half = []
        for summary, (_, part) in zip(summaries, measured.groupby("fitted_on_half")):
            per_half.append(attribute_rates(part, read_table(attributes_path), settings.attributes_source,
                                            summary["threshold"]))
        print("\nper attribute group (EG1800 test+train photos with attributes, held out; rate = auto-accepted share)")
        for grouping in ("race", "gender", "age"):
            for rows in zip(*(h[grouping] for h in per_half)):
                images = sum(r["images"] for r in rows)
                if not images:
                    continue
                mean_iou = sum((r["mean_iou"] or 0) * r["images"] for r in rows) / images
                auto = sum(r["auto_accepted"] for r in rows)
                bad = sum(r["auto_accepted_bad"] for r in rows)
                print(f"  {grouping}={rows[0]['group']}: {images} images, mean IoU {mean_iou:.4f}, auto-accept rate "
                      f"{auto / images:.3f}, auto-accepted bad {bad}")

    if not len(pool):
        print("\nno pool masks (unlabelled photos) in the features: no pool figures")
        return 0
    print("\n## score_pool's core on all the labelled evidence and CCP's unlabelled pool")
    result = score_pool(pool.drop(columns=["iou"]).reset_index(drop=True), labelled, {}, settings)
    metrics = result.metrics
    calibration = {k: v for k, v in (metrics["calibration"] or {}).items() if k != "reliability"}  # None: no bad
    print(f"out-of-fold (all evidence): {json.dumps(calibration)}")
    print(f"rule: {result.choice.reason}")
    print(f"pool: {json.dumps(metrics['pool'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
