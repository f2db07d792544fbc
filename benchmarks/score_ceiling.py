"""Where the quality score's failure ROC AUC stops: other calibrators and one more TTA feature, held out.

score_pool's calibrator is a ridge logistic regression on pseudo_label's features
(``pipeline.quality.calibration``). This asks whether a richer model or one more signal
would rank failures (IoU < good_iou) better, on the labelled photos of ``../shared`` that
no teacher trained on, with ``benchmarks/auto_accept.py``'s two halves of the photos (fit
on one, measure on the other, both ways):

- calibrators: the stage's logistic; it plus the evidence kind (portrait / full-body) as a
  feature; a degree-2 polynomial logistic; a gradient-boosted tree ensemble (scikit-learn,
  where installed);
- one more feature, zoom agreement: the two MediaPipe teachers run again on the centre crop
  without a 10% margin on each side, and the IoU (and a soft agreement) of that fused mask
  with the full photo's fused mask over the same region. It costs a third more teacher time.

Each line gives the AUC over both halves' held-out predictions, per half, and within CCP's
full-body photos and EG1800's portraits alone, for CCP's bags as background (prepare's
default) and as person.

    .venv/bin/python benchmarks/auto_accept.py --features /tmp/aa.csv      # the features (minutes)
    .venv/bin/python benchmarks/score_ceiling.py --features /tmp/aa.csv --zoom /tmp/aa_zoom.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
ZOOM_MARGIN = 0.1  # share of the height / width cut from each side for the zoomed prediction
ZOOM_FEATURES = ("zoom_agreement", "zoom_soft_agreement")


def zoom_features(threads: int, params: Path) -> pd.DataFrame:
    """Zoom agreement of every labelled photo (the teachers on the centre crop against the full photo)."""
    import torch
    from tqdm import tqdm

    import auto_accept
    from pipeline.metrics import iou
    from pipeline.teachers.mediapipe import MediaPipeSelfieSegmenter

    torch.set_num_threads(threads)
    models = [MediaPipeSelfieSegmenter(v) for v in auto_accept.VARIANTS]
    rows = []

    def flush(batch):
        images = [image for _, image in batch]
        boxes = [(int(ZOOM_MARGIN * im.shape[0]), im.shape[0] - int(ZOOM_MARGIN * im.shape[0]),
                  int(ZOOM_MARGIN * im.shape[1]), im.shape[1] - int(ZOOM_MARGIN * im.shape[1])) for im in images]
        crops = [np.ascontiguousarray(im[y0:y1, x0:x1]) for im, (y0, y1, x0, x1) in zip(images, boxes)]
        full = [m.predict(images, batch_size=8) for m in models]  # per teacher, per photo
        zoom = [m.predict(crops, batch_size=8) for m in models]
        for i, (sample_id, _) in enumerate(batch):
            y0, y1, x0, x1 = boxes[i]
            p_full = np.mean([teacher[i] for teacher in full], axis=0)[y0:y1, x0:x1]
            p_zoom = np.mean([teacher[i] for teacher in zoom], axis=0)
            scale = max(float((p_full + p_zoom).mean()), 1e-3)  # mean |difference| against the mean mass
            rows.append({"id": sample_id, "zoom_agreement": iou(p_full > 0.5, p_zoom > 0.5),
                         "zoom_soft_agreement": float(np.clip(1 - np.abs(p_full - p_zoom).mean() / scale, 0, 1))})

    for source, splits in (("ccp", ("train", "val")), ("eg1800", ("train", "test"))):
        batch = []
        for sample_id, _, image, _, _ in tqdm(auto_accept.photos(source, splits, params, 0), desc=f"zoom {source}"):
            batch.append((sample_id, image))
            if len(batch) == 16:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    return pd.DataFrame(rows)


def design(frame: pd.DataFrame, features: list[str], with_kind: bool) -> np.ndarray:
    from pipeline.quality.features import transform

    columns = [transform(f, frame[f].clip(lower=0, upper=None if f == "components" else 1)) for f in features]
    if with_kind:
        columns.append((frame["evidence"] == "portrait").to_numpy(dtype=float))
    return np.nan_to_num(np.column_stack(columns))


def calibrators():
    """name -> (uses the evidence kind, factory of an sklearn-style classifier or None for the stage's own)."""
    out = {"stage logistic": (False, None), "stage logistic + kind": (True, None)}
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures, StandardScaler
    except ImportError:
        print("scikit-learn is not installed: only the stage's logistic is measured")
        return out
    out["poly-2 logistic + kind"] = (True, lambda: make_pipeline(StandardScaler(), PolynomialFeatures(2),
                                                                 StandardScaler(),
                                                                 LogisticRegression(C=0.05, max_iter=5000)))
    out["boosted trees + kind"] = (True, lambda: HistGradientBoostingClassifier(
        max_depth=3, learning_rate=0.05, max_iter=200, l2_regularization=1.0, random_state=0))
    return out


def held_out_bad_probability(frame: pd.DataFrame, bad: np.ndarray, halves: np.ndarray, features: list[str],
                             with_kind: bool, factory, l2: float) -> np.ndarray:
    from pipeline.quality.calibration import fit_model

    data = frame.assign(kind_is_portrait=(frame["evidence"] == "portrait").astype(float))  # a 0/1 share
    used = features + (["kind_is_portrait"] if with_kind else [])
    x = design(frame, features, with_kind) if factory is not None else None
    out = np.zeros(len(frame))
    for fit_half in (0, 1):
        fit, test = halves == fit_half, halves != fit_half
        if factory is None:
            out[test] = 1 - fit_model(data[fit], ~bad[fit], used, l2).predict(data[test])
        else:
            out[test] = factory().fit(x[fit], bad[fit]).predict_proba(x[test])[:, 1]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, required=True, help="benchmarks/auto_accept.py's --features CSV")
    parser.add_argument("--zoom", type=Path, help="CSV of the zoom features: read if it exists, else computed into it")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import auto_accept
    from pipeline.metrics import roc_auc
    from pipeline.params import load_section
    from pipeline.stages.score_pool import ScorePoolParams

    if not args.features.is_file():
        parser.error(f"{args.features} does not exist: run benchmarks/auto_accept.py --features {args.features} first")
    settings = load_section(ScorePoolParams, "score_pool", args.params)
    frame = pd.read_csv(args.features, dtype={"id": str, "origin": str})
    labelled = frame[frame["iou"].notna()].reset_index(drop=True)
    feature_sets = {"score_pool.features": list(settings.features)}
    if args.zoom is not None:
        zoom = pd.read_csv(args.zoom, dtype={"id": str}) if args.zoom.is_file() else None
        if zoom is None:
            zoom = zoom_features(args.threads, args.params)
            zoom.to_csv(args.zoom, index=False)
        labelled = labelled.merge(zoom, on="id", how="left")
        if labelled[list(ZOOM_FEATURES)].isna().any().any():
            parser.error(f"{args.zoom} lacks photos of {args.features}: delete it to compute it again")
        feature_sets["+ zoom agreement"] = list(settings.features) + list(ZOOM_FEATURES)

    halves = labelled["id"].map(lambda i: auto_accept.half_of(i, settings.seed)).to_numpy()
    ccp = (labelled["source"] == "ccp").to_numpy()
    print(f"{len(labelled)} labelled masks ({int(ccp.sum())} CCP full-body, {int((~ccp).sum())} EG1800 portraits); "
          f"failure = IoU < {settings.good_iou}; failure ROC AUC held out by halves of the photos")
    for truth, convention in (("iou", "bags as background"), ("iou_carried_as_person", "bags as person")):
        bad = (labelled[truth] < settings.good_iou).to_numpy()
        print(f"\n{convention}: {int(bad.sum())} failures")
        print(f"  {'features':22s} {'calibrator':24s}  both halves | on half 0 | on half 1 | CCP only | EG1800 only")
        for set_name, features in feature_sets.items():
            for name, (with_kind, factory) in calibrators().items():
                p = held_out_bad_probability(labelled, bad, halves, features, with_kind, factory, settings.l2)
                on_half = [roc_auc(p[halves == h], bad[halves == h]) for h in (0, 1)]  # measured on half h
                print(f"  {set_name:22s} {name:24s}  {roc_auc(p, bad):.4f}      | {on_half[0]:.4f}    | "
                      f"{on_half[1]:.4f}    | {roc_auc(p[ccp], bad[ccp]):.4f}   | {roc_auc(p[~ccp], bad[~ccp]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
