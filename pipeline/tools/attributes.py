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

from pathlib import Path
from typing import Annotated, Iterable, Literal, Mapping

import pandas as pd
from pydantic import Field

from pipeline.attributes.annotation import assign_faces, dataset_to_table, detect_face_boxes, table_to_dataset
from pipeline.attributes.table import empty_table, read_table, write_table
from pipeline.params import InputPath, OutputPath, Section, load_section
from pipeline.stage import StageError, make_parser, run_main


# --- the CSV ---------------------------------------------------------------------------


# --- faces -----------------------------------------------------------------------------


# --- FiftyOne --------------------------------------------------------------------------


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
