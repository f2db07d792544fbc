"""The attribute table: a plain CSV that DVC tracks, one row per person::

    image_id,person,face_x,face_y,face_w,face_h,race,gender,age,annotator

``person`` is the 0-based index of the person from left to right; the face box is
optional (all four blank or all four set) and given as fractions of the image's width
and height, top-left corner then size, exactly as FiftyOne stores boxes.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd

from pipeline.attributes.scheme import ATTRIBUTES, UNKNOWN, class_number
from pipeline.errors import StageError


BOX_COLUMNS = ("face_x", "face_y", "face_w", "face_h")
REQUIRED_COLUMNS = ("image_id", "person", "race", "gender", "age")
COLUMNS = ("image_id", "person", *BOX_COLUMNS, "race", "gender", "age", "annotator")
BOX_DECIMALS = 6  # boxes are stored rounded: a CSV round trip gives the same bytes
_IMAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class AttributeTableError(StageError):
    """An attribute CSV that cannot be used; the message names the row and column."""


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
        record.update({c: round(v, BOX_DECIMALS) for c, v in zip(BOX_COLUMNS, box)})
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
