"""Attribute tables in FiftyOne: one sample per image, one ``Detection`` per person.

Each detection carries ``race``, ``gender``, ``age``, ``person`` and ``annotator``; the
label schema makes each attribute a radio group in the App's annotate view. Faces found
by a detector are matched to the table's people left to right.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from pipeline.attributes.scheme import ATTRIBUTES, UNKNOWN
from pipeline.attributes.table import BOX_DECIMALS, BOX_COLUMNS, COLUMNS, empty_table, normalise_table
from pipeline.errors import StageError


# FiftyOne field holding one Detection per person; its label is always FACE_LABEL.
PEOPLE_FIELD = "people"
FACE_LABEL = "face"


def relative_box(box_xyxy: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """Pixel (x0, y0, x1, y1) -> clipped fractions (x, y, w, h) as stored in the CSV."""
    x0, y0, x1, y1 = box_xyxy
    x0, x1 = max(0.0, min(float(width), x0)), max(0.0, min(float(width), x1))
    y0, y1 = max(0.0, min(float(height), y0)), max(0.0, min(float(height), y1))
    return (round(x0 / width, BOX_DECIMALS), round(y0 / height, BOX_DECIMALS),
            round((x1 - x0) / width, BOX_DECIMALS), round((y1 - y0) / height, BOX_DECIMALS))


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
                      batch_size: int = 8, notes: list[str] | None = None, progress: bool = True
                      ) -> dict[str, list[tuple[float, float, float, float]]]:
    """Relative face boxes per image id from a ``pipeline.detectors.FaceDetector``.

    An image that does not decode is left out (no boxes) and a note in ``notes`` says why.
    ``progress``: a progress bar (off for ``--quiet``).
    """
    from tqdm import tqdm

    from pipeline.images import BadImageError, read_rgb

    found: dict[str, list[tuple[float, float, float, float]]] = {}
    items = list(image_paths.items())
    with tqdm(total=len(items), desc="faces", unit="img", disable=not progress) as bar:
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
                         "check paths.prepared / attributes.image_dir")
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
