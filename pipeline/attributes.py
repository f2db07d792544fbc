"""Race / gender / age of every person in a portrait: schema, CSV, FiftyOne annotation.

Why: the ExtremeC3Net paper audits EG1800 by race (caucasian, asian, black), gender (man,
woman) and age (child, youth = youth or middle-aged, senior): 18 intersectional classes
(its Table 6), whose imbalance (Table 7, Figure 5) and per-group accuracy (Table 5) the
``bias_report`` stage measures. This module is the one place that defines the scheme.

Rules of the scheme:
- ``unknown`` is a legal value for every attribute and is shown as such, never guessed;
- a person has an intersectional class only when all three attributes are known;
- class numbers run 1..18 race-major, then gender, then age (caucasian/man/child = 1,
  caucasian/man/youth = 2, ..., black/woman/senior = 18). The paper's Table 6 was not
  available to check its exact numbering; only the order of the numbers depends on it.

The attribute table is a plain CSV that DVC tracks, one row per person::

    image_id,person,face_x,face_y,face_w,face_h,race,gender,age,annotator

``person`` is the 0-based index of the person from left to right; the face box is
optional (all four blank or all four set) and given as fractions of the image's width
and height, top-left corner then size, exactly as FiftyOne stores boxes.

Command ``portrait-curation attributes``:

- ``import``: CSV -> FiftyOne dataset (one sample per image, one ``Detection`` per
  person in the field ``people``, each carrying ``race``, ``gender``, ``age``,
  ``person`` and ``annotator``), with an annotation schema (FiftyOne label schema) that
  makes each attribute a radio group in the App. Refuses to replace an existing dataset
  (it may hold edits not yet exported) unless ``--overwrite``;
- ``annotate``: like ``import``, then finds faces with MTCNN for images whose persons
  have no box (and for images of the configured splits with no row at all), and opens
  the FiftyOne App. If the dataset exists already it is reopened as it is, edits kept
  (``--overwrite`` rebuilds it from the CSV). To annotate: open a sample, switch the
  sample view to *Annotate*, click a face box, then one value in each of the three
  radio groups (race, gender, age): four clicks per person. Missing faces can be drawn
  as boxes of class ``face``. Stop with Ctrl-C, then run ``export``;
- ``export``: FiftyOne dataset -> CSV (validated, sorted), so the edits reach DVC.

Annotations made elsewhere come in through ``import --from other.csv --overwrite``.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterable, Literal, Mapping, Sequence

import pandas as pd
from pydantic import Field

from pipeline.params import InputPath, OutputPath, Section, load_section
from pipeline.stage import StageError, make_parser, run_main

UNKNOWN = "unknown"
RACES = ("caucasian", "asian", "black")
GENDERS = ("man", "woman")
AGES = ("child", "youth", "senior")
ATTRIBUTES: dict[str, tuple[str, ...]] = {"race": RACES, "gender": GENDERS, "age": AGES}

BOX_COLUMNS = ("face_x", "face_y", "face_w", "face_h")
REQUIRED_COLUMNS = ("image_id", "person", "race", "gender", "age")
COLUMNS = ("image_id", "person", *BOX_COLUMNS, "race", "gender", "age", "annotator")

# FiftyOne field holding one Detection per person; its label is always FACE_LABEL.
PEOPLE_FIELD = "people"
FACE_LABEL = "face"
_BOX_DECIMALS = 6
_IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class IntersectionalClass:
    number: int  # 1..18
    race: str
    gender: str
    age: str

    @property
    def label(self) -> str:
        return f"{self.number:02d} {self.race}/{self.gender}/{self.age}"


CLASSES: tuple[IntersectionalClass, ...] = tuple(
    IntersectionalClass(i + 1, race, gender, age)
    for i, (race, gender, age) in enumerate(itertools.product(RACES, GENDERS, AGES))
)
_CLASS_BY_TRIPLE = {(c.race, c.gender, c.age): c for c in CLASSES}
_CLASS_BY_NUMBER = {c.number: c for c in CLASSES}


def class_number(race: str, gender: str, age: str) -> int | None:
    """The intersectional class (1..18), or None when any attribute is unknown."""
    found = _CLASS_BY_TRIPLE.get((race, gender, age))
    if found is None:
        for name, value in (("race", race), ("gender", gender), ("age", age)):
            if value != UNKNOWN and value not in ATTRIBUTES[name]:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(ATTRIBUTES[name] + (UNKNOWN,))}")
        return None
    return found.number


def class_by_number(number: int) -> IntersectionalClass:
    try:
        return _CLASS_BY_NUMBER[int(number)]
    except KeyError:
        raise ValueError(f"class number {number!r} is not in 1..{len(CLASSES)}") from None


class AttributeTableError(StageError):
    """An attribute CSV that cannot be used; the message names the row and column."""


# --- the CSV ---------------------------------------------------------------------------


def empty_table() -> pd.DataFrame:
    return normalise_table(pd.DataFrame({c: pd.Series(dtype=str) for c in REQUIRED_COLUMNS}), "empty table")


def normalise_table(raw: pd.DataFrame, source: str = "attribute table") -> pd.DataFrame:
    """Validate a table of the CSV's form and return it in canonical form.

    Canonical: the columns of ``COLUMNS`` in order, ``image_id``/attributes/``annotator``
    as stripped lower-case strings (``annotator`` keeps its case), ``person`` int, the box
    as floats rounded to 6 decimals (NaN when absent); sorted by image then person.
    Errors name the data row (1-based, header excluded) and the column.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise AttributeTableError(f"{source}: missing column(s) {', '.join(missing)} "
                                  f"(needed: {', '.join(REQUIRED_COLUMNS)})")
    unknown_columns = [c for c in raw.columns if c not in COLUMNS]
    if unknown_columns:
        raise AttributeTableError(f"{source}: unexpected column(s) {', '.join(map(str, unknown_columns))} "
                                  f"(allowed: {', '.join(COLUMNS)})")
    present_box = [c for c in BOX_COLUMNS if c in raw.columns]
    if present_box and len(present_box) != len(BOX_COLUMNS):
        raise AttributeTableError(f"{source}: face box columns must come together ({', '.join(BOX_COLUMNS)}); "
                                  f"found only {', '.join(present_box)}")
    records = []
    for position, row in enumerate(raw.to_dict("records"), start=1):
        def fail(column: str, message: str):
            raise AttributeTableError(f"{source}: row {position}, column '{column}': {message}")

        image_id = _text(row.get("image_id"))
        if not image_id or not _IMAGE_ID.match(image_id):
            fail("image_id", f"{image_id!r} is not an image id (letters, digits, '_', '-', '.')")
        person_text = _text(row.get("person"))
        try:
            person = int(float(person_text)) if person_text else -1
            if float(person_text) != person:
                raise ValueError
        except ValueError:
            person = -1
        if person < 0:
            fail("person", f"{person_text!r} is not a person index (0, 1, ...)")
        record = {"image_id": image_id, "person": person}
        for name, values in ATTRIBUTES.items():
            value = _text(row.get(name)).lower()
            if value not in values and value != UNKNOWN:
                shown = value if value else "(blank)"
                fail(name, f"{shown!r} is not one of {', '.join(values + (UNKNOWN,))}; "
                           f"write '{UNKNOWN}' when the photo does not tell")
            record[name] = value
        box = [_number(row.get(c)) for c in BOX_COLUMNS]
        if any(math.isnan(v) for v in box) and not all(math.isnan(v) for v in box):
            column = BOX_COLUMNS[[math.isnan(v) for v in box].index(True)]
            fail(column, "a face box needs all four of face_x, face_y, face_w, face_h (or none)")
        if not math.isnan(box[0]):
            for column, value in zip(BOX_COLUMNS, box):
                if not 0.0 <= value <= 1.0:
                    fail(column, f"{value} is outside 0..1 (boxes are fractions of the image size)")
            if box[2] <= 0 or box[3] <= 0:
                fail("face_w" if box[2] <= 0 else "face_h", "a face box needs a positive width and height")
            if box[0] + box[2] > 1.0 + 1e-6 or box[1] + box[3] > 1.0 + 1e-6:
                fail("face_w" if box[0] + box[2] > 1.0 + 1e-6 else "face_h", "the face box leaves the image")
        record.update({c: round(v, _BOX_DECIMALS) for c, v in zip(BOX_COLUMNS, box)})
        record["annotator"] = _text(row.get("annotator"))
        records.append(record)
    table = pd.DataFrame(records, columns=list(COLUMNS))
    table = table.astype({"image_id": str, "person": int, "race": str, "gender": str, "age": str,
                          "annotator": str, **{c: float for c in BOX_COLUMNS}})
    duplicated = table.duplicated(["image_id", "person"], keep=False)
    if duplicated.any():
        first = table.index[duplicated][1]
        fail_row = int(first) + 1
        raise AttributeTableError(f"{source}: row {fail_row}, column 'person': image {table.at[first, 'image_id']} "
                                  f"has person {table.at[first, 'person']} twice")
    return table.sort_values(["image_id", "person"], kind="stable").reset_index(drop=True)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _number(value) -> float:
    text = _text(value)
    if not text:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return float("inf")  # reported as outside 0..1 with the value shown


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate an attribute CSV (every column as text: ids keep leading zeros)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: attribute CSV not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AttributeTableError(f"{path}: not a readable CSV ({exc})") from None
    return normalise_table(raw, str(path))


def write_table(path: str | os.PathLike, table: pd.DataFrame) -> None:
    from pipeline.atomic import write_csv

    write_csv(path, normalise_table(table, str(path)))


def with_classes(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``class_number`` (nullable int, <NA> when any attribute is unknown)."""
    numbers = [class_number(r, g, a) for r, g, a in zip(table["race"], table["gender"], table["age"])]
    return table.assign(class_number=pd.array(numbers, dtype="Int64"))


# --- faces -----------------------------------------------------------------------------


def relative_box(box_xyxy: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """Pixel (x0, y0, x1, y1) -> clipped fractions (x, y, w, h) as stored in the CSV."""
    x0, y0, x1, y1 = box_xyxy
    x0, x1 = max(0.0, min(float(width), x0)), max(0.0, min(float(width), x1))
    y0, y1 = max(0.0, min(float(height), y0)), max(0.0, min(float(height), y1))
    return (round(x0 / width, _BOX_DECIMALS), round(y0 / height, _BOX_DECIMALS),
            round((x1 - x0) / width, _BOX_DECIMALS), round((y1 - y0) / height, _BOX_DECIMALS))


def assign_faces(table: pd.DataFrame, faces: Mapping[str, Sequence[tuple[float, float, float, float]]]
                 ) -> tuple[pd.DataFrame, list[str]]:
    """Give persons without a face box the detected faces, left to right.

    ``faces`` maps image id -> relative boxes (x, y, w, h). An image with no row gets one
    person per face, all attributes ``unknown``. An image whose persons have no box gets
    the boxes in left-to-right order when the counts agree; otherwise it is left alone
    and a note says so (a person is never matched to a face by guesswork). Persons that
    already have a box keep it.
    """
    table = normalise_table(table, "attribute table")
    notes: list[str] = []
    new_rows = []
    for image_id, boxes in faces.items():
        ordered = sorted(boxes, key=lambda b: b[0] + b[2] / 2)
        rows = table.index[table["image_id"] == image_id]
        if len(rows) == 0:
            for person, box in enumerate(ordered):
                new_rows.append({"image_id": image_id, "person": person, **dict(zip(BOX_COLUMNS, box)),
                                 "race": UNKNOWN, "gender": UNKNOWN, "age": UNKNOWN, "annotator": ""})
            continue
        without_box = [i for i in rows if math.isnan(table.at[i, "face_x"])]
        if not without_box:
            continue
        if len(without_box) != len(rows):
            notes.append(f"{image_id}: some persons have a face box and some not; boxes left for review")
        elif len(ordered) != len(rows):
            notes.append(f"{image_id}: {len(rows)} person(s) in the table, {len(ordered)} face(s) found; "
                         "boxes left for review")
        else:
            for i, box in zip(sorted(rows, key=lambda i: table.at[i, "person"]), ordered):
                for column, value in zip(BOX_COLUMNS, box):
                    table.at[i, column] = value
    if new_rows:
        table = pd.concat([table, pd.DataFrame(new_rows)], ignore_index=True)
    return normalise_table(table, "attribute table"), notes


def detect_face_boxes(image_paths: Mapping[str, Path], detector, min_confidence: float,
                      batch_size: int = 8, notes: list[str] | None = None
                      ) -> dict[str, list[tuple[float, float, float, float]]]:
    """Relative face boxes per image id from a ``pipeline.detectors.FaceDetector``.

    An image that does not decode is left out (no boxes) and a note in ``notes`` says why.
    """
    from tqdm import tqdm

    from pipeline.images import BadImageError, read_rgb

    found: dict[str, list[tuple[float, float, float, float]]] = {}
    items = list(image_paths.items())
    with tqdm(total=len(items), desc="faces", unit="img") as bar:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            chunk, images = [], []
            for image_id, path in batch:
                try:
                    images.append(read_rgb(path))
                except (BadImageError, OSError) as exc:
                    if notes is not None:
                        notes.append(f"{image_id}: image skipped, no face detection ({exc})")
                    continue
                chunk.append((image_id, path))
            for (image_id, _), image, faces in zip(chunk, images, detector.detect(images) if images else []):
                height, width = image.shape[:2]
                found[image_id] = [relative_box(f.box, width, height) for f in faces
                                   if f.probability >= min_confidence]
            bar.update(len(batch))
    return found


# --- FiftyOne --------------------------------------------------------------------------


def label_schema() -> dict:
    """The App's annotation form for ``people``: one radio group per attribute."""
    radio = [{"name": name, "type": "str", "component": "radio", "values": [*values, UNKNOWN], "default": UNKNOWN}
             for name, values in ATTRIBUTES.items()]
    return {
        "type": "detections",
        "component": "radio",
        "classes": [FACE_LABEL],
        "default": FACE_LABEL,
        "attributes": radio + [
            {"name": "person", "type": "int", "component": "text"},
            {"name": "annotator", "type": "str", "component": "text"},
            {"name": "id", "type": "id", "component": "text", "read_only": True},
        ],
    }


def table_to_dataset(table: pd.DataFrame, image_paths: Mapping[str, str | os.PathLike], name: str,
                     overwrite: bool = True):
    """Build the FiftyOne dataset ``name`` from the attribute table (replacing it).

    Every image id of the table needs a path in ``image_paths``; images of
    ``image_paths`` without rows become samples with no person (to be annotated).
    """
    import fiftyone as fo

    table = normalise_table(table, "attribute table")
    missing = sorted(set(table["image_id"]) - set(image_paths))
    if missing:
        raise StageError(f"{len(missing)} image(s) of the attribute table not found, e.g. {', '.join(missing[:5])}: "
                         "check attributes.manifest / attributes.image_dir")
    if fo.dataset_exists(name):
        if not overwrite:
            raise StageError(f"FiftyOne dataset {name!r} exists; export it first or pass --overwrite")
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    dataset.persistent = True
    dataset.add_sample_field(PEOPLE_FIELD, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    for attribute in (*ATTRIBUTES, "annotator"):
        dataset.add_sample_field(f"{PEOPLE_FIELD}.detections.{attribute}", fo.StringField)
    dataset.add_sample_field(f"{PEOPLE_FIELD}.detections.person", fo.IntField)
    dataset.add_sample_field("image_id", fo.StringField)
    by_image = {k: g for k, g in table.groupby("image_id", sort=True)}
    samples = []
    for image_id in sorted(image_paths):
        detections = []
        rows = by_image.get(image_id)
        for row in ([] if rows is None else rows.to_dict("records")):
            box = None if math.isnan(row["face_x"]) else [row[c] for c in BOX_COLUMNS]
            detections.append(fo.Detection(label=FACE_LABEL, bounding_box=box, person=int(row["person"]),
                                           race=row["race"], gender=row["gender"], age=row["age"],
                                           annotator=row["annotator"]))
        samples.append(fo.Sample(filepath=str(Path(image_paths[image_id]).resolve()), image_id=image_id,
                                 **{PEOPLE_FIELD: fo.Detections(detections=detections)}))
    dataset.add_samples(samples, progress=False)
    dataset.compute_metadata(progress=False)  # the App's Annotate mode needs image sizes
    dataset.set_label_schemas({PEOPLE_FIELD: label_schema()})
    dataset.activate_label_schemas(PEOPLE_FIELD)
    return dataset


def dataset_to_table(dataset, default_annotator: str = "") -> pd.DataFrame:
    """Read every person of the dataset back into the CSV's form.

    Boxes drawn in the App without a person index get the next indices, left to right;
    attributes never set stay ``unknown``; a blank annotator becomes ``default_annotator``.
    """
    records = []
    for sample in dataset.select_fields(["image_id", PEOPLE_FIELD]).iter_samples(progress=False):
        image_id = sample["image_id"] or Path(sample.filepath).stem
        people = sample[PEOPLE_FIELD]
        detections = list(people.detections) if people is not None else []
        known = [d for d in detections if _field_or_none(d, "person") is not None]
        used = {int(d.get_field("person")) for d in known}
        fresh = sorted((d for d in detections if _field_or_none(d, "person") is None),
                       key=lambda d: _box_centre(d.bounding_box))
        next_index = (max(used) + 1) if used else 0
        assigned = [(int(d.get_field("person")), d) for d in known]
        for d in fresh:
            assigned.append((next_index, d))
            next_index += 1
        for person, d in assigned:
            box = list(d.bounding_box) if d.bounding_box else [float("nan")] * 4
            record = {"image_id": image_id, "person": person, **dict(zip(BOX_COLUMNS, box))}
            for attribute in ATTRIBUTES:
                value = _field_or_none(d, attribute)
                record[attribute] = value if value else UNKNOWN
            record["annotator"] = _field_or_none(d, "annotator") or default_annotator
            records.append(record)
    frame = pd.DataFrame(records, columns=list(COLUMNS)) if records else empty_table()
    return normalise_table(frame, f"FiftyOne dataset {dataset.name!r}")


def _field_or_none(detection, name: str):
    try:
        return detection.get_field(name)
    except AttributeError:
        return None


def _box_centre(box) -> float:
    return (box[0] + box[2] / 2) if box else float("inf")


# --- the stage -------------------------------------------------------------------------


class AttributesParams(Section):
    csv: InputPath = Field("../shared/datasets/eg1800_test_attributes.csv",
                           description="attribute CSV that import and annotate read")
    export_csv: OutputPath = Field("annotations/attributes.csv", description="CSV that export writes (DVC tracks it)")
    dataset: str = Field("eg1800-attributes", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: str = Field("eg1800", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                        description="manifest source whose keys are the CSV's image ids")
    manifest: str = Field("data/prepared", description="canonical dataset where images are looked up; '' = none")
    splits: list[Literal["train", "val", "test", "unlabelled"]] = Field(
        ["test"], min_length=1, description="manifest splits offered for annotation")
    image_dir: str = Field("", description="fallback folder of <image_id>.jpg|png when not in the manifest")
    detector_size: tuple[Annotated[int, Field(ge=32)], Annotated[int, Field(ge=32)]] = (320, 480)
    min_face_confidence: float = Field(0.9, ge=0.0, le=1.0)


def find_images(params: AttributesParams, image_ids: Iterable[str], include_splits: bool) -> dict[str, Path]:
    """Image path per id: the manifest first (``<source>/<id>``), then ``image_dir``."""
    from pipeline.manifest import read_manifest

    paths: dict[str, Path] = {}
    wanted = set(image_ids)
    root = Path(params.manifest)
    if params.manifest and (root / "manifest.csv").is_file():
        try:
            manifest = read_manifest(root)
        except ValueError as exc:
            raise StageError(str(exc)) from None
        manifest = manifest[manifest["source"] == params.source]
        for row in manifest.to_dict("records"):
            key = row["id"].split("/", 1)[1]
            if key in wanted or (include_splits and row["split"] in params.splits):
                paths[key] = root / row["image"]
    if params.image_dir:
        for image_id in wanted - set(paths):
            for suffix in (".jpg", ".png", ".jpeg"):
                candidate = Path(params.image_dir) / f"{image_id}{suffix}"
                if candidate.is_file():
                    paths[image_id] = candidate
                    break
    return paths


def _parser():
    parser = make_parser("attributes", __doc__)
    parser.add_argument("action", choices=["import", "export", "annotate"])
    parser.add_argument("--from", dest="source_csv", help="CSV to import (default: attributes.csv)")
    parser.add_argument("--to", dest="target_csv", help="CSV to export to (default: attributes.export_csv)")
    parser.add_argument("--annotator", default="", help="annotator name written for rows that have none")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing FiftyOne dataset")
    parser.add_argument("--no-launch", action="store_true", help="annotate: prepare the dataset, do not open the App")
    parser.add_argument("--port", type=int, default=5151, help="App port (default: %(default)s)")
    return parser


def _body(args) -> int:
    params = load_section(AttributesParams, "attributes", args.params)
    if args.action == "export":
        import fiftyone as fo

        if not fo.dataset_exists(params.dataset):
            raise StageError(f"no FiftyOne dataset {params.dataset!r}; run `attributes import` or `annotate` first")
        table = dataset_to_table(fo.load_dataset(params.dataset), args.annotator)
        target = args.target_csv or params.export_csv
        write_table(target, table)
        print(f"wrote {len(table)} person(s) of {table['image_id'].nunique()} image(s) to {target}")
        return 0
    annotate = args.action == "annotate"
    if annotate and not args.overwrite and _dataset_exists(params.dataset):
        # Edits in the App live only in the dataset until exported: never rebuild over them.
        import fiftyone as fo

        dataset = fo.load_dataset(params.dataset)
        print(f"reopening FiftyOne dataset {params.dataset!r} with its edits ({len(dataset)} image(s)); "
              "--overwrite rebuilds it from the CSV")
    else:
        source_csv = args.source_csv or params.csv
        table = read_table(source_csv) if Path(source_csv).is_file() or not annotate else empty_table()
        images = find_images(params, table["image_id"], include_splits=annotate)
        if annotate:
            table = _add_face_boxes(table, images, params)
        dataset = table_to_dataset(table, images, params.dataset, overwrite=args.overwrite)
        print(f"FiftyOne dataset {params.dataset!r}: {len(dataset)} image(s), {len(table)} person(s) "
              f"from {source_csv}")
    if annotate and not args.no_launch:
        import fiftyone as fo

        session = fo.launch_app(dataset, port=args.port, remote=True, address="127.0.0.1")
        print(f"App at http://127.0.0.1:{args.port}: open a sample, choose Annotate, click a face box, "
              "set race / gender / age; Ctrl-C here when done, then `portrait-curation attributes export`.")
        try:
            session.wait(-1)  # until Ctrl-C: closing or reloading a tab must not end the session
        except KeyboardInterrupt:
            pass
    return 0


def _dataset_exists(name: str) -> bool:
    import fiftyone as fo

    return fo.dataset_exists(name)


def _add_face_boxes(table: pd.DataFrame, images: Mapping[str, Path], params: AttributesParams) -> pd.DataFrame:
    with_box = set(table.loc[table["face_x"].notna(), "image_id"])
    todo = {k: p for k, p in images.items() if k not in with_box}
    if not todo:
        return table
    from pipeline.detectors import build_detector

    detector = build_detector("mtcnn", detect_size=tuple(params.detector_size))
    skipped: list[str] = []
    faces = detect_face_boxes(todo, detector, params.min_face_confidence, notes=skipped)
    table, notes = assign_faces(table, faces)
    for note in skipped + notes:
        print(f"note: {note}")
    return table


def main(argv=None) -> int:
    return run_main(_body, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
