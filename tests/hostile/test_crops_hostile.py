"""Issue "Hostile input", the crop_portraits stage: params, bad photos, crop ids, text outputs.

Every value of the crop section is validated where it is read (thresholds, canvas size,
device, names that become paths...), a photo that cannot be read is dropped with its
reason (decompression bombs included), crop ids are unique or the stage names both
parents, an empty output fails unless allowed, and the text outputs are the same bytes
in every checkout.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.crops import planning
from pipeline.crops.geometry import Placement
from pipeline.stages import crop_portraits as cp
from pipeline.detectors import Face
from pipeline.images import write_image, write_mask_png
from pipeline.manifest import ManifestRow, mask_statistics, read_manifest, to_frame
from pipeline.params import ParamsError, parse_section
from pipeline.paths import ProjectPaths
from pipeline.stage import StageError
from params_helpers import merged, quick_params, quick_section
from params_helpers import write_params as write_profile

# --------------------------------------------------------------------------- helpers


class RedSquareDetector:
    """Finds 'faces' drawn as pure red rectangles."""

    def detect(self, images):
        out = []
        for image in images:
            red = (image[:, :, 0] > 200) & (image[:, :, 1] < 60) & (image[:, :, 2] < 60)
            labels, _ = ndimage.label(red)
            out.append([Face(box=(float(c.start), float(r.start), float(c.stop), float(r.stop)), probability=0.99)
                        for r, c in ndimage.find_objects(labels)])
        return out


def person_mask(height=400, width=300) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[40:100, 125:175] = True
    mask[100:380, 90:210] = True
    return mask


def photo(with_face=True) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((400, 300, 3), 90, dtype=np.uint8)
    mask = person_mask()
    image[mask] = (40, 120, 200)
    if with_face:
        image[45:98, 128:172] = (255, 0, 0)
    return image, mask


def png_claiming(path: Path, width: int, height: int) -> None:
    """A 1x1 PNG whose header (CRC fixed) claims width x height."""
    buf = io.BytesIO()
    Image.new("L", (1, 1), 7).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def make_prepared(root: Path, photos: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """A prepared dataset with the given ccp photos and one eg1800 reference portrait."""
    rows = []
    portrait = np.full((400, 300, 3), 90, dtype=np.uint8)
    portrait[80:200, 90:210] = (255, 0, 0)
    portrait_mask = np.zeros((400, 300), dtype=bool)
    portrait_mask[120:, 40:260] = True
    for sample_id, (image, mask) in {**photos, "eg1800/00001": (portrait, portrait_mask)}.items():
        source, key = sample_id.split("/")
        image_rel, mask_rel = f"images/{source}/{key}.png", f"masks/{source}/{key}.png"
        write_image(root / image_rel, image)
        write_mask_png(root / mask_rel, mask)
        rows.append(ManifestRow(id=sample_id, source=source, split="train", image=image_rel, mask=mask_rel,
                                width=image.shape[1], height=image.shape[0], **mask_statistics(mask)))
    to_frame(rows).to_csv(root / "manifest.csv", index=False)


def write_params(project: Path, crop: dict, **top) -> Path:
    """The quick profile with these crop_portraits changes (and other sections' changes) in the project."""
    return write_profile(project / "params.yaml", {"crop_portraits": crop, **top})


@pytest.fixture
def project(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setattr("pipeline.detectors.build_detector", lambda name, **kw: RedSquareDetector())
    return project


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def crop_section(**overrides) -> dict:
    return {"crop_portraits": quick_section("crop_portraits", **overrides)}


# --------------------------------------------------------------------------- defect 4: params


@pytest.mark.parametrize("override,key", [
    ({"detector": {"thresholds": [2, 3, 4]}}, "crop_portraits.detector.thresholds.0"),
    ({"detector": {"thresholds": [0.6, -0.1, 0.7]}}, "crop_portraits.detector.thresholds.1"),
    ({"detector": {"thresholds": [0.6, 0.7]}}, "crop_portraits.detector.thresholds"),
    ({"detector": {"detect_size": [-1, 0]}}, "crop_portraits.detector.detect_size.0"),
    ({"detector": {"detect_size": [320, 8]}}, "crop_portraits.detector.detect_size.1"),
    ({"detector": {"detect_size": [320, 480], "min_face_size": 400}}, "smaller than min_face_size"),
    ({"detector": {"device": "cdua"}}, "crop_portraits.detector.device"),
    ({"detector": {"batch_size": 0}}, "crop_portraits.detector.batch_size"),
    ({"output_source": "../../x"}, "crop_portraits.output_source"),
    ({"output_source": "ccp"}, "output_source must differ from source"),
    ({"source": ""}, "crop_portraits.source"),
    ({"splits": ["trian"]}, "crop_portraits.splits.0"),
    ({"splits": []}, "crop_portraits.splits"),
    ({"calibration": {"quantiles": [0.5, 2]}}, "crop_portraits.calibration.quantiles.1"),
    ({"calibration": {"reference_splits": ["unlabelled"]}}, "crop_portraits.calibration.reference_splits.0"),
    ({"geometry": {"expand_left": 1e6}}, "crop_portraits.geometry.expand_left"),
    ({"geometry": {"output_width": 100000}}, "crop_portraits.geometry.output_width"),
    ({"max_image_pixels": 0}, "crop_portraits.max_image_pixels"),
])
def test_every_crop_value_is_validated_where_it_is_read(override, key):
    with pytest.raises(ParamsError, match=key):
        parse_section(cp.CropParams, crop_section(**override), "crop_portraits")


# The stage's folders are the `paths` section's: refused when empty (on loading) or when the
# crops would replace their input or their own report and metrics (before any work).
PATH_CASES = [
    ({"prepared": ""}, "paths.prepared"),
    ({"crops": "data/prepared"}, "paths.crops .* overlap"),
    ({"crops": "data/prepared/crops"}, "paths.crops .* overlap"),
    ({"prepared": "data/crops/prepared"}, "paths.crops .* overlap"),
    ({"crops_report": "data/crops/report"}, r"paths.crops_report .* must not lie inside paths.crops"),
    ({"metrics": "data/crops/m"}, r"paths.metrics .* must not lie inside paths.crops"),
]


@pytest.mark.parametrize("override,key", PATH_CASES)
def test_every_crop_path_is_validated_before_any_work(override, key, project, capsys):
    raw = merged(quick_params(), {"paths": override})
    with pytest.raises(ParamsError, match=key):
        cp.check_paths(parse_section(ProjectPaths, raw, "paths", "params.yaml"))
    make_prepared(project / "data/prepared", {"ccp/0001": photo()})
    before = snapshot(project)
    params = write_params(project, {}, paths=override)
    assert cp.main(["--params", str(params), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("portrait-curation crop-portraits: error: ") and "Traceback" not in err, err
    assert re.search(key, err), err
    assert snapshot(project) == {**before, "params.yaml": snapshot(project)["params.yaml"]}  # nothing written


def test_the_reported_bad_values_are_one_line_errors_and_touch_nothing(project, tmp_path, capsys):
    outside = tmp_path / "outside"
    (outside / "sentinel").mkdir(parents=True)
    (outside / "sentinel" / "keep.txt").write_text("keep")
    before = snapshot(outside)
    make_prepared(project / "data/prepared", {"ccp/0001": photo()})
    for detector, escape in (({"thresholds": [2, 3, 4]}, {}), ({"detect_size": [-1, 0]}, {}),
                             ({"device": "cdua"}, {}), ({}, {"output_source": "../../../outside/sentinel"})):
        params = write_params(project, {"detector": detector, **escape})
        assert cp.main(["--params", str(params), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("portrait-curation crop-portraits: error: ") and "Traceback" not in err, err
        assert "crop_portraits." in err, err
    assert not (project / "data/crops").exists()
    assert snapshot(outside) == before


def test_a_device_this_machine_lacks_is_a_one_line_error(project, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    make_prepared(project / "data/prepared", {"ccp/0001": photo()})
    params = write_params(project, {"detector": {"device": "cuda:1"}})
    assert cp.main(["--params", str(params), "--quiet"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


# --------------------------------------------------------------------------- empty output


def test_no_crop_at_all_fails_unless_allowed_and_keeps_the_previous_crops(project, capsys):
    make_prepared(project / "data/prepared", {"ccp/0001": photo(), "ccp/0002": photo()})
    params = write_params(project, {})
    assert cp.main(["--params", str(params), "--quiet"]) == 0
    before = (project / "data/crops/manifest.csv").read_bytes()
    make_prepared(project / "data/prepared", {"ccp/0001": photo(with_face=False), "ccp/0002": photo(False)})
    assert cp.main(["--params", str(params), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no crop from 2 photo(s) (no face detected 2)" in err and "allow_empty" in err
    assert (project / "data/crops/manifest.csv").read_bytes() == before
    params = write_params(project, {"allow_empty": True})
    assert cp.main(["--params", str(params), "--quiet"]) == 0
    assert read_manifest(project / "data/crops").empty
    assert json.loads((project / "metrics/crops.json").read_text())["crops_kept"] == 0


# --------------------------------------------------------------------------- defect 5: bad photos


def test_a_decompression_bomb_photo_is_dropped_with_its_reason(project):
    prepared = project / "data/prepared"
    make_prepared(prepared, {"ccp/0001": photo(), "ccp/0002": photo(), "eg1800/00002": photo()})
    png_claiming(prepared / "images/ccp/0002.png", 20000, 20000)
    png_claiming(prepared / "images/eg1800/00002.png", 20000, 20000)  # a reference portrait, too
    params = write_params(project, {})
    assert cp.main(["--params", str(params), "--quiet"]) == 0
    dropped = pd.read_csv(project / "data/crops/dropped.csv", keep_default_na=False)
    row = dropped[dropped["parent_id"] == "ccp/0002"].iloc[0]
    assert row["reason"] == planning.UNREADABLE
    assert row["detail"] == "images/ccp/0002.png: image too large: 400000000 pixels, limit 50000000"
    assert read_manifest(project / "data/crops")["origin"].tolist() == ["ccp/0001"]
    assert json.loads((project / "metrics/crops.json").read_text())["reference_unreadable"] == 1


def test_max_image_pixels_is_a_crop_param(project):
    make_prepared(project / "data/prepared", {"ccp/0001": photo()})
    params = write_params(project, {"max_image_pixels": 1000, "allow_empty": True})
    assert cp.main(["--params", str(params), "--quiet"]) == 0
    dropped = pd.read_csv(project / "data/crops/dropped.csv", keep_default_na=False)
    assert dropped["detail"].tolist() == ["images/ccp/0001.png: image too large: 120000 pixels (300x400), limit 1000"]


def test_full_size_detection_of_a_photo_smaller_than_a_face_finds_nothing_instead_of_failing():
    from pipeline.detectors.mtcnn import MTCNNDetector

    detector = MTCNNDetector(detect_size=None, min_face_size=24)
    tiny = np.full((16, 20, 3), 128, np.uint8)
    assert detector.detect([tiny, np.full((30, 30, 3), 128, np.uint8)]) == [[], []]


# --------------------------------------------------------------------------- defect 2: crop ids


def test_parents_whose_keys_used_to_collide_give_distinct_crops(project):
    make_prepared(project / "data/prepared", {"ccp/a~20b": photo(), "ccp/a_b": photo(), "ccp/a~2Bb": photo()})
    params = write_params(project, {})
    assert cp.main(["--params", str(params), "--quiet"]) == 0
    crops = read_manifest(project / "data/crops")
    assert sorted(crops["id"]) == ["ccp_crops/a_b_f0", "ccp_crops/a~20b_f0", "ccp_crops/a~2Bb_f0"]
    assert sorted(crops["origin"]) == ["ccp/a_b", "ccp/a~20b", "ccp/a~2Bb"]


def test_two_parents_giving_one_crop_id_is_an_error_naming_both():
    ids = planning.CropIds()
    plan = planning.CropPlan("ccp/a b", 0, Face((0, 0, 1, 1), 1.0), Placement((0, 0, 1, 1)), 0.5)
    assert ids.claim(plan) == "a~20b_f0"
    assert ids.claim(plan) == "a~20b_f0"  # the same parent again is the same crop
    clash = planning.CropPlan("ccp/a~20b", 0, Face((0, 0, 1, 1), 1.0), Placement((0, 0, 1, 1)), 0.5)
    with pytest.raises(StageError, match=r"photos ccp/a b and ccp/a~20b both give the crop key 'a~20b_f0'"):
        ids.claim(clash)


# --------------------------------------------------------------------------- text outputs


def test_crop_text_outputs_are_byte_identical_across_project_folders(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.detectors.build_detector", lambda name, **kw: RedSquareDetector())
    outputs = {}
    for name in ("one", "other-checkout"):
        project = tmp_path / name / "proj"
        prepared = project / "data/prepared"
        make_prepared(prepared, {"ccp/0001": photo(), "ccp/0002": photo(), "ccp/0003": photo(False)})
        (prepared / "images/ccp/0002.png").write_bytes(b"not a png")
        monkeypatch.chdir(project)
        params = write_params(project, {}, paths={"prepared": str(prepared)})  # an absolute input path is allowed
        assert cp.main(["--params", str(params), "--quiet"]) == 0
        texts = {rel: (project / rel).read_bytes() for rel in (
            "data/crops/manifest.csv", "data/crops/dropped.csv", "reports/crops/calibration.csv",
            "reports/crops/reference_faces.csv", "metrics/crops.json")}
        for rel, data in texts.items():
            assert str(tmp_path).encode() not in data, (rel, data.decode())
        outputs[name] = texts
    assert outputs["one"] == outputs["other-checkout"]
    dropped = pd.read_csv(io.BytesIO(outputs["one"]["data/crops/dropped.csv"]), keep_default_na=False)
    assert dropped.set_index("parent_id").loc["ccp/0002", "detail"].startswith("images/ccp/0002.png: ")
