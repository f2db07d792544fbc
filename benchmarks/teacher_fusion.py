"""Which teachers and which fusion pseudo-label best, on labelled photos no teacher trained on.

    .venv/bin/python benchmarks/teacher_fusion.py                 # all of CCP's 600 labelled photos + EG1800
    .venv/bin/python benchmarks/teacher_fusion.py --ccp 100 --eg1800 100
    .venv/bin/python benchmarks/teacher_fusion.py --throughput 60  # pseudo_label's images/s, both teachers
    .venv/bin/python benchmarks/teacher_fusion.py --crops          # portrait crops: cut vs predicted on the crop
    .venv/bin/python benchmarks/teacher_fusion.py --deeplab models/teacher/teacher.pt   # + a trained DeepLabv3+
    .venv/bin/python benchmarks/teacher_fusion.py --pose by-source  # + MediaPipe's pose model (mediapipe_pose)

MediaPipe's two selfie segmenters (``general`` 256x256, ``landscape`` 144x256) never saw CCP
or EG1800, so every labelled photo there is fair evidence. Read straight from
``../shared/datasets`` with the project's loaders (CCP person = any label > 0 except the
carried items bag/purse/wallet, as ``prepare`` does by default; ``ccp/val`` is prepare's 10%
hash split). Per image, both teachers run on the photo and its mirror image once; every
row of the table is computed from those same maps:

- each teacher alone, without and with flip TTA;
- the fusions of ``pipeline.teachers.fusion`` (with TTA): mean, weighted (0.75/0.25 both ways),
  logit_mean;
- ``bags as person``: the mean fusion scored against CCP masks that count carried items as
  person (what the default ground truth costs a teacher that labels bags as part of the person);
- ``largest component``: the mean fusion keeping only its largest connected part (CCP labels
  bystanders as background; MediaPipe labels every person: the gap bounds what that costs);
- with ``--deeplab``: that teacher alone and its mean fusions with ``general`` and with both
  MediaPipe teachers; the photos it trained on (its checkpoint's ``train_ids``) get rows of
  their own;
- with ``--pose``: MediaPipe's pose model's mask (``mediapipe_pose``) alone and in the mean with
  ``general`` and with both selfie teachers, each also against bags as person; ``by-source``
  frames CCP's photos as bodies and EG1800's as portraits (``pipeline.teachers.mediapipe_pose``).

``--crops`` (with ``--pose``: a third teacher, ``by-source`` meaning ``per_image`` there, and
the pair and ``general`` + pose fusions on the crop beside the fusion of all) cuts the
labelled CCP photos around their faces exactly as ``crop_portraits``
does (MTCNN, its geometry and drop rules on the true mask) and scores the fused mask two
ways: predicted on the whole photo and cut with it (what ``pool_crop: faces`` does), or
predicted again on the crop.

``--throughput N`` times the stage's own predictor (``FusedTeachers``: decode, both teachers
+ flip TTA, fusion, features) on N unlabelled CCP photos with MediaPipe ``general`` and a
DeepLabv3+ of the quick profile's shape (random weights: speed does not depend on them),
each configuration in turn, repeated (``--repeats``), on ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "datasets"
THREE_WAY = {"mean deeplab + general": ["deeplab", "mediapipe"],
             "mean of all three": ["deeplab", "mediapipe", "mediapipe_landscape"]}  # with --deeplab
POSE_WAY = {"mean general + pose": ["mediapipe", "mediapipe_pose"],
            "mean of the three MediaPipe": ["mediapipe", "mediapipe_landscape", "mediapipe_pose"]}  # with --pose
FUSIONS = {"mean": ("mean", {}), "weighted 0.75 general": ("weighted", {"mediapipe": 0.75, "mediapipe_landscape": 0.25}),
           "weighted 0.75 landscape": ("weighted", {"mediapipe": 0.25, "mediapipe_landscape": 0.75}),
           "logit_mean": ("logit_mean", {"mediapipe": 1.0, "mediapipe_landscape": 1.0})}


def labelled_items(ccp: int | None, eg1800: int | None):
    """(evidence, id, image path, mask reader, mask reader with bags as person or None)."""
    from pipeline.sources.base import LoaderReport
    from pipeline.sources.ccp import iter_ccp
    from pipeline.sources.eg1800 import iter_eg1800_original

    carried = ["bag", "purse", "wallet"]
    plain = list(iter_ccp(DATA / "ccp", LoaderReport(), val_fraction=0.1, carried_items=carried,
                          carried_items_are_person=False, include_unlabelled=False))
    bags = {i.key: i for i in iter_ccp(DATA / "ccp", LoaderReport(), val_fraction=0.1, carried_items=carried,
                                       carried_items_are_person=True, include_unlabelled=False)}
    out = [(f"ccp/{i.split}", f"ccp/{i.key}", i.image_path, i.read_mask, bags[i.key].read_mask)
           for i in sorted(plain, key=lambda i: i.key)][:ccp]
    eg = [i for i in iter_eg1800_original(DATA / "eg1800", LoaderReport()) if i.skip_reason is None]
    out += [(f"eg1800/{i.split}", f"eg1800/{i.key}", i.image_path, i.read_mask, None)
            for i in sorted(eg, key=lambda i: i.key)][:eg1800]
    return out


def largest_component(mask):
    import numpy as np
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if not count:
        return mask
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def deeplab_teacher(path: str):
    """A trained DeepLabv3+ checkpoint behind the teacher interface, at the size it trained at."""
    from pipeline.teachers.deeplab import checked_input_size, load_teacher
    from pipeline.teachers.registry import DeepLabTeacher

    model, state = load_teacher(path)
    size = checked_input_size(state, path)
    if size is None:
        raise SystemExit(f"{path}: the checkpoint does not say its input size")
    return DeepLabTeacher(model, size, device="cpu", channels_last=True, bfloat16=False,
                          seen_ids=state.get("train_ids", ()))


def accuracy(args) -> None:
    import numpy as np
    import pandas as pd
    import torch
    from tqdm import tqdm

    from pipeline.images import read_rgb
    from pipeline.metrics import iou
    from pipeline.teachers.base import predict_views
    from pipeline.teachers.fusion import fuse, fusion_weights, teacher_agreement
    from pipeline.teachers.registry import MediaPipePoseTeacher, MediaPipeTeacher

    torch.set_num_threads(args.threads)
    names = ["mediapipe", "mediapipe_landscape"]
    teachers = [MediaPipeTeacher(n, None, device="cpu", batch_size=1) for n in names]
    poses = {framing: MediaPipePoseTeacher(None, framing=framing, device="cpu", batch_size=2)
             for framing in ({"none": (), "by-source": ("full_body", "portrait")}.get(args.pose, (args.pose,)))}
    seen: frozenset[str] = frozenset()
    if args.deeplab:
        deeplab = deeplab_teacher(args.deeplab)
        teachers.append(deeplab)
        seen = deeplab.seen_ids
    records = []
    for evidence, sample, image_path, read_mask, read_bags in tqdm(labelled_items(args.ccp, args.eg1800), unit="img"):
        image = read_rgb(image_path)
        truth = np.asarray(read_mask(None), bool)
        if truth.shape != image.shape[:2]:
            continue
        active = list(teachers)
        if poses:  # by-source: CCP's photos are bodies, EG1800's portraits
            active.append(poses.get(args.pose) or poses["full_body" if sample.startswith("ccp/") else "portrait"])
        views = {t.name: predict_views(t, [image], True)[0] for t in active}
        row = {"evidence": evidence + (" (deeplab trained on it)" if sample in seen else ""), "id": sample}
        for name, v in views.items():
            row[f"{name} alone"] = iou(v.plain > 0.5, truth)
            row[f"{name} alone +TTA"] = iou(v.probability > 0.5, truth)
        for label, members in THREE_WAY.items() if args.deeplab else ():
            w = fusion_weights(members, "mean", {})
            p = 0.5 * (fuse([views[n].plain for n in members], "mean", w)
                       + fuse([views[n].mirrored for n in members], "mean", w))
            row[f"fused {label} +TTA"] = iou(p > 0.5, truth)
        for label, members in POSE_WAY.items() if poses else ():
            w = fusion_weights(members, "mean", {})
            p = 0.5 * (fuse([views[n].plain for n in members], "mean", w)
                       + fuse([views[n].mirrored for n in members], "mean", w))
            row[f"fused {label} +TTA"] = iou(p > 0.5, truth)
            if read_bags is not None:
                row[f"fused {label} vs bags as person"] = iou(p > 0.5, np.asarray(read_bags(None), bool))
        if poses and read_bags is not None:
            row["mediapipe_pose alone +TTA vs bags as person"] = iou(views["mediapipe_pose"].probability > 0.5,
                                                                     np.asarray(read_bags(None), bool))
        for label, (method, weights) in FUSIONS.items():
            w = fusion_weights(names, method, weights)
            p = 0.5 * (fuse([views[n].plain for n in names], method, w) + fuse([views[n].mirrored for n in names],
                                                                                method, w))
            row[f"fused {label} +TTA"] = iou(p > 0.5, truth)
            if label == "mean":
                fused_mean = p > 0.5
        plain_mean = fuse([views[n].plain for n in names], "mean", fusion_weights(names, "mean", {}))
        row["fused mean (no TTA)"] = iou(plain_mean > 0.5, truth)
        row["fused mean, largest component"] = iou(largest_component(fused_mean), truth)
        if read_bags is not None:
            row["fused mean vs bags as person"] = iou(fused_mean, np.asarray(read_bags(None), bool))
        row["teacher_agreement"] = teacher_agreement([views[n].probability > 0.5 for n in names])
        records.append(row)
    frame = pd.DataFrame(records)
    frame["set"] = frame["evidence"].str.split("/").str[0]
    columns = [c for c in frame.columns if c not in ("evidence", "id", "set", "teacher_agreement")]
    print(f"mean IoU (x100) per labelled set, {len(frame)} images, {args.threads} threads\n")
    table = pd.concat([frame.groupby("evidence")[columns].mean(), frame.groupby("set")[columns].mean()
                       .rename(index=lambda s: f"{s} (all)")]) * 100
    table.insert(0, "images", pd.concat([frame.groupby("evidence").size(), frame.groupby("set").size()
                                         .rename(index=lambda s: f"{s} (all)")]))
    print(table.T.round(2).to_string())
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"\nper image: {args.csv}")


def crop_portraits_cropper(params_file: Path):
    """The face cropper of ``crop_portraits`` (MTCNN on the CPU, its geometry and drop rules) from a params file."""
    import yaml

    from pipeline.crops.params import DetectorParams, GeometryParams, QualityParams
    from pipeline.crops.pool import build_pool_cropper

    section = yaml.safe_load(Path(params_file).read_text())["crop_portraits"]
    return build_pool_cropper(GeometryParams(**section["geometry"]), QualityParams(**section["quality"]),
                              DetectorParams(**{**section["detector"], "device": "cpu"}))


def crops(args) -> None:
    """Portrait crops of labelled CCP photos (crop_portraits' framing on the true mask): mask cut vs predicted on crop."""
    import numpy as np
    import pandas as pd
    import torch
    from tqdm import tqdm

    from pipeline.crops.pool import cut_map
    from pipeline.images import read_rgb
    from pipeline.metrics import iou
    from pipeline.labelling.prediction import FusedTeachers
    from pipeline.teachers.registry import MediaPipePoseTeacher, MediaPipeTeacher

    torch.set_num_threads(args.threads)
    cropper = crop_portraits_cropper(ROOT / "params.yaml")
    teachers = [MediaPipeTeacher(n, None, device="cpu", batch_size=2) for n in ("mediapipe", "mediapipe_landscape")]
    subsets = {}
    if args.pose != "none":  # the photo is a body and its crop a portrait: one fixed framing cannot fit both
        framing = "per_image" if args.pose == "by-source" else args.pose
        teachers.append(MediaPipePoseTeacher(None, framing=framing, device="cpu", batch_size=2))
        subsets = {name: members for name, members in POSE_WAY.items() if "mediapipe_landscape" not in members}
        subsets["mean of the selfie pair"] = ["mediapipe", "mediapipe_landscape"]
    runner = FusedTeachers(teachers, "mean", {}, flip_tta=True)
    records = []
    items = [i for i in labelled_items(args.ccp, 0) if i[0].startswith("ccp/")]
    for evidence, sample, image_path, read_mask, _ in tqdm(items, unit="photo"):
        image, truth = read_rgb(image_path), np.asarray(read_mask(None), bool)
        plans, _ = cropper.plan(sample, image, truth)
        if not plans:
            continue
        (whole,) = runner.predict([image])
        for plan in plans:
            box = plan.placement.box
            crop_truth = cut_map(truth.astype(np.float32), box, cropper.size) >= 0.5
            (on_crop,) = runner.predict([cut_map(image, box, cropper.size)])
            records.append({"evidence": evidence, "id": f"{sample}_f{plan.face_index}",
                            "predicted on the photo, cut": iou(cut_map(whole.probability, box, cropper.size) > 0.5,
                                                               crop_truth),
                            "predicted on the crop": iou(on_crop.mask, crop_truth),
                            **{f"{n} on the photo, cut": iou(cut_map(p, box, cropper.size) > 0.5, crop_truth)
                               for n, p in whole.teacher_probabilities.items()},
                            **{f"{n} on the crop": iou(on_crop.teacher_probabilities[n] > 0.5, crop_truth)
                               for n in runner.names},
                            **{f"{label} on the crop": iou(np.mean([on_crop.teacher_probabilities[n] for n in members],
                                                                   axis=0) > 0.5, crop_truth)
                               for label, members in subsets.items()}})
    frame = pd.DataFrame(records)
    columns = [c for c in frame.columns if c not in ("evidence", "id")]
    table = pd.concat([frame.groupby("evidence")[columns].mean(), frame[columns].mean().rename("all").to_frame().T])
    table.insert(0, "crops", [*frame.groupby("evidence").size(), len(frame)])
    print(f"portrait crops of {len(items)} labelled CCP photos ({len(frame)} crops), mean fusion of "
          f"{', '.join(runner.names)} with flip TTA, mean IoU (x100), {args.threads} threads\n")
    print(pd.concat([table.T.iloc[:1], table.T.iloc[1:] * 100]).round(2).to_string())
    if args.csv:
        frame.to_csv(args.csv, index=False)


def throughput(args) -> None:
    import torch

    from pipeline.images import read_rgb
    from pipeline.sources.base import LoaderReport
    from pipeline.sources.ccp import iter_ccp
    from pipeline.labelling.prediction import FusedTeachers, ScoreParams, mask_features
    from pipeline.teachers.deeplab import build_teacher, teacher_config
    from pipeline.teachers.registry import DeepLabTeacher, MediaPipeTeacher
    from params_helpers import quick_section  # tests/ helper: the quick profile's values

    torch.set_num_threads(args.threads)
    photos = [i.image_path for i in iter_ccp(DATA / "ccp", LoaderReport(), val_fraction=0.1, carried_items=[],
                                             carried_items_are_person=True, include_unlabelled=True)
              if i.split == "unlabelled"][:args.throughput]
    settings = quick_section("pseudo_label")
    score = ScoreParams(**settings["score"])
    teacher = quick_section("teacher")
    deeplab = build_teacher(teacher_config(teacher["encoder_name"], 1, teacher["decoder_channels"])).eval()
    mediapipe = MediaPipeTeacher("mediapipe", None, device="cpu", batch_size=settings["batch_size"])
    landscape = MediaPipeTeacher("mediapipe_landscape", None, device="cpu", batch_size=settings["batch_size"])
    dl = DeepLabTeacher(deeplab, teacher["input_size"], device="cpu", channels_last=True, bfloat16=False)
    configs = {"mediapipe + mediapipe_landscape (quick, cpu)": [mediapipe, landscape],
               f"deeplab {teacher['encoder_name']}@{teacher['input_size']} + mediapipe": [dl, mediapipe],
               "mediapipe alone": [mediapipe]}
    batch = settings["batch_size"]
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.repeats):
        for label, teachers in configs.items():
            runner = FusedTeachers(teachers, "mean", {}, flip_tta=True)
            started = time.perf_counter()
            for start in range(0, len(photos), batch):
                images = [read_rgb(p) for p in photos[start:start + batch]]
                for prediction in runner.predict(images):
                    mask_features(prediction, score)
            times[label].append(len(photos) / (time.perf_counter() - started))
    print(f"pseudo_label predictor, {len(photos)} CCP photos (~550x825), flip TTA, batch {batch}, "
          f"{args.threads} threads, {args.repeats} rounds interleaved; images/s median (min-max):")
    for label, values in times.items():
        print(f"  {label:55s} {statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ccp", type=int, default=None, help="first N labelled CCP photos (default all 600)")
    parser.add_argument("--eg1800", type=int, default=None, help="first N EG1800 portraits (default all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--csv", default=None, help="write the per-image table here")
    parser.add_argument("--throughput", type=int, default=0, help="time the stage's predictor on N photos instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deeplab", default=None, metavar="TEACHER_PT",
                        help="also a trained DeepLabv3+ teacher (train_teacher's checkpoint): alone and fused "
                             "with MediaPipe; photos it trained on are their own rows")
    parser.add_argument("--pose", choices=("none", "full_body", "portrait", "per_image", "by-source"), default="none",
                        help="add MediaPipe's pose model (alone, with general, with both selfie teachers), framing "
                             "every photo so, or by-source (CCP full_body, EG1800 portrait)")
    parser.add_argument("--crops", action="store_true", help="portrait crops: mask cut from the photo vs predicted on the crop")
    args = parser.parse_args()
    if args.throughput:
        sys.path.insert(0, str(ROOT / "tests"))
        throughput(args)
    elif args.crops:
        crops(args)
    else:
        accuracy(args)


if __name__ == "__main__":
    main()
