"""Command ``portrait-curation attributes``: race / gender / age of every person, in FiftyOne.

Why: the ``bias_report`` stage measures accuracy per group of the paper's scheme
(``pipeline.attributes``: 3 races x 2 genders x 3 ages, ``unknown`` allowed); the
attributes come from a plain CSV (``paths.attributes``, one row per person) that a person
fills in here. A manual step, not a DVC stage. Images are looked up in ``paths.prepared``
(rows of ``attributes.source``) and then in ``attributes.image_dir``.

- ``import``: CSV -> FiftyOne dataset (one sample per image, one ``Detection`` per
  person in the field ``people``, each carrying ``race``, ``gender``, ``age``,
  ``person`` and ``annotator``), with an annotation schema (FiftyOne label schema) that
  makes each attribute a radio group in the App. Refuses to replace an existing dataset
  (it may hold edits not yet exported) unless ``--overwrite``;
- ``annotate``: like ``import``, then finds faces with MTCNN for images whose persons
  have no box (and for images of ``attributes.splits`` with no row at all), and opens
  the FiftyOne App. If the dataset exists already it is reopened as it is, edits kept
  (``--overwrite`` rebuilds it from the CSV). To annotate: open a sample, switch the
  sample view to *Annotate*, click a face box, then one value in each of the three
  radio groups (race, gender, age): four clicks per person. Missing faces can be drawn
  as boxes of class ``face``. Stop with Ctrl-C, then run ``export``;
- ``export``: FiftyOne dataset -> CSV (``attributes.export_csv``, validated, sorted), so
  the edits reach DVC (track it with ``dvc add`` and point ``paths.attributes`` at it).

Annotations made elsewhere come in through ``import --from other.csv --overwrite``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Iterable, Literal, Mapping, Sequence

import pandas as pd
from pydantic import Field

from pipeline.attributes.annotation import assign_faces, dataset_to_table, detect_face_boxes, table_to_dataset
from pipeline.attributes.table import empty_table, read_table, write_table
from pipeline.params import OutputPath, ParamsError, Section, check_output_path, load_params, load_section, path_rules
from pipeline.paths import ProjectPaths
from pipeline.stage import StageError, make_parser, run_main

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class AttributesParams(Section):
    export_csv: OutputPath = Field(description="CSV that export writes (DVC tracks it)")
    dataset: str = Field(pattern=_NAME, description="persistent FiftyOne dataset")
    source: str = Field(pattern=_NAME, description="manifest source whose keys are the CSV's image ids")
    splits: list[Literal["train", "val", "test", "unlabelled"]] = Field(
        min_length=1, description="manifest splits offered for annotation")
    image_dir: str = Field(description="fallback folder of <image_id>.jpg|png when not in the manifest; '' = none")
    detector_size: tuple[Annotated[int, Field(ge=32)], Annotated[int, Field(ge=32)]]
    min_face_confidence: float = Field(ge=0.0, le=1.0)


def find_images(image_ids: Iterable[str], *, manifest: str | Path, source: str, splits: Sequence[str],
                include_splits: bool, image_dir: str) -> dict[str, Path]:
    """Image path per id: the manifest first (``<source>/<id>``; none when it has not been
    written yet), then ``image_dir``. With ``include_splits``, every image of ``splits`` too."""
    from pipeline.manifest import read_manifest

    paths: dict[str, Path] = {}
    wanted = set(image_ids)
    root = Path(manifest)
    if (root / "manifest.csv").is_file():
        try:
            frame = read_manifest(root)
        except ValueError as exc:
            raise StageError(str(exc)) from None
        frame = frame[frame["source"] == source]
        for row in frame.to_dict("records"):
            key = row["id"].split("/", 1)[1]
            if key in wanted or (include_splits and row["split"] in splits):
                paths[key] = root / row["image"]
    if image_dir:
        for image_id in wanted - set(paths):
            for suffix in (".jpg", ".png", ".jpeg"):
                candidate = Path(image_dir) / f"{image_id}{suffix}"
                if candidate.is_file():
                    paths[image_id] = candidate
                    break
    return paths


def _parser():
    parser = make_parser("attributes", __doc__)
    parser.add_argument("action", choices=["import", "export", "annotate"])
    parser.add_argument("--from", dest="source_csv", help="CSV to import (default: paths.attributes)")
    parser.add_argument("--to", dest="target_csv", help="CSV to export to (default: attributes.export_csv)")
    parser.add_argument("--annotator", default="", help="annotator name written for rows that have none")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing FiftyOne dataset")
    parser.add_argument("--no-launch", action="store_true", help="annotate: prepare the dataset, do not open the App")
    parser.add_argument("--port", type=int, default=5151, help="App port (default: %(default)s)")
    return parser


def _body(args) -> int:
    paths = load_section(ProjectPaths, "paths", args.params)
    params = load_section(AttributesParams, "attributes", args.params)
    if args.target_csv is not None:  # checked like attributes.export_csv, before anything is read
        try:
            check_output_path(args.target_csv, path_rules(load_params(args.params), args.params))
        except ValueError as exc:
            raise ParamsError(f"attributes --to: {exc}") from None
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
        source_csv = args.source_csv or paths.attributes
        table = read_table(source_csv) if Path(source_csv).is_file() or not annotate else empty_table()
        images = find_images(table["image_id"], manifest=paths.prepared, source=params.source, splits=params.splits,
                             include_splits=annotate, image_dir=params.image_dir)
        if annotate:
            table = _add_face_boxes(table, images, params, progress=not args.quiet)
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


def _add_face_boxes(table: pd.DataFrame, images: Mapping[str, Path], params: AttributesParams,
                    progress: bool) -> pd.DataFrame:
    with_box = set(table.loc[table["face_x"].notna(), "image_id"])
    todo = {k: p for k, p in images.items() if k not in with_box}
    if not todo:
        return table
    from pipeline.detectors import build_detector

    detector = build_detector("mtcnn", detect_size=tuple(params.detector_size))
    skipped: list[str] = []
    faces = detect_face_boxes(todo, detector, params.min_face_confidence, notes=skipped, progress=progress)
    table, notes = assign_faces(table, faces)
    for note in skipped + notes:
        print(f"note: {note}")
    return table


def main(argv=None) -> int:
    return run_main(_body, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
