"""prepare on small fixtures of every format, including the bad inputs real data has."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

from pipeline.images import read_mask_png
from pipeline.manifest import read_manifest
from pipeline.params import parse_section
from pipeline.stages.prepare import PrepareParams, main, run
from params_helpers import quick_section, write_params


def _img(path, h=8, w=6, mode="RGB", value=120):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((h, w, 3), value, np.uint8)
    arr[0, 0] = (255, 0, 0)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return arr


def _mask(h=8, w=6):
    m = np.zeros((h, w), np.uint8)
    m[2:6, 1:4] = 1
    return m


def _prepare(tmp_path, params):
    """Run the core with the dataset roots under ``tmp_path`` (as paths.raw)."""
    return run(params, tmp_path, tmp_path / "data/prepared", tmp_path / "metrics/prepare.json", progress=False)


def _params(datasets, **changes):
    return parse_section(PrepareParams, {"prepare": quick_section("prepare", datasets=datasets, **changes)}, "prepare")


def _run(tmp_path, datasets):
    summary = _prepare(tmp_path, _params(datasets, workers=2))
    root = tmp_path / "data/prepared"
    return summary, read_manifest(root), pd.read_csv(root / "skipped.csv", keep_default_na=False), root


def make_eg1800(root):
    (root / "images_data_crop").mkdir(parents=True)
    (root / "images_mask").mkdir()
    _img(root / "images_data_crop" / "00001.jpg")
    _img(root / "images_data_crop" / "00002.png", mode="L")  # grayscale
    (root / "images_data_crop" / "00003.jpg").write_bytes(b"\xff\xd8\xff garbage")  # corrupt
    _img(root / "images_data_crop" / "00004.jpg")
    _img(root / "images_data_crop" / "00009.jpg")  # on no list
    for i in (1, 2, 3, 5):
        scipy.io.savemat(root / "images_mask" / f"{i:05d}_mask.mat", {"mask": _mask()})
    scipy.io.savemat(root / "images_mask" / "00004_mask.mat", {"mask": _mask(7, 6)})  # wrong size
    scipy.io.savemat(root / "trainlist.mat", {"trainlist": np.array([[1, 2, 3, 5]], np.uint16)})
    scipy.io.savemat(root / "testlist.mat", {"testlist": np.array([[4, 6]], np.uint16)})


def test_eg1800_original_counts_every_skip(tmp_path):
    make_eg1800(tmp_path / "eg")
    summary, manifest, skipped, root = _run(tmp_path, [{"name": "eg", "format": "eg1800_original", "root": "eg"}])
    assert manifest["id"].tolist() == ["eg/00001", "eg/00002"]
    assert manifest["split"].tolist() == ["train", "train"]
    reasons = dict(zip(skipped["key"], skipped["reason"]))
    assert "corrupt" in reasons["00003"]
    assert reasons["00005"] == "listed id has no image"
    assert reasons["00006"] == "listed id has no image and no mask"
    assert "differs from image size" in reasons["00004"]
    assert summary["skipped"]["eg"]["image on neither split list"] == 1
    assert manifest.loc[1, "notes"] == "converted grayscale to RGB"
    # the untouched JPEG keeps its bytes; the converted one becomes lossless PNG
    assert manifest.loc[0, "image"].endswith(".jpg") and manifest.loc[1, "image"].endswith(".png")
    assert (root / manifest.loc[0, "image"]).read_bytes() == (tmp_path / "eg/images_data_crop/00001.jpg").read_bytes()
    mask = read_mask_png(root / manifest.loc[0, "mask"])
    assert np.array_equal(mask, _mask().astype(bool))
    assert manifest.loc[0, "mask_fraction"] == pytest.approx(12 / 48, abs=1e-6)
    assert manifest.loc[0, "mask_bbox"] == "1 2 4 6" and manifest.loc[0, "mask_components"] == 1


def test_portraitnet_baidu_folder_and_unlabelled_layouts(tmp_path):
    pn = tmp_path / "pn"
    _img(pn / "Images" / "00010.png")
    Image.fromarray(_mask()).save((pn / "Labels").mkdir(parents=True) or pn / "Labels" / "00010.png")
    (pn / "eg1800_train.txt").write_text("00010.png\n00011.png\n")
    (pn / "eg1800_test.txt").write_text("")
    bd = tmp_path / "bd"
    _img(bd / "input" / "p1.jpg")
    (bd / "target").mkdir()
    Image.fromarray(_mask() * 255).save(bd / "target" / "p1.png")
    (bd / "train.txt").write_text("input/p1.jpg target/p1.png\n")
    (bd / "val.txt").write_text("p1\n")
    fo = tmp_path / "fo"
    _img(fo / "images" / "a.png")
    _img(fo / "images" / "b.png")
    (fo / "images" / "notes.txt").write_text("not an image")
    (fo / "masks").mkdir()
    Image.fromarray(_mask() * 255).save(fo / "masks" / "a_mask.png")
    un = tmp_path / "un"
    _img(un / "w1.jpg", mode="RGB")
    rgba = Image.new("RGBA", (6, 8), (10, 20, 30, 255))
    rgba.save(un / "w2.png")
    summary, manifest, skipped, root = _run(tmp_path, [
        {"name": "pn", "format": "eg1800_portraitnet", "root": "pn"},
        {"name": "bd", "format": "baidu", "root": "bd"},
        {"name": "fo", "format": "folder", "root": "fo", "mask_suffix": "_mask.png", "split": "val"},
        {"name": "un", "format": "unlabelled", "root": "un"},
    ])
    by_id = manifest.set_index("id")
    assert by_id.loc["pn/00010", "split"] == "train"
    assert by_id.loc["bd/p1", "split"] in ("train", "val")
    assert by_id.loc["fo/a", "split"] == "val"
    assert by_id.loc["un/w1", "mask"] == "" and by_id.loc["un/w2", "split"] == "unlabelled"
    for sid in ("pn/00010", "bd/p1", "fo/a"):
        assert np.array_equal(read_mask_png(root / by_id.loc[sid, "mask"]), _mask().astype(bool))
    reasons = {(s, k): r for s, k, r in zip(skipped["source"], skipped["key"], skipped["reason"])}
    assert reasons[("pn", "00011")] == "listed id has no image"
    assert reasons[("fo", "b")] == "image has no mask"
    assert summary["skipped"]["fo"]["not an image file (.txt)"] == 1
    # the Baidu val list names the same id again: it is counted once, not duplicated
    assert manifest["id"].is_unique


def test_ccp_carried_items_param_changes_the_mask(tmp_path):
    root = tmp_path / "ccp"
    _img(root / "photos" / "0001.jpg")
    _img(root / "photos" / "0002.jpg")
    (root / "annotations" / "pixel-level").mkdir(parents=True)
    names = np.array([["null", "bag", "skin", "purse", "wallet"]], dtype=object)
    scipy.io.savemat(root / "label_list.mat", {"label_list": names})
    labels = np.zeros((8, 6), np.uint8)
    labels[1:4, 1:3] = 2  # skin
    labels[6, 0:2] = 1  # bag
    scipy.io.savemat(root / "annotations" / "pixel-level" / "0001.mat", {"groundtruth": labels})
    base = {"name": "ccp", "format": "ccp", "root": "ccp", "val_fraction": 0.0}
    _, manifest, _, prepared = _run(tmp_path, [base])
    by_id = manifest.set_index("id")
    assert by_id.loc["ccp/0002", "split"] == "unlabelled"
    assert read_mask_png(prepared / by_id.loc["ccp/0001", "mask"]).sum() == 6
    _, manifest, _, prepared = _run(tmp_path, [{**base, "carried_items_are_person": True}])
    assert read_mask_png(prepared / manifest.set_index("id").loc["ccp/0001", "mask"]).sum() == 8


def test_exif_rotated_image_takes_its_mask_along(tmp_path):
    root = tmp_path / "fo"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    arr = np.zeros((6, 8, 3), np.uint8)
    arr[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(root / "images" / "r.jpg", exif=exif, quality=100)
    mask = np.zeros((6, 8), np.uint8)
    mask[0, 0] = 255  # marks the same stored pixel as the bright one
    Image.fromarray(mask).save(root / "masks" / "r.png")
    _, manifest, _, prepared = _run(tmp_path, [{"name": "fo", "format": "folder", "root": "fo"}])
    row = manifest.iloc[0]
    assert (row["width"], row["height"]) == (6, 8)
    image = np.asarray(Image.open(prepared / row["image"]))
    m = read_mask_png(prepared / row["mask"])
    ys, xs = np.nonzero(m)
    assert image[ys[0], xs[0], 0] > 200  # mask and image stay aligned after rotation
    assert "EXIF" in row["notes"]


def test_a_failed_prepare_keeps_the_previous_dataset(tmp_path):
    make_eg1800(tmp_path / "eg")
    _run(tmp_path, [{"name": "eg", "format": "eg1800_original", "root": "eg"}])
    before = (tmp_path / "data/prepared/manifest.csv").read_bytes()
    params = _params([{"name": "eg", "format": "eg1800_original", "root": "eg"},
                      {"name": "x", "format": "baidu", "root": "missing"}])
    with pytest.raises(Exception, match="not found"):
        _prepare(tmp_path, params)
    assert (tmp_path / "data/prepared/manifest.csv").read_bytes() == before


def test_main_reads_and_writes_where_the_paths_section_says(tmp_path, monkeypatch, capsys):
    """Dataset roots are under paths.raw; the dataset and its metrics go to paths.prepared / paths.metrics."""
    monkeypatch.chdir(tmp_path)
    make_eg1800(tmp_path / "store/raw/eg")
    write_params(tmp_path / "params.yaml", {
        "paths": {"raw": "store/raw", "prepared": "store/prepared", "metrics": "store/metrics"},
        "prepare": {"datasets": [{"name": "eg", "format": "eg1800_original", "root": "eg"}]}})
    assert main(["--params", "params.yaml", "--quiet"]) == 0
    assert read_manifest(tmp_path / "store/prepared")["id"].tolist() == ["eg/00001", "eg/00002"]
    assert (tmp_path / "store/prepared/skipped.csv").is_file()
    assert json.loads((tmp_path / "store/metrics/prepare.json").read_text())["samples"] == 2
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()
    captured = capsys.readouterr()
    assert captured.err == "" and "total        2" in captured.out  # --quiet: the summary, no progress bar
    assert main(["--params", "params.yaml"]) == 0
    assert "prepare eg" in capsys.readouterr().err  # without it, the progress bar
