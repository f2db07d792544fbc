"""Crop geometry, border policies, drop rules and the stage's outputs; real MTCNN on CCP photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.crops import calibration, planning
from pipeline.crops import geometry as geo
from pipeline.stages import crop_portraits as cp
from pipeline.detectors import Face
from pipeline.images import write_image, write_mask_png
from pipeline.manifest import ManifestRow, mask_statistics, read_manifest, to_frame
from pipeline.params import ParamsError, parse_section
from params_helpers import quick_section, write_params

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def params(**overrides) -> cp.CropParams:
    """The quick profile's CropParams with nested overrides given as {"geometry": {...}, "quality": {...}}."""
    return cp.CropParams.model_validate(quick_section("crop_portraits", **overrides))


def plan_photo(parent_id: str, mask: np.ndarray, faces, settings: cp.CropParams) -> planning.PhotoResult:
    """The library's plan for one photo under the stage's geometry and quality params."""
    return planning.plan_crops(parent_id, mask, faces, settings.geometry, settings.quality)


# --------------------------------------------------------------------------- geometry


def test_enlarge_box_uses_face_width_for_sides_and_height_for_top_bottom():
    assert geo.enlarge_box((100, 200, 140, 260), left=0.5, right=1.0, top=0.25, bottom=2.0) == (80, 185, 180, 380)


@pytest.mark.parametrize("box", [(0, 0, 100, 100), (10, 20, 30, 120), (-5, 0, 200, 40)])
def test_fix_aspect_grows_the_short_side_about_the_centre(box):
    x0, y0, x1, y1 = geo.fix_aspect(box, 0.75)
    assert (x1 - x0) / (y1 - y0) == pytest.approx(0.75)
    assert (x0 + x1) / 2 == pytest.approx((box[0] + box[2]) / 2)
    assert (y0 + y1) / 2 == pytest.approx((box[1] + box[3]) / 2)
    assert x0 <= box[0] and y0 <= box[1] and x1 >= box[2] and y1 >= box[3]


def test_shift_moves_a_box_inside_without_changing_its_size():
    placement = geo.fit_to_image((-30, -10, 90, 150), (200, 300), "shift")
    assert placement.box == (0, 0, 120, 160)
    assert placement.shift == (30, 10)
    assert placement.padding == (0, 0, 0, 0) and placement.border_fraction == 0


def test_shift_at_the_right_and_bottom_border():
    placement = geo.fit_to_image((150, 250, 250, 380), (200, 300), "shift")
    assert placement.box == (100, 170, 200, 300)
    assert placement.shift == (-50, -80)


def test_shift_zooms_in_about_the_face_when_the_box_exceeds_the_photo():
    # 300x400 box on a 200x300 photo: shrink by 0.6667 (width bound) about the face centre.
    face_centre = (100.0, 80.0)
    placement = geo.fit_to_image((-50, -100, 250, 300), (200, 300), "shift", anchor=face_centre)
    x0, y0, x1, y1 = placement.box
    assert 0 <= x0 and 0 <= y0 and x1 <= 200 and y1 <= 300
    assert placement.zoom == pytest.approx(2 / 3)
    assert placement.border_fraction == pytest.approx(1 - (2 / 3) ** 2)
    assert (x1 - x0) / (y1 - y0) == pytest.approx(0.75, abs=0.01)
    assert x0 <= face_centre[0] < x1 and y0 <= face_centre[1] < y1


def test_pad_keeps_the_box_and_records_the_outside_part():
    placement = geo.fit_to_image((-20, -40, 80, 160), (200, 300), "pad")
    assert placement.box == (-20, -40, 80, 160)
    assert placement.padding == (20, 40, 0, 0)
    assert placement.shift == (0, 0)
    assert placement.border_fraction == pytest.approx(1 - (80 * 160) / (100 * 200))


def test_pad_at_the_far_borders():
    placement = geo.fit_to_image((150, 250, 250, 350), (200, 300), "pad")
    assert placement.padding == (0, 0, 50, 50)
    assert placement.border_fraction == pytest.approx(0.75)


def test_crop_array_fills_outside_and_copies_inside():
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    out = geo.crop_array(array, (-1, 1, 3, 4), fill=-7)
    expected = np.array([[-7, 4, 5, 6], [-7, 8, 9, 10], [-7, -7, -7, -7]])
    np.testing.assert_array_equal(out, expected)


def assert_crop_of_stack_matches(image, mask, box, size, crop_rgb, crop_mask):
    """The crop of image and mask equals one crop of both stacked as channels of one array.

    The stack is float so the mask channel is resampled exactly as ``resize_mask`` does;
    the image channels then differ from the uint8 path only by rounding (<= 1 level),
    while a crop misaligned by a single pixel differs by far more on a real photo.
    """
    stacked = np.dstack([image.astype(np.float32), mask.astype(np.float32)])
    reference = geo.resize_image(geo.crop_array(stacked, box), size)
    np.testing.assert_array_equal(crop_mask, reference[:, :, 3] >= 0.5)
    assert np.abs(crop_rgb.astype(np.float32) - reference[:, :, :3]).max() <= 1.0


@pytest.mark.parametrize("policy", ["shift", "pad"])
def test_crop_of_mask_equals_mask_of_crop_on_synthetic_photo(policy):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 60, 3), dtype=np.uint8)
    mask = np.zeros((90, 60), dtype=bool)
    mask[20:80, 15:45] = True
    placement = geo.fit_to_image((-10, 5, 35, 65), (60, 90), policy)
    crop_rgb, crop_mask = geo.crop_image_and_mask(image, mask, placement.box, (30, 40))
    assert_crop_of_stack_matches(image, mask, placement.box, (30, 40), crop_rgb, crop_mask)
    if policy == "pad":  # the 10 padded columns (a quarter of 45) are black background
        assert not crop_mask[:, :6].any() and (crop_rgb[:, :6] == 0).all()
    # A crop one pixel off is caught by the same comparison.
    shifted = tuple(v + (1 if i % 2 == 0 else 0) for i, v in enumerate(placement.box))
    with pytest.raises(AssertionError):
        assert_crop_of_stack_matches(image, mask, shifted, (30, 40), crop_rgb, crop_mask)


def test_crop_without_resizing_is_an_exact_slice():
    image = np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    mask = image[:, :, 0] > 128
    crop_rgb, crop_mask = geo.crop_image_and_mask(image, mask, (5, 7, 29, 39), (24, 32))
    np.testing.assert_array_equal(crop_rgb, image[7:39, 5:29])
    np.testing.assert_array_equal(crop_mask, mask[7:39, 5:29])


def test_face_in_crop_is_relative_to_the_crop():
    figures = geo.face_in_crop((40, 30, 60, 60), (20, 10, 100, 110))
    assert figures == pytest.approx({"face_width_frac": 0.25, "face_height_frac": 0.3,
                                     "face_cx_frac": 0.375, "face_cy_frac": 0.35})


# --------------------------------------------------------------------------- drop rules


def person_mask(height=400, width=300) -> np.ndarray:
    """A standing figure: a head (rows 40-100) on a body down to row 380, centred at x=150."""
    mask = np.zeros((height, width), dtype=bool)
    mask[40:100, 125:175] = True
    mask[100:380, 90:210] = True
    return mask


HEAD = (130.0, 45.0, 170.0, 98.0)  # 40x53: the width/height ratio of MTCNN boxes


def face(box=HEAD, probability=0.999) -> Face:
    return Face(box=box, probability=probability, landmarks=((140, 60), (160, 60), (150, 72), (142, 85), (158, 85)))


def reasons(result: planning.PhotoResult) -> list[tuple[int, str]]:
    return [(d.face_index, d.reason) for d in result.dropped]


def test_a_good_face_gives_one_crop_with_the_configured_geometry():
    no_jitter = params(geometry={"jitter_scale": 0, "jitter_shift": 0})
    result = plan_photo("ccp/0001", person_mask(), [face()], no_jitter)
    assert reasons(result) == []
    (plan,) = result.plans
    x0, y0, x1, y1 = plan.placement.box
    assert (x1 - x0) / (y1 - y0) == pytest.approx(0.75, abs=0.01)
    figures = geo.face_in_crop(HEAD, plan.placement.box)
    assert figures["face_cx_frac"] == pytest.approx(0.5, abs=0.02)
    # top margin 0.48 and bottom 0.75 face heights: face height share 1 / 2.23
    assert figures["face_height_frac"] == pytest.approx(1 / 2.23, abs=0.02)


def test_jitter_is_reproducible_per_crop_and_bounded():
    mask = np.zeros((800, 600), dtype=bool)
    mask[140:210, 275:325] = True
    mask[210:, 240:360] = True
    head = (280.0, 150.0, 320.0, 203.0)
    settings = params(geometry={"jitter_scale": 0.2, "jitter_shift": 0.05})
    heights, centres = [], []
    for n in range(40):
        (plan,) = plan_photo(f"ccp/{n:04d}", mask, [face(box=head)], settings).plans
        again = plan_photo(f"ccp/{n:04d}", mask, [face(box=head)], settings).plans[0]
        assert again.placement == plan.placement
        figures = geo.face_in_crop(head, plan.placement.box)
        heights.append(figures["face_height_frac"])
        centres.append(figures["face_cx_frac"])
    plain = geo.face_in_crop(head, plan_photo("ccp/0000", mask, [face(box=head)],
                                                params(geometry={"jitter_scale": 0, "jitter_shift": 0})).plans[0].placement.box)
    ratios = np.array(heights) / plain["face_height_frac"]
    assert ratios.min() >= np.exp(-0.2) - 0.02 and ratios.max() <= np.exp(0.2) + 0.02
    assert ratios.std() > 0.05  # the framings really differ
    assert all(abs(c - 0.5) <= 0.05 * 1.25 + 0.01 for c in centres)


def test_no_face_is_recorded_per_photo():
    result = plan_photo("ccp/0002", person_mask(), [], params())
    assert reasons(result) == [(-1, planning.NO_FACE)] and result.plans == []


def test_low_probability_and_small_faces_are_dropped():
    faces = [face(probability=0.9), face(box=(140, 50, 160, 75))]
    result = plan_photo("ccp/0003", person_mask(), faces, params())
    assert reasons(result) == [(0, planning.LOW_PROBABILITY), (1, planning.FACE_TOO_SMALL)]


def test_a_face_on_the_background_is_not_the_annotated_person():
    passer_by = face(box=(10.0, 150.0, 60.0, 210.0))
    result = plan_photo("ccp/0004", person_mask(), [passer_by], params(quality={"drop_unannotated_faces": False}))
    assert reasons(result) == [(0, planning.FACE_OFF_PERSON)]


def test_a_face_at_the_feet_is_a_false_detection():
    shoe = face(box=(125.0, 320.0, 175.0, 375.0))
    result = plan_photo("ccp/0005", person_mask(), [shoe], params())
    assert reasons(result) == [(0, planning.FACE_LOW_ON_PERSON)]


def test_a_crop_showing_an_unannotated_face_is_dropped():
    # A passer-by's face right beside the subject's head falls inside the subject's crop.
    passer_by = face(box=(172.0, 48.0, 202.0, 90.0))
    mask = person_mask()
    result = plan_photo("ccp/0006", mask, [face(), passer_by], params())
    assert reasons(result) == [(0, planning.UNANNOTATED_FACE), (1, planning.FACE_OFF_PERSON)]
    allowed = plan_photo("ccp/0006", mask, [face(), passer_by], params(quality={"drop_unannotated_faces": False}))
    assert [p.face_index for p in allowed.plans] == [0]


def test_a_crop_cut_off_by_the_border_is_dropped_under_both_policies():
    mask = person_mask()
    mask[0:40, 125:175] = True  # head at the top edge
    top_face = face(box=(128.0, 2.0, 172.0, 55.0))
    # pad: the box reaches 77 px above the photo (46% of it); shift: the box is taller
    # than the photo and must be zoomed in by 0.72 (48% of its area lost).
    for geometry in ({"border": "pad", "expand_top": 1.5}, {"border": "shift", "expand_bottom": 8.0}):
        strict = params(geometry={**geometry, "max_border_fraction": 0.3})
        assert reasons(plan_photo("ccp/0007", mask, [top_face], strict)) == [(0, planning.CUT_BY_BORDER)], geometry
        lenient = params(geometry={**geometry, "max_border_fraction": 0.5}, quality={"mask_fraction_min": 0.1})
        assert len(plan_photo("ccp/0007", mask, [top_face], lenient).plans) == 1, geometry


def test_shift_policy_keeps_a_face_near_the_top_at_the_cost_of_moving_it():
    mask = person_mask()
    mask[0:40, 125:175] = True
    top_face = face(box=(128.0, 2.0, 172.0, 55.0))
    (plan,) = plan_photo("ccp/0007", mask, [top_face], params()).plans
    assert plan.placement.box[1] == 0 and plan.placement.shift[1] > 0
    (padded,) = plan_photo("ccp/0007", mask, [top_face], params(geometry={"border": "pad", "max_border_fraction": 0.3})).plans
    assert padded.placement.padding[1] > 0 and padded.placement.shift == (0, 0)


def test_mask_fraction_outside_the_range_is_dropped():
    result = plan_photo("ccp/0008", person_mask(), [face()], params(quality={"mask_fraction_max": 0.3}))
    assert [r for _, r in reasons(result)] == [planning.MASK_FRACTION_OUT_OF_RANGE]
    assert "not in [0.25, 0.3]" in result.dropped[0].detail


def test_several_faces_give_separate_crops():
    mask = np.zeros((400, 600), dtype=bool)
    mask[40:380, 90:210] = True
    mask[40:380, 390:510] = True
    faces = [face(), face(box=(428.0, 45.0, 472.0, 98.0))]
    result = plan_photo("ccp/0009", mask, faces, params())
    assert [p.face_index for p in result.plans] == [0, 1]
    assert {planning.crop_key(p.parent_id, p.face_index) for p in result.plans} == {"0009_f0", "0009_f1"}


def test_params_reject_an_empty_mask_fraction_range_and_unknown_keys():
    def section(**changes) -> dict:
        return {"crop_portraits": quick_section("crop_portraits", **changes)}

    with pytest.raises(ParamsError, match="mask_fraction_min"):
        parse_section(cp.CropParams, section(quality={"mask_fraction_min": 0.9, "mask_fraction_max": 0.5}),
                      "crop_portraits")
    with pytest.raises(ParamsError, match="crop_portraits.geometry.expand_lef"):
        parse_section(cp.CropParams, section(geometry={"expand_lef": 1}), "crop_portraits")
    with pytest.raises(ParamsError, match="border"):
        parse_section(cp.CropParams, section(geometry={"border": "wrap"}), "crop_portraits")


# --------------------------------------------------------------------------- the stage, with a fake detector


class RedSquareDetector:
    """Finds 'faces' drawn as pure red rectangles: a fake detector for end-to-end tests."""

    def __init__(self, **_options):
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        out = []
        for image in images:
            red = (image[:, :, 0] > 200) & (image[:, :, 1] < 60) & (image[:, :, 2] < 60)
            labels, _ = ndimage.label(red)
            faces = []
            for rows, cols in ndimage.find_objects(labels):
                box = (float(cols.start), float(rows.start), float(cols.stop), float(rows.stop))
                faces.append(Face(box=box, probability=0.99))
            out.append(sorted(faces, key=lambda f: -f.width * f.height))
        return out


def draw_photo(face_box, size=(300, 400)) -> tuple[np.ndarray, np.ndarray]:
    width, height = size
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    mask = person_mask(height, width)
    image[mask] = (40, 120, 200)
    x0, y0, x1, y1 = face_box
    image[y0:y1, x0:x1] = (255, 0, 0)
    return image, mask


def make_prepared(root: Path) -> None:
    rows = []

    def add(sample_id, split, image, mask, source="ccp"):
        key = sample_id.split("/")[1]
        write_image(root / f"images/{source}/{key}.png", image)
        write_mask_png(root / f"masks/{source}/{key}.png", mask)
        rows.append(ManifestRow(id=sample_id, source=source, split=split, image=f"images/{source}/{key}.png",
                                mask=f"masks/{source}/{key}.png", width=image.shape[1], height=image.shape[0],
                                **mask_statistics(mask)))

    add("ccp/0001", "train", *draw_photo((128, 45, 172, 98)))
    add("ccp/0002", "val", *draw_photo((128, 45, 172, 98)))
    add("ccp/0003", "train", *draw_photo((125, 320, 175, 375)))  # a "face" on the shoes
    blank = np.full((400, 300, 3), 90, dtype=np.uint8)
    add("ccp/0004", "train", blank, person_mask())
    add("ccp/0005", "train", *draw_photo((128, 45, 172, 98)))
    (root / "images/ccp/0005.png").write_bytes(b"not a png")
    add("ccp/0006", "unlabelled", *draw_photo((128, 45, 172, 98)))
    portrait = np.full((400, 300, 3), 90, dtype=np.uint8)
    portrait_mask = np.zeros((400, 300), dtype=bool)
    portrait_mask[120:, 40:260] = True
    portrait[80:200, 90:210] = (255, 0, 0)
    add("eg1800/00001", "train", portrait, portrait_mask, source="eg1800")
    to_frame(rows).to_csv(root / "manifest.csv", index=False)


def stage_paths(prepared: Path, out: Path) -> dict:
    """The ``paths`` the stage reads and writes: crops, report and metrics (crops.json) under ``out``."""
    return {"prepared": str(prepared), "crops": str(out / "crops"), "metrics": str(out),
            "crops_report": str(out / "report")}


def test_stage_writes_crops_drops_calibration_and_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the project: the folder of the params file
    prepared = tmp_path / "prepared"
    make_prepared(prepared)
    out = tmp_path / "out"
    params_file = write_params(tmp_path / "params.yaml", {
        "paths": stage_paths(prepared, out),
        "crop_portraits": {"detector": {"batch_size": 2}, "calibration": {"reference_limit": 5}}})
    monkeypatch.setattr("pipeline.detectors.build_detector", lambda name, **kw: RedSquareDetector())

    assert cp.main(["--params", str(params_file), "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no progress bars

    crops = read_manifest(out / "crops")
    assert list(crops["id"]) == ["ccp_crops/0001_f0", "ccp_crops/0002_f0"]
    assert list(crops["split"]) == ["train", "val"]  # inherited from the parent photo
    assert list(crops["origin"]) == ["ccp/0001", "ccp/0002"]
    assert crops.loc[0, "face_box"] == "128.0 45.0 172.0 98.0"
    for _, row in crops.iterrows():
        image = np.asarray(Image.open(out / "crops" / row["image"]))
        assert image.shape == (400, 300, 3)
        assert (out / "crops" / row["mask"]).is_file()
    dropped = pd.read_csv(out / "crops" / "dropped.csv")
    assert set(zip(dropped["parent_id"], dropped["reason"])) == {
        ("ccp/0003", planning.FACE_LOW_ON_PERSON), ("ccp/0004", planning.NO_FACE), ("ccp/0005", planning.UNREADABLE)}
    metrics = json.loads((out / "crops.json").read_text())
    assert metrics["photos"] == 5 and metrics["crops_kept"] == 2 and metrics["share_photos_with_crop"] == 0.4
    assert metrics["dropped"][planning.NO_FACE] == 1 and metrics["reference_images"] == 1
    assert metrics["median_mask_fraction"]["eg1800"] == pytest.approx(0.513, abs=0.01)
    table = pd.read_csv(out / "report" / "calibration.csv")
    assert set(table["measure"]) == set(calibration.CALIBRATION_COLUMNS)
    assert (out / "report" / "calibration.png").read_bytes()[:4] == b"\x89PNG"


class BrokenDetector:
    def detect(self, images):
        raise RuntimeError("detector crashed")


def test_a_crash_keeps_the_previous_crops_and_a_rerun_clears_its_leftovers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepared = tmp_path / "prepared"
    make_prepared(prepared)
    out = tmp_path / "out"
    params_file = write_params(tmp_path / "params.yaml", {"paths": stage_paths(prepared, out)})
    monkeypatch.setattr("pipeline.detectors.build_detector", lambda name, **kw: RedSquareDetector())
    assert cp.main(["--params", str(params_file), "--quiet"]) == 0
    before = (out / "crops" / "manifest.csv").read_bytes()

    monkeypatch.setattr("pipeline.detectors.build_detector", lambda name, **kw: BrokenDetector())
    with pytest.raises(RuntimeError, match="detector crashed"):
        cp.main(["--params", str(params_file), "--quiet"])
    assert (out / "crops" / "manifest.csv").read_bytes() == before

    stale = out / ".crops.killed.tmp"  # what a killed run leaves behind
    stale.mkdir()
    monkeypatch.setattr("pipeline.detectors.build_detector", lambda name, **kw: RedSquareDetector())
    assert cp.main(["--params", str(params_file), "--quiet"]) == 0
    assert not stale.exists()
    assert (out / "crops" / "manifest.csv").read_bytes() == before  # deterministic


def test_reference_sample_is_spread_over_the_ids():
    manifest = pd.DataFrame({"id": [f"eg1800/{i:05d}" for i in range(10)], "source": "eg1800", "split": "train",
                             "mask": "m.png"})
    assert list(planning.select_photos(manifest, "eg1800", ["train"], 3, spread=True)["id"]) == [
        "eg1800/00000", "eg1800/00004", "eg1800/00009"]
    assert list(planning.select_photos(manifest, "eg1800", ["train"], 3)["id"]) == [
        "eg1800/00000", "eg1800/00001", "eg1800/00002"]
    assert len(planning.select_photos(manifest, "eg1800", ["train"], 0)) == 10


def test_stage_without_photos_of_the_source_fails_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output paths are relative to the project, here tmp_path
    prepared = tmp_path / "prepared"
    make_prepared(prepared)
    params_file = write_params(tmp_path / "params.yaml", {"paths": {"prepared": str(prepared)},
                                                          "crop_portraits": {"source": "baidu"}})
    assert cp.main(["--params", str(params_file), "--quiet"]) == 2
    assert "no labelled photos of source 'baidu'" in capsys.readouterr().err


# --------------------------------------------------------------------------- real photos, real MTCNN


@pytest.fixture(scope="module")
def mtcnn():
    from pipeline.detectors.mtcnn import MTCNNDetector

    return MTCNNDetector(detect_size=(320, 480))


def load_ccp(photo_id: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    from pipeline.images import read_rgb

    image = read_rgb(SHARED / "ccp" / "photos" / f"{photo_id}.jpg")
    mask = loadmat(SHARED / "ccp" / "annotations" / "pixel-level" / f"{photo_id}.mat")["groundtruth"] > 0
    return image, mask


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.realdata
@pytest.mark.parametrize("policy", ["shift", "pad"])
def test_real_ccp_crops_are_aligned_and_the_face_is_where_the_geometry_puts_it(shared_datasets, mtcnn, policy):
    settings = params(geometry={"border": policy, "max_border_fraction": 0.3})
    photos = [load_ccp(photo_id) for photo_id in ("0001", "0002", "0005")]
    detections = mtcnn.detect([image for image, _ in photos])
    out_size = (settings.geometry.output_width, settings.geometry.output_height)
    kept = 0
    for (image, mask), faces in zip(photos, detections):
        assert faces, "MTCNN found no face on a CCP photo it is known to find"
        for plan in plan_photo("ccp/x", mask, faces, settings).plans:
            kept += 1
            crop_rgb, crop_mask = geo.crop_image_and_mask(image, mask, plan.placement.box, out_size)
            assert_crop_of_stack_matches(image, mask, plan.placement.box, out_size, crop_rgb, crop_mask)
            assert crop_mask.mean() == pytest.approx(plan.mask_fraction, abs=0.02)
            # Re-detect on the crop: the face is where the crop box maps the original one.
            x0, y0, x1, y1 = plan.placement.box
            sx, sy = out_size[0] / (x1 - x0), out_size[1] / (y1 - y0)
            fx0, fy0, fx1, fy1 = plan.face.box
            expected = ((fx0 - x0) * sx, (fy0 - y0) * sy, (fx1 - x0) * sx, (fy1 - y0) * sy)
            redetected = mtcnn.detect([crop_rgb])[0]
            assert redetected and max(box_iou(expected, f.box) for f in redetected) > 0.6
    assert kept >= 3


def test_letterbox_scales_uniformly_and_pads_right_and_bottom():
    from pipeline.detectors.mtcnn import letterbox

    image = np.full((825, 550, 3), 200, dtype=np.uint8)
    canvas, scale = letterbox(image, (320, 480))
    assert canvas.shape == (480, 320, 3)
    assert scale == pytest.approx(480 / 825)
    new_w = round(550 * scale)
    assert (canvas[:, :new_w] == 200).all() and (canvas[:, new_w:] == 0).all()


@pytest.mark.realdata
def test_downscaled_detection_maps_boxes_back_to_full_resolution(shared_datasets, mtcnn):
    from pipeline.detectors.mtcnn import MTCNNDetector

    image, _ = load_ccp("0001")
    small = mtcnn.detect([image])[0]
    full = MTCNNDetector(detect_size=None).detect([image])[0]
    assert small and full
    assert box_iou(small[0].box, full[0].box) > 0.7
    assert np.abs(np.array(small[0].landmarks) - np.array(full[0].landmarks)).max() < 0.1 * full[0].height
