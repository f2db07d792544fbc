"""The race/gender/age scheme, the attribute CSV and its round trip through FiftyOne."""

from __future__ import annotations

import itertools
import math
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.attributes import annotation
from pipeline.attributes import table as attribute_table
from pipeline.tools import attributes as attr
from pipeline.attributes import (AGES, CLASSES, GENDERS, RACES, UNKNOWN, AttributeTableError, class_by_number,
                                 class_number, normalise_table, read_table)
from pipeline.attributes.annotation import assign_faces, relative_box
from params_helpers import write_params

HEADER = "image_id,person,race,gender,age,annotator\n"


def _table(rows: list[dict]) -> pd.DataFrame:
    return normalise_table(pd.DataFrame(rows), "test")


# --- the 18 classes --------------------------------------------------------------------


def test_eighteen_classes_are_a_bijection_with_the_known_triples():
    triples = list(itertools.product(RACES, GENDERS, AGES))
    numbers = [class_number(*t) for t in triples]
    assert sorted(numbers) == list(range(1, 19))
    for triple, number in zip(triples, numbers):
        found = class_by_number(number)
        assert (found.race, found.gender, found.age) == triple
    assert len({c.label for c in CLASSES}) == 18


def test_class_numbering_is_race_major_then_gender_then_age():
    assert class_number("caucasian", "man", "child") == 1
    assert class_number("caucasian", "man", "youth") == 2
    assert class_number("caucasian", "woman", "child") == 4
    assert class_number("asian", "man", "child") == 7
    assert class_number("black", "woman", "senior") == 18


@pytest.mark.parametrize("triple", [("unknown", "man", "youth"), ("asian", "unknown", "child"),
                                    ("black", "woman", "unknown"), ("unknown", "unknown", "unknown")])
def test_any_unknown_attribute_gives_no_class(triple):
    assert class_number(*triple) is None


def test_values_outside_the_scheme_are_refused():
    with pytest.raises(ValueError, match="hispanic"):
        class_number("hispanic", "man", "youth")
    with pytest.raises(ValueError):
        class_by_number(19)


# --- the CSV ---------------------------------------------------------------------------


def test_read_table_keeps_leading_zeros_and_normalises(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(HEADER + "00007,1,Asian, woman ,child,B\n00002,0,caucasian,man,senior,\n00007,0,black,man,youth,B\n")
    table = read_table(path)
    assert list(table.columns) == list(attribute_table.COLUMNS)
    assert list(table["image_id"]) == ["00002", "00007", "00007"]
    assert list(table["person"]) == [0, 0, 1]
    assert list(table["race"]) == ["caucasian", "black", "asian"]
    assert table.loc[2, "gender"] == "woman"
    assert table["face_x"].isna().all()
    assert table.loc[0, "annotator"] == ""


@pytest.mark.parametrize("body, row, column", [
    ("00002,0,hispanic,man,youth,A\n", 1, "race"),
    ("00002,0,asian,man,youth,A\n00003,0,asian,,youth,A\n", 2, "gender"),
    ("00002,0,asian,man,old,A\n", 1, "age"),
    ("00002,-1,asian,man,youth,A\n", 1, "person"),
    ("00002,x,asian,man,youth,A\n", 1, "person"),
    ("00002,0,asian,man,youth,A\n00002,0,black,man,youth,A\n", 2, "person"),
    (",0,asian,man,youth,A\n", 1, "image_id"),
])
def test_bad_rows_are_named_by_row_and_column(tmp_path, body, row, column):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + body)
    with pytest.raises(AttributeTableError) as caught:
        read_table(path)
    assert f"row {row}, column '{column}'" in str(caught.value)


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("image_id,person,race,age\n00002,0,asian,youth\n")
    with pytest.raises(AttributeTableError, match="missing column.*gender"):
        read_table(path)


def test_face_box_must_be_complete_and_inside_the_image():
    base = {"image_id": "1", "person": 0, "race": "asian", "gender": "man", "age": "youth"}
    with pytest.raises(AttributeTableError, match="column 'face_h'"):
        _table([{**base, "face_x": 0.1, "face_y": 0.1, "face_w": 0.2, "face_h": ""}])
    with pytest.raises(AttributeTableError, match="column 'face_w'.*leaves the image"):
        _table([{**base, "face_x": 0.9, "face_y": 0.1, "face_w": 0.2, "face_h": 0.2}])
    with pytest.raises(AttributeTableError, match="column 'face_x'.*outside 0..1"):
        _table([{**base, "face_x": 1.5, "face_y": 0.1, "face_w": 0.2, "face_h": 0.2}])


def test_relative_box_clips_and_scales():
    assert relative_box((-10, 20, 50, 120), width=100, height=200) == (0.0, 0.1, 0.5, 0.5)


# --- face boxes ------------------------------------------------------------------------


def test_assign_faces_left_to_right_only_when_counts_agree():
    table = _table([
        {"image_id": "a", "person": 0, "race": "asian", "gender": "man", "age": "youth"},
        {"image_id": "a", "person": 1, "race": "black", "gender": "woman", "age": "senior"},
        {"image_id": "b", "person": 0, "race": "asian", "gender": "man", "age": "youth"},
    ])
    right, left = (0.6, 0.1, 0.2, 0.2), (0.1, 0.1, 0.2, 0.2)
    filled, notes = assign_faces(table, {"a": [right, left], "b": [left, right], "c": [right, left]})
    a = filled[filled["image_id"] == "a"].set_index("person")
    assert a.loc[0, "face_x"] == pytest.approx(0.1) and a.loc[1, "face_x"] == pytest.approx(0.6)
    assert a.loc[1, "race"] == "black"  # attributes stay with their person
    assert math.isnan(filled.loc[filled["image_id"] == "b", "face_x"].iloc[0])  # 1 person, 2 faces
    assert len(notes) == 1 and notes[0].startswith("b:")
    c = filled[filled["image_id"] == "c"]
    assert list(c["person"]) == [0, 1] and list(c["face_x"]) == [0.1, 0.6]
    assert set(c[["race", "gender", "age"]].to_numpy().ravel()) == {UNKNOWN}


# --- FiftyOne --------------------------------------------------------------------------


def _images(folder: Path, ids: list[str]) -> dict[str, Path]:
    paths = {}
    for i, image_id in enumerate(ids):
        path = folder / f"{image_id}.png"
        Image.fromarray(np.full((16, 12, 3), 40 * i, dtype=np.uint8)).save(path)
        paths[image_id] = path
    return paths


def test_csv_round_trip_through_fiftyone(tmp_path):
    pytest.importorskip("fiftyone")
    import fiftyone as fo

    table = _table([
        {"image_id": "00002", "person": 0, "face_x": 0.1, "face_y": 0.2, "face_w": 0.3, "face_h": 0.25,
         "race": "asian", "gender": "woman", "age": "youth", "annotator": "A"},
        {"image_id": "00002", "person": 1, "face_x": 0.5, "face_y": 0.2, "face_w": 0.3, "face_h": 0.25,
         "race": "black", "gender": "man", "age": "senior", "annotator": "A"},
        {"image_id": "00005", "person": 0, "race": "unknown", "gender": "unknown", "age": "child", "annotator": ""},
    ])
    paths = _images(tmp_path, ["00002", "00005", "00009"])
    name = f"test-attributes-{uuid.uuid4().hex[:8]}"
    dataset = annotation.table_to_dataset(table, paths, name)
    try:
        assert len(dataset) == 3  # 00009 has no person yet: a sample to annotate
        first = dataset.match(fo.ViewField("image_id") == "00002").first()
        assert [d["race"] for d in first[annotation.PEOPLE_FIELD].detections] == ["asian", "black"]
        assert dataset.active_label_schemas == [annotation.PEOPLE_FIELD]
        back = annotation.dataset_to_table(dataset)
        pd.testing.assert_frame_equal(back, table)

        # A face drawn in the App (no person index, attributes unset) is exported as the
        # next person with every attribute unknown, never guessed.
        sample = dataset.match(fo.ViewField("image_id") == "00002").first()
        sample[annotation.PEOPLE_FIELD].detections.append(fo.Detection(label="face", bounding_box=[0.8, 0.1, 0.1, 0.1]))
        sample.save()
        back = annotation.dataset_to_table(dataset, default_annotator="R")
        added = back[(back["image_id"] == "00002") & (back["person"] == 2)].iloc[0]
        assert (added["race"], added["gender"], added["age"], added["annotator"]) == (UNKNOWN, UNKNOWN, UNKNOWN, "R")
    finally:
        fo.delete_dataset(name)


def test_cli_import_then_export_gives_the_same_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project is the params file's folder: default outputs land there
    pytest.importorskip("fiftyone")
    import fiftyone as fo

    images = tmp_path / "images"
    images.mkdir()
    _images(images, ["00002", "00005"])
    source = tmp_path / "in.csv"
    source.write_text("image_id,person,face_x,face_y,face_w,face_h,race,gender,age,annotator\n"
                      "00002,0,0.1,0.2,0.3,0.4,caucasian,woman,youth,A\n"
                      "00005,0,,,,,asian,unknown,child,B\n")
    name = f"test-attributes-cli-{uuid.uuid4().hex[:8]}"
    params = write_params(tmp_path / "params.yaml", {
        "paths": {"attributes": str(source)},
        "attributes": {"export_csv": str(tmp_path / "out.csv"), "dataset": name, "image_dir": str(images)}})
    try:
        assert attr.main(["import", "--params", str(params)]) == 0
        assert attr.main(["import", "--params", str(params)]) == 2  # would drop App edits: refused
        assert attr.main(["export", "--params", str(params)]) == 0
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
    pd.testing.assert_frame_equal(read_table(tmp_path / "out.csv"), read_table(source))


def test_cli_reports_a_bad_csv_with_row_and_column(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project is the params file's folder: default outputs land there
    source = tmp_path / "in.csv"
    source.write_text(HEADER + "00002,0,caucasian,female,youth,A\n")
    params = write_params(tmp_path / "params.yaml", {"paths": {"attributes": str(source)}})
    assert attr.main(["import", "--params", str(params)]) == 2
    assert "row 1, column 'gender'" in capsys.readouterr().err


@pytest.mark.realdata
def test_real_attribute_table_reads_with_the_documented_counts(shared_datasets):
    table = read_table(shared_datasets / "eg1800_test_attributes.csv")
    assert table["image_id"].nunique() == 135 and len(table) == 135
    assert table["race"].value_counts().to_dict() == {"caucasian": 95, "asian": 20, "unknown": 16, "black": 4}
    assert table["gender"].value_counts().to_dict() == {"woman": 80, "man": 49, "unknown": 6}
    assert table["age"].value_counts().to_dict() == {"youth": 114, "child": 15, "senior": 6}
    assert table["image_id"].str.fullmatch(r"\d{5}").all()


def test_detect_face_boxes_keeps_confident_faces_as_relative_boxes(tmp_path):
    from pipeline.detectors import Face

    paths = _images(tmp_path, ["x", "y"])  # 12 wide, 16 high

    class FakeDetector:
        def detect(self, images):
            assert all(image.shape == (16, 12, 3) for image in images)
            return [[Face(box=(6, 4, 12, 12), probability=0.95), Face(box=(0, 0, 3, 4), probability=0.5)], []]

    found = annotation.detect_face_boxes(paths, FakeDetector(), min_confidence=0.9)
    assert found == {"x": [(0.5, 0.25, 0.5, 0.5)], "y": []}


def test_annotate_reopens_an_existing_dataset_and_keeps_its_edits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project is the params file's folder: default outputs land there
    pytest.importorskip("fiftyone")
    import fiftyone as fo

    images = tmp_path / "images"
    images.mkdir()
    _images(images, ["00002"])
    source = tmp_path / "in.csv"
    source.write_text("image_id,person,face_x,face_y,face_w,face_h,race,gender,age,annotator\n"
                      "00002,0,0.1,0.2,0.3,0.4,caucasian,woman,youth,A\n")  # has a box: no detector needed
    name = f"test-attributes-annotate-{uuid.uuid4().hex[:8]}"
    params = write_params(tmp_path / "params.yaml", {
        "paths": {"attributes": str(source)}, "attributes": {"dataset": name, "image_dir": str(images)}})
    argv = ["annotate", "--no-launch", "--params", str(params)]
    try:
        assert attr.main(argv) == 0
        sample = fo.load_dataset(name).first()
        sample[annotation.PEOPLE_FIELD].detections[0]["race"] = "asian"  # an edit made in the App
        sample.save()
        assert attr.main(argv) == 0
        assert annotation.dataset_to_table(fo.load_dataset(name))["race"].tolist() == ["asian"]
        assert attr.main([*argv, "--overwrite"]) == 0
        assert annotation.dataset_to_table(fo.load_dataset(name))["race"].tolist() == ["caucasian"]
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_images_are_found_in_the_prepared_manifest_then_in_image_dir(tmp_path):
    """The manifest is ``paths.prepared`` (passed in), ``image_dir`` the fallback; with
    ``include_splits`` the images of the annotated splits come too."""
    prepared, folder = tmp_path / "prepared", tmp_path / "folder"
    prepared.mkdir()
    folder.mkdir()
    pd.DataFrame({"id": ["eg1800/00002", "eg1800/00003", "ccp/00004"], "source": ["eg1800", "eg1800", "ccp"],
                  "split": ["test", "train", "test"], "image": ["images/a.png", "images/b.png", "images/c.png"],
                  "mask": ""}).to_csv(prepared / "manifest.csv", index=False)
    _images(folder, ["00009"])
    found = attr.find_images(["00002", "00009", "00404"], manifest=prepared, source="eg1800", splits=["test"],
                             include_splits=False, image_dir=str(folder))
    assert found == {"00002": prepared / "images/a.png", "00009": folder / "00009.png"}
    found = attr.find_images([], manifest=prepared, source="eg1800", splits=["train"], include_splits=True,
                             image_dir="")
    assert found == {"00003": prepared / "images/b.png"}
    assert attr.find_images(["00009"], manifest=tmp_path / "none", source="eg1800", splits=["test"],
                            include_splits=True, image_dir=str(folder)) == {"00009": folder / "00009.png"}


def test_import_reads_the_csv_named_by_paths_attributes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "people.csv").write_text(HEADER + "00002,0,caucasian,female,youth,A\n")
    params = write_params(tmp_path / "params.yaml", {"paths": {"attributes": "people.csv"}})
    assert attr.main(["import", "--params", str(params), "--quiet"]) == 2
    assert "people.csv: row 1, column 'gender'" in capsys.readouterr().err
