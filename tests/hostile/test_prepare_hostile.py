"""Issue "Hostile input", the prepare stage: crafted names, files, lists and params.

Ids are unique by construction (an injective key encoding; a remaining collision is an
error naming both files), every bad file is a recorded skip (decompression bombs
included), no loader reads a file outside its dataset root, the path params are typed,
and the text outputs hold no machine-specific path.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import yaml
from PIL import Image

from pipeline.images import BadImageError, load_image, read_mask_png
from pipeline.manifest import decode_key, is_safe_key, read_manifest, safe_key
from pipeline.params import ParamsError, parse_section
from pipeline.paths import ProjectPaths
from pipeline.stages.prepare import PrepareParams, check_paths, main, run
from pipeline.stage import StageError
from params_helpers import merged, quick_params, quick_section, write_params

KEY_CHARS = re.compile(r"^[A-Za-z0-9._~-]+$")


# --------------------------------------------------------------------------- helpers


def image(path: Path, value: int = 120, size=(6, 8), fmt=None) -> Path:
    """A small RGB image of (width, height) ``size`` whose pixels all hold ``value`` (so files differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path, format=fmt)
    return path


def mask_png(path: Path, size=(6, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size[1], size[0]), np.uint8)
    m[2:6, 1:4] = 255
    Image.fromarray(m).save(path)
    return path


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid-looking 1x1 grayscale PNG whose header (IHDR, CRC fixed) claims width x height."""
    buf = io.BytesIO()
    Image.new("L", (1, 1), 7).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def prepare_section(datasets: list[dict], **changes) -> dict:
    """The quick profile with these datasets (and changes) as the params file holds it."""
    return {"prepare": quick_section("prepare", datasets=datasets, **changes)}


def run_prepare(base: Path, datasets: list[dict], **extra):
    """The stage's core with dataset roots relative to ``base`` (as paths.raw) and outputs inside it."""
    params = parse_section(PrepareParams, prepare_section(datasets, workers=2, **extra), "prepare")
    summary = run(params, base, base / "data/prepared", base / "metrics/prepare.json", progress=False)
    root = base / "data/prepared"
    return summary, read_manifest(root), pd.read_csv(root / "skipped.csv", keep_default_na=False, dtype=str), root


def reasons(skipped: pd.DataFrame) -> dict[str, str]:
    return dict(zip(skipped["key"], skipped["reason"]))


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def sentinel(tmp_path):
    """A folder outside every dataset root and project, holding an image that must never be read or changed."""
    outside = tmp_path / "outside"
    image(outside / "secret.jpg", value=222)
    mask_png(outside / "secret.png")
    return outside


# --------------------------------------------------------------------------- defect 2: ids


def test_keys_are_injective_url_and_file_name_safe_and_keep_existing_ids():
    names = ["a b", "a_b", "a+b", "a~b", "a%20b", "a/b", "a\\b", ".hidden", "..", "~2E", "é", "e\u0301", "a\nb",
             "a\udcff", "_", "-"]
    keys = [safe_key(n) for n in names]
    assert len(set(keys)) == len(names), dict(zip(names, keys))
    rng = random.Random(0)
    alphabet = "ab _+~%./\\é\u00a0\x00\n-."
    fuzz = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(3000)}
    fuzz_keys = {safe_key(n) for n in fuzz}
    assert len(fuzz_keys) == len(fuzz)  # injective
    for name in [*names, *fuzz]:
        key = safe_key(name)
        assert KEY_CHARS.match(key) and not key.startswith(".") and "%" not in key and "+" not in key, key
        assert decode_key(key) == name and is_safe_key(key)
    # the ids EG1800 and CCP already have do not change
    assert [safe_key(k) for k in ("00002", "0001", "a-b.c_d")] == ["00002", "0001", "a-b.c_d"]
    assert not is_safe_key("a b") and not is_safe_key("~2e") and not is_safe_key(".x")


def test_names_that_used_to_share_an_id_each_get_their_own(tmp_path):
    root = tmp_path / "un"
    names = {"a b.jpg": 10, "a_b.jpg": 20, "a+b.jpg": 30, "a%2Bb.png": 40, "é.png": 50}
    for name, value in names.items():
        image(root / name, value)
    image(root / ("%" * 120 + ".png"), 60)  # its key would not fit in a file name
    summary, manifest, skipped, out = run_prepare(tmp_path, [{"name": "unl", "format": "unlabelled", "root": "un"}])
    assert manifest["id"].is_unique and len(manifest) == len(names)
    for _, row in manifest.iterrows():
        key = row["id"].split("/", 1)[1]
        original = decode_key(key)
        pixels = load_image(out / row["image"]).rgb
        assert (pixels == names[original + Path(row["origin"]).suffix]).all(), row["id"]  # each row, its own file
        assert row["origin"] == original + Path(row["origin"]).suffix
    assert set(manifest["id"]) == {"unl/a~20b", "unl/a_b", "unl/a~2Bb", "unl/a~252Bb", "unl/~C3~A9"}
    (long_reason,) = [r for r in skipped["reason"] if "too long" in r]
    assert "at most 200" in long_reason


@pytest.mark.parametrize("layout", ["unlabelled", "folder", "eg1800_original", "eg1800_portraitnet"])
def test_two_files_with_one_id_are_an_error_naming_both(tmp_path, layout):
    root = tmp_path / "ds"
    if layout == "unlabelled":
        image(root / "a.jpg", 10)
        image(root / "a.png", 20)
    elif layout == "folder":
        image(root / "images/a.jpg", 10)
        image(root / "images/a.png", 20)
        mask_png(root / "masks/a.png")
    elif layout == "eg1800_original":
        image(root / "images_data_crop/00001.jpg", 10)
        image(root / "images_data_crop/00001.png", 20)
        (root / "images_mask").mkdir()
        scipy.io.savemat(root / "images_mask/00001_mask.mat", {"mask": np.zeros((8, 6), np.uint8)})
        scipy.io.savemat(root / "trainlist.mat", {"trainlist": np.array([[1]], np.uint16)})
        scipy.io.savemat(root / "testlist.mat", {"testlist": np.zeros((1, 0), np.uint16)})
    else:
        image(root / "Images/00001.jpg", 10)
        image(root / "Images/00001.png", 20)
        mask_png(root / "Labels/00001.png")
        (root / "eg1800_train.txt").write_text("00001\n")
        (root / "eg1800_test.txt").write_text("")
    with pytest.raises(StageError) as caught:
        run_prepare(tmp_path, [{"name": "ds", "format": layout, "root": "ds"}])
    message = str(caught.value)
    assert re.search(r"\ba\.jpg\b|00001\.jpg", message) and re.search(r"\ba\.png\b|00001\.png", message), message
    assert not (tmp_path / "data/prepared").exists()


def test_the_same_file_listed_twice_stays_a_counted_duplicate(tmp_path):
    bd = tmp_path / "bd"
    image(bd / "input/p1.jpg")
    mask_png(bd / "target/p1.png")
    (bd / "train.txt").write_text("input/p1.jpg target/p1.png\n./input/p1.jpg target/p1.png\n")
    (bd / "val.txt").write_text("p1\n")
    summary, manifest, _, _ = run_prepare(tmp_path, [{"name": "bd", "format": "baidu", "root": "bd"}])
    assert manifest["id"].tolist() == ["bd/p1"]
    assert summary["skipped"]["bd"] == {"id listed more than once (first listing kept)": 2}


def test_two_different_files_listed_under_one_id_are_an_error(tmp_path):
    bd = tmp_path / "bd"
    image(bd / "input/p1.jpg", 10)
    image(bd / "other/p1.jpg", 20)
    mask_png(bd / "target/p1.png")
    (bd / "train.txt").write_text("input/p1.jpg target/p1.png\n")
    (bd / "val.txt").write_text("other/p1.jpg target/p1.png\n")
    with pytest.raises(StageError, match=r"input/p1\.jpg and other/p1\.jpg both give the id bd/p1"):
        run_prepare(tmp_path, [{"name": "bd", "format": "baidu", "root": "bd"}])


# --------------------------------------------------------------------------- defect 5: bombs and bad files


def test_a_decompression_bomb_is_skipped_with_its_size_not_an_abort(tmp_path):
    root = tmp_path / "un"
    image(root / "good.png")
    png_claiming(root / "bomb.png", 20000, 20000)  # PIL raises DecompressionBombError on open
    png_claiming(root / "big.png", 8000, 7500)  # 60 MP: under PIL's limit, over ours
    summary, manifest, skipped, _ = run_prepare(tmp_path, [{"name": "un", "format": "unlabelled", "root": "un"}])
    assert manifest["id"].tolist() == ["un/good"]
    got = reasons(skipped)
    assert got["bomb"] == "image too large: 400000000 pixels, limit 50000000"
    assert got["big"] == "image too large: 60000000 pixels (8000x7500), limit 50000000"


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pils_warning_raised_as_an_error_is_a_skip_too(tmp_path):
    png_claiming(tmp_path / "warn.png", 10000, 10000)  # 100 MP: PIL warns (here: raises), below its error
    with pytest.raises(BadImageError, match="image too large: 100000000 pixels, limit 50000000"):
        read_mask_png(tmp_path / "warn.png")
    with pytest.raises(BadImageError, match=r"image too large: 100000000 pixels, limit 89478485 \(PIL's"):
        load_image(tmp_path / "warn.png", max_pixels=150_000_000)


def test_max_image_pixels_is_a_param_for_images_and_mat_masks(tmp_path, monkeypatch):
    eg = tmp_path / "eg"
    image(eg / "images_data_crop/00001.jpg", size=(6, 8))
    image(eg / "images_data_crop/00002.jpg", size=(12, 16))  # 192 pixels
    image(eg / "images_data_crop/00003.jpg", size=(6, 8))
    (eg / "images_mask").mkdir()
    for i in (1, 2):
        scipy.io.savemat(eg / f"images_mask/{i:05d}_mask.mat", {"mask": np.zeros((8, 6), np.uint8)})
    scipy.io.savemat(eg / "images_mask/00003_mask.mat", {"mask": np.zeros((80, 60), np.uint8)}, do_compression=True)
    scipy.io.savemat(eg / "trainlist.mat", {"trainlist": np.array([[1, 2, 3]], np.uint16)})
    scipy.io.savemat(eg / "testlist.mat", {"testlist": np.zeros((1, 0), np.uint16)})
    loaded = []
    real_loadmat = scipy.io.loadmat
    monkeypatch.setattr(scipy.io, "loadmat",
                        lambda path, **kw: loaded.append(Path(path).name) or real_loadmat(path, **kw))
    with pytest.raises(ParamsError, match="prepare.max_image_pixels"):
        parse_section(PrepareParams, prepare_section([{"name": "eg", "format": "eg1800_original", "root": "eg"}],
                                                     max_image_pixels=0), "prepare")
    _, manifest, skipped, _ = run_prepare(tmp_path, [{"name": "eg", "format": "eg1800_original", "root": "eg"}],
                                          max_image_pixels=100)
    assert manifest["id"].tolist() == ["eg/00001"]
    got = reasons(skipped)
    assert got["00002"] == "image too large: 192 pixels (12x16), limit 100"
    assert got["00003"] == "images_mask/00003_mask.mat: 'mask' too large: 80x60 = 4800 values, limit 100"
    assert "00003_mask.mat" not in loaded  # refused from its header, never decompressed


def test_hostile_mat_files_are_skips_or_one_line_errors(tmp_path):
    eg = tmp_path / "eg"
    for i in (1, 2, 3):
        image(eg / f"images_data_crop/{i:05d}.jpg")
    (eg / "images_mask").mkdir()
    scipy.io.savemat(eg / "images_mask/00001_mask.mat", {"mask": np.zeros((8, 6), np.uint8)})
    scipy.io.savemat(eg / "images_mask/00002_mask.mat", {"mask": np.array([["a", "b"]], dtype=object)})  # a cell
    (eg / "images_mask/00003_mask.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)  # garbage header
    scipy.io.savemat(eg / "trainlist.mat", {"trainlist": np.array([[1, 2, 3]], np.uint16)})
    scipy.io.savemat(eg / "testlist.mat", {"testlist": np.zeros((1, 0), np.uint16)})
    _, manifest, skipped, _ = run_prepare(tmp_path, [{"name": "eg", "format": "eg1800_original", "root": "eg"}])
    assert manifest["id"].tolist() == ["eg/00001"]
    got = reasons(skipped)
    assert got["00002"] == "images_mask/00002_mask.mat: 'mask' is not an array of numbers (object)"
    assert got["00003"].startswith("images_mask/00003_mask.mat: unreadable .mat file")
    # a split list that is not a list of ids stops the stage with one line, not a traceback
    scipy.io.savemat(eg / "trainlist.mat", {"trainlist": np.array([["x"]], dtype=object)})
    with pytest.raises(StageError, match="trainlist.mat"):
        run_prepare(tmp_path, [{"name": "eg", "format": "eg1800_original", "root": "eg"}])
    scipy.io.savemat(eg / "trainlist.mat", {"trainlist": np.array([[1.5, -2]])})
    with pytest.raises(StageError, match="non-negative integer ids"):
        run_prepare(tmp_path, [{"name": "eg", "format": "eg1800_original", "root": "eg"}])


def test_a_ccp_label_list_that_is_not_one_is_a_one_line_error(tmp_path):
    ccp = tmp_path / "ccp"
    image(ccp / "photos/0001.jpg")
    (ccp / "annotations/pixel-level").mkdir(parents=True)
    scipy.io.savemat(ccp / "label_list.mat", {"label_list": np.arange(3.0)})
    with pytest.raises(StageError, match="label_list.mat"):
        run_prepare(tmp_path, [{"name": "ccp", "format": "ccp", "root": "ccp"}])


def test_a_dataset_with_no_usable_item_is_reported_and_keeps_the_previous_output(tmp_path):
    image(tmp_path / "good/a.png")
    run_prepare(tmp_path, [{"name": "good", "format": "unlabelled", "root": "good"}])
    before = (tmp_path / "data/prepared/manifest.csv").read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/x.jpg").write_bytes(b"\xff\xd8\xff not really")
    (tmp_path / "bad/notes.txt").write_text("not an image")
    expected = (r"dataset bad: no usable sample in bad \(2 item\(s\) skipped: not an image file \(unknown format "
                r"or corrupt header\) 1; not an image file \(.txt\) 1\)")
    with pytest.raises(StageError, match=expected):
        run_prepare(tmp_path, [{"name": "good", "format": "unlabelled", "root": "good"},
                               {"name": "bad", "format": "unlabelled", "root": "bad"}])
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match=r"dataset empty: no usable sample in empty \(no item found\)"):
        run_prepare(tmp_path, [{"name": "good", "format": "unlabelled", "root": "good"},
                               {"name": "empty", "format": "unlabelled", "root": "empty"}])
    assert (tmp_path / "data/prepared/manifest.csv").read_bytes() == before


def test_the_output_marker_is_never_counted_as_data(tmp_path):
    root = tmp_path / "un"
    image(root / "a.png")
    (root / ".portrait-curation-output").write_text("written by a portrait-curation stage\n")
    summary, manifest, skipped, out = run_prepare(tmp_path, [{"name": "un", "format": "unlabelled", "root": "un"}])
    assert manifest["id"].tolist() == ["un/a"] and skipped.empty
    assert (out / ".portrait-curation-output").is_file()


# --------------------------------------------------------------------------- defect 4: roots and path params


def _every_loader_with_an_escape(root: Path, outside: Path, how: str) -> list[dict]:
    """One dataset per format, each with a usable item and one whose file leads outside ``root``."""
    def escape(link: Path, target: Path):
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)

    specs = []
    un = root / "un"
    image(un / "ok.png")
    escape(un / "leak.jpg", outside / "secret.jpg")
    specs.append({"name": "un", "format": "unlabelled", "root": str(un)})
    fo = root / "fo"
    image(fo / "images/ok.png")
    mask_png(fo / "masks/ok.png")
    image(fo / "images/leak.png")
    escape(fo / "masks/leak.png", outside / "secret.png")  # the mask leads out
    specs.append({"name": "fo", "format": "folder", "root": str(fo)})
    eg = root / "eg"
    for i in (1, 2):
        (eg / "images_mask").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(eg / f"images_mask/{i:05d}_mask.mat", {"mask": np.zeros((8, 6), np.uint8)})
    image(eg / "images_data_crop/00001.jpg")
    escape(eg / "images_data_crop/00002.jpg", outside / "secret.jpg")
    scipy.io.savemat(eg / "trainlist.mat", {"trainlist": np.array([[1, 2]], np.uint16)})
    scipy.io.savemat(eg / "testlist.mat", {"testlist": np.zeros((1, 0), np.uint16)})
    specs.append({"name": "eg", "format": "eg1800_original", "root": str(eg)})
    pn = root / "pn"
    image(pn / "Images/ok.png")
    mask_png(pn / "Labels/ok.png")
    escape(pn / "Images/leak.jpg", outside / "secret.jpg")
    mask_png(pn / "Labels/leak.png")
    (pn / "eg1800_train.txt").write_text("ok\nleak\n")
    (pn / "eg1800_test.txt").write_text("")
    specs.append({"name": "pn", "format": "eg1800_portraitnet", "root": str(pn)})
    ccp = root / "ccp"
    image(ccp / "photos/0001.jpg")
    escape(ccp / "photos/0002.jpg", outside / "secret.jpg")
    (ccp / "annotations/pixel-level").mkdir(parents=True)
    scipy.io.savemat(ccp / "label_list.mat", {"label_list": np.array([["null", "bag", "purse", "wallet"]],
                                                                        dtype=object)})
    specs.append({"name": "ccp", "format": "ccp", "root": str(ccp)})
    bd = root / "bd"
    image(bd / "input/ok.jpg")
    mask_png(bd / "target/ok.png")
    climb = os.path.relpath(outside, bd)
    lines = {"climbing": f"{climb}/secret.jpg {climb}/secret.png",
             "absolute": f"{outside}/secret.jpg {outside}/secret.png"}
    (bd / "train.txt").write_text(f"ok\n{lines[how]}\n")
    (bd / "val.txt").write_text("")
    specs.append({"name": "bd", "format": "baidu", "root": str(bd)})
    return specs


@pytest.mark.parametrize("how", ["climbing", "absolute"])
def test_no_loader_reads_a_file_outside_its_root(tmp_path, sentinel, how):
    before = snapshot(sentinel)
    project = tmp_path / "project"
    specs = _every_loader_with_an_escape(tmp_path / "raw", sentinel, how)
    summary, manifest, skipped, out = run_prepare(project, specs)
    assert sorted(manifest["id"]) == ["bd/ok", "ccp/0001", "eg/00001", "fo/ok", "pn/ok", "un/ok"]
    outside = skipped[skipped["reason"].str.contains("outside the dataset root")]
    assert sorted(outside["source"]) == ["bd", "ccp", "eg", "fo", "pn", "un"], skipped
    secret = (sentinel / "secret.jpg").read_bytes()
    assert all(p.read_bytes() != secret for p in out.rglob("*.jpg"))
    assert str(sentinel) not in (out / "skipped.csv").read_text()
    assert snapshot(sentinel) == before


def test_a_split_list_leading_outside_the_root_is_refused(tmp_path, sentinel):
    pn = tmp_path / "pn"
    image(pn / "Images/ok.png")
    mask_png(pn / "Labels/ok.png")
    (sentinel / "list.txt").write_text("ok\n")
    os.symlink(sentinel / "list.txt", pn / "eg1800_train.txt")
    (pn / "eg1800_test.txt").write_text("")
    with pytest.raises(StageError, match="split list leads outside the dataset root"):
        run_prepare(tmp_path, [{"name": "pn", "format": "eg1800_portraitnet", "root": "pn"}])


BASE = {"name": "fo", "format": "folder", "root": "fo"}


@pytest.mark.parametrize("override,key", [
    ({"images_dir": "../elsewhere"}, "images_dir"),
    ({"images_dir": "/etc"}, "images_dir"),
    ({"masks_dir": "a/../../b"}, "masks_dir"),
    ({"mask_suffix": "/../../x.png"}, "mask_suffix"),
    ({"mask_suffix": "_m\\..\\x.png"}, "mask_suffix"),
    ({"mask_suffix": ""}, "mask_suffix"),
    ({"root": ""}, "root"),
])
def test_dataset_path_params_are_checked_where_they_are_read(override, key):
    with pytest.raises(ParamsError, match=rf"prepare\.datasets\.0\.{key}"):
        parse_section(PrepareParams, prepare_section([{**BASE, **override}]), "prepare")


def test_outputs_stay_in_the_project_and_apart_from_the_inputs(tmp_path, sentinel, monkeypatch, capsys):
    project = tmp_path / "project"  # beside the sentinel folder
    project.mkdir()
    monkeypatch.chdir(project)
    params_file = Path("params.yaml")
    ok = parse_section(PrepareParams, prepare_section([{**BASE, "root": "../shared/datasets/x"}]), "prepare",
                       params_file)
    assert ok.datasets[0].root == "../shared/datasets/x"  # reading outside the project is fine
    image(project / "data/raw/fo/images/a.png")
    mask_png(project / "data/raw/fo/masks/a.png")
    before = snapshot(sentinel)
    # where prepare writes is paths.prepared and paths.metrics: refused when they leave the project
    # (when loaded) or when prepare would replace its own input or metrics (before any work)
    for override, message in (({"prepared": str(sentinel / "prepared")}, "paths.prepared"),
                              ({"metrics": "../outside/m"}, "paths.metrics"),
                              ({"metrics": "data/prepared/m"}, "inside paths.prepared"),
                              ({"prepared": "data/raw"}, "would replace its own input")):
        raw = merged(quick_params(), {"paths": override, **prepare_section([BASE])})
        with pytest.raises(ParamsError, match=message):
            check_paths(parse_section(PrepareParams, raw, "prepare", params_file),
                        parse_section(ProjectPaths, raw, "paths", params_file))
        params_file.write_text(yaml.safe_dump(raw))
        assert main(["--params", str(params_file), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("portrait-curation prepare: error: ") and "Traceback" not in err, err
        assert re.search(message, err) and "paths." in err, err
    assert not (project / "data/prepared").exists() and not (project / "metrics").exists()
    assert sorted(p.name for p in (project / "data/raw").iterdir()) == ["fo"]
    assert snapshot(sentinel) == before


# --------------------------------------------------------------------------- text outputs


def make_mixed_dataset(raw: Path) -> None:
    """Good and bad files of three formats; the bad ones' reasons name files."""
    eg = raw / "eg"
    for i in (1, 2, 3):
        image(eg / f"images_data_crop/{i:05d}.jpg")
    (eg / "images_data_crop/00004.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (eg / "images_mask").mkdir(parents=True)
    scipy.io.savemat(eg / "images_mask/00001_mask.mat", {"mask": np.zeros((8, 6), np.uint8)})
    (eg / "images_mask/00002_mask.mat").write_bytes(b"not a mat file at all")
    scipy.io.savemat(eg / "images_mask/00003_mask.mat", {"mask": np.zeros((7, 6), np.uint8)})
    scipy.io.savemat(eg / "images_mask/00004_mask.mat", {"mask": np.zeros((8, 6), np.uint8)})
    scipy.io.savemat(eg / "trainlist.mat", {"trainlist": np.array([[1, 2, 3, 4, 5]], np.uint16)})
    scipy.io.savemat(eg / "testlist.mat", {"testlist": np.zeros((1, 0), np.uint16)})
    fo = raw / "fo"
    image(fo / "images/a.png")
    mask_png(fo / "masks/a.png")
    image(fo / "images/b.png")
    (fo / "masks").mkdir(exist_ok=True)
    (fo / "masks/b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    png_claiming(fo / "images/c.png", 20000, 20000)
    mask_png(fo / "masks/c.png")
    un = raw / "un"
    image(un / "x y.png")
    (un / "broken.png").write_text("hello")


def test_text_outputs_are_byte_identical_across_project_folders(tmp_path, monkeypatch):
    outputs = {}
    for name in ("first", "second-checkout"):
        project = tmp_path / name / "proj"
        make_mixed_dataset(project / "data/raw")
        write_params(project / "params.yaml", {"prepare": {"workers": 2, "datasets": [
            {"name": "eg", "format": "eg1800_original", "root": "eg"},  # under paths.raw
            {"name": "fo", "format": "folder", "root": str(project / "data/raw/fo")},  # absolute on purpose
            {"name": "un", "format": "unlabelled", "root": "un"}]}})
        monkeypatch.chdir(project)
        assert main(["--params", "params.yaml", "--quiet"]) == 0
        texts = {rel: (project / rel).read_bytes() for rel in (
            "data/prepared/manifest.csv", "data/prepared/skipped.csv", "data/prepared/summary.json",
            "metrics/prepare.json")}
        for rel, data in texts.items():
            assert str(tmp_path).encode() not in data, (rel, data.decode())
        outputs[name] = texts
    assert outputs["first"] == outputs["second-checkout"]
    skipped = pd.read_csv(io.BytesIO(outputs["first"]["data/prepared/skipped.csv"]), keep_default_na=False, dtype=str)
    got = {(s, k): r for s, k, r in zip(skipped["source"], skipped["key"], skipped["reason"])}
    assert got[("eg", "00002")].startswith("images_mask/00002_mask.mat: unreadable .mat file")
    assert got[("fo", "b")].startswith("masks/b.png: corrupt or truncated")
    assert got[("fo", "c")] == "image too large: 400000000 pixels, limit 50000000"


def test_files_symlinked_into_the_dvc_cache_are_the_datasets_own(tmp_path, monkeypatch):
    """With DVC's ``cache.type: symlink`` every raw file links into .dvc/cache: still inside."""
    from pipeline.sources.base import is_inside

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / ".dvc" / "cache" / "files" / "md5" / "ab"
    cache.mkdir(parents=True)
    (cache / "cdef").write_bytes(b"jpeg bytes")
    root = tmp_path / "data" / "raw" / "faces"
    root.mkdir(parents=True)
    (root / "a.jpg").symlink_to(cache / "cdef")
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"x")
    (root / "b.jpg").symlink_to(outside)
    assert is_inside(root / "a.jpg", root)
    assert not is_inside(root / "b.jpg", root)
    assert not is_inside(root / ".." / "faces" / ".." / "x.jpg", root)
