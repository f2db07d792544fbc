"""prepare on the real EG1800 and CCP files in ../shared/datasets (a few dozen of them)."""

import shutil
from collections import Counter

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline.images import read_mask_png
from pipeline.manifest import read_manifest
from pipeline.params import parse_section
from pipeline.stages.prepare import PrepareParams, run
from pipeline.sources import LoaderReport
from pipeline.sources.eg1800 import iter_eg1800_original
from params_helpers import quick_section

pytestmark = pytest.mark.realdata


def _ids(path, var):
    return [int(v) for v in scipy.io.loadmat(path)[var].ravel()]


def test_eg1800_listing_counts_match_the_files_on_disk(shared_datasets):
    root = shared_datasets / "eg1800"
    listed = _ids(root / "trainlist.mat", "trainlist") + _ids(root / "testlist.mat", "testlist")
    images = {p.stem for p in (root / "images_data_crop").iterdir()}
    masks = {p.name.split("_")[0] for p in (root / "images_mask").iterdir()}
    expected = Counter()
    for i in dict.fromkeys(listed):
        key = f"{i:05d}"
        if key not in images:
            expected["listed id has no image" + ("" if key in masks else " and no mask")] += 1
        elif key not in masks:
            expected["listed id has no mask"] += 1
        else:
            expected["usable"] += 1
    report = LoaderReport()
    got = Counter(item.skip_reason or "usable" for item in iter_eg1800_original(root, report))
    assert got == expected
    assert got["listed id has no image"] + got["listed id has no image and no mask"] > 300  # "many", as documented
    splits = Counter(item.split for item in iter_eg1800_original(root, LoaderReport()) if not item.skip_reason)
    assert splits["test"] == 135  # the test portraits the attribute table covers


@pytest.fixture
def real_subset(tmp_path, shared_datasets):
    """A few dozen real EG1800 portraits and CCP photos, copied in their own layouts.

    Copied, not symlinked: prepare refuses files whose links lead out of the dataset root.
    """
    eg_src, eg = shared_datasets / "eg1800", tmp_path / "eg1800"
    (eg / "images_data_crop").mkdir(parents=True)
    (eg / "images_mask").mkdir()
    train = _ids(eg_src / "trainlist.mat", "trainlist")
    chosen = [i for i in train if (eg_src / "images_data_crop" / f"{i:05d}.jpg").exists()][:24]
    # keep the two grayscale portraits in the subset when present
    for path in sorted((eg_src / "images_data_crop").iterdir()):
        if Image.open(path).mode == "L" and int(path.stem) in train and int(path.stem) not in chosen:
            chosen.append(int(path.stem))
    for i in chosen:
        shutil.copyfile(eg_src / "images_data_crop" / f"{i:05d}.jpg", eg / "images_data_crop" / f"{i:05d}.jpg")
        shutil.copyfile(eg_src / "images_mask" / f"{i:05d}_mask.mat", eg / "images_mask" / f"{i:05d}_mask.mat")
    scipy.io.savemat(eg / "trainlist.mat", {"trainlist": np.array([chosen + [99999]], np.int32)})
    scipy.io.savemat(eg / "testlist.mat", {"testlist": np.zeros((1, 0), np.int32)})
    ccp_src, ccp = shared_datasets / "ccp", tmp_path / "ccp"
    (ccp / "photos").mkdir(parents=True)
    (ccp / "annotations" / "pixel-level").mkdir(parents=True)
    shutil.copyfile(ccp_src / "label_list.mat", ccp / "label_list.mat")
    annotated = sorted(p.stem for p in (ccp_src / "annotations" / "pixel-level").glob("*.mat"))[:8]
    unannotated = sorted({p.stem for p in (ccp_src / "photos").glob("*.jpg")} - set(annotated)
                         - {p.stem for p in (ccp_src / "annotations" / "pixel-level").glob("*.mat")})[:4]
    for key in annotated + unannotated:
        shutil.copyfile(ccp_src / "photos" / f"{key}.jpg", ccp / "photos" / f"{key}.jpg")
    for key in annotated:
        shutil.copyfile(ccp_src / "annotations" / "pixel-level" / f"{key}.mat",
                   ccp / "annotations" / "pixel-level" / f"{key}.mat")
    return tmp_path, chosen, annotated, unannotated


def test_real_portraits_and_photos_are_prepared_aligned_and_binary(real_subset, shared_datasets):
    base, chosen, annotated, unannotated = real_subset
    params = parse_section(PrepareParams, {"prepare": quick_section("prepare", datasets=[
        {"name": "eg1800", "format": "eg1800_original", "root": "eg1800"},
        {"name": "ccp", "format": "ccp", "root": "ccp", "val_fraction": 0.0}])}, "prepare")
    summary = run(params, base, base / "data/prepared", base / "metrics/prepare.json", progress=False)
    root = base / "data/prepared"
    manifest = read_manifest(root).set_index("id")
    assert summary["per_source"]["eg1800"] == {"train": len(chosen)}
    assert summary["skipped"]["eg1800"] == {"listed id has no image and no mask": 1}
    assert summary["per_source"]["ccp"] == {"train": len(annotated), "unlabelled": len(unannotated)}
    for i in chosen:
        row = manifest.loc[f"eg1800/{i:05d}"]
        raw = np.asarray(Image.open(root / row["mask"]))
        assert raw.dtype == np.uint8 and set(np.unique(raw)) <= {0, 255}
        truth = scipy.io.loadmat(shared_datasets / "eg1800/images_mask" / f"{i:05d}_mask.mat")["mask"]
        assert np.array_equal(raw == 255, truth == 1)
        assert (row["width"], row["height"]) == (600, 800)
        image = Image.open(root / row["image"])
        assert image.mode == "RGB" and image.size == (600, 800)
    converted = manifest[manifest["notes"].str.contains("grayscale")]
    assert all(p.endswith(".png") for p in converted["image"])
    labels = scipy.io.loadmat(shared_datasets / "ccp/label_list.mat")["label_list"].ravel()
    names = [str(v[0]) for v in labels]
    carried = [names.index(n) for n in ("bag", "purse", "wallet")]
    for key in annotated:
        row = manifest.loc[f"ccp/{key}"]
        gt = scipy.io.loadmat(shared_datasets / "ccp/annotations/pixel-level" / f"{key}.mat")["groundtruth"]
        expected = (gt > 0) & ~np.isin(gt, carried)
        assert np.array_equal(read_mask_png(root / row["mask"]), expected)
        photo = Image.open(shared_datasets / "ccp/photos" / f"{key}.jpg")
        assert (row["width"], row["height"]) == photo.size
    assert all(manifest.loc[f"ccp/{k}", "mask"] == "" for k in unannotated)
