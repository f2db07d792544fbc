"""Paths as outputs record them: the same text on every checkout of the project.

Manifests point at files of other stages' folders by relative paths, and metrics name
inputs; neither may carry this machine's absolute folders, so a checkout elsewhere gives
byte-identical text outputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from pipeline.params import InputPath, OutputPath, Section


def shown_path(path: str | os.PathLike, project: str | os.PathLike) -> str:
    """A path as text outputs show it: the same on every checkout of the project.

    Inside the project: relative to it. Outside, written relatively (``../shared/...``): as
    written. Outside and absolute: only its name, the folder being this machine's own.
    """
    project = Path(os.path.abspath(project))
    target = Path(os.path.abspath(path))
    if target == project or project in target.parents:
        return target.relative_to(project).as_posix() or "."
    if not Path(path).is_absolute():
        return Path(os.path.relpath(target, project)).as_posix()
    return target.name


def is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def lies_within(inner: str | os.PathLike, outer: str | os.PathLike) -> bool:
    """Whether ``inner`` is ``outer`` or below it, as absolute paths (``~`` expanded): a stage
    that replaces ``outer`` as a whole would replace ``inner`` with it."""
    def absolute(path) -> str:
        return os.path.abspath(os.path.expanduser(os.fspath(path)))

    return is_within(absolute(inner), absolute(outer))


def portable_relpath(target: str | os.PathLike, folder: str | os.PathLike, anchors: Sequence[str | os.PathLike]
                     ) -> str:
    """``target`` relative to ``folder``, as a manifest stores it: the same bytes on every checkout.

    Lexical (a symlinked data folder stays where it is named). Both must lie in the same
    anchor (the project, or one folder of ``allow_outside_project``): a path climbing out
    of it would depend on where this machine keeps the checkout. Raises ValueError.
    """
    target, folder = os.path.abspath(target), os.path.abspath(folder)
    for anchor in (os.path.abspath(a) for a in anchors):
        if is_within(folder, anchor):
            if not is_within(target, anchor):
                raise ValueError(f"{target} is outside {anchor}, which holds {folder}: a relative path from one "
                                 "to the other would differ between checkouts")
            return Path(os.path.relpath(target, folder)).as_posix()
    raise ValueError(f"{folder} is outside the project ({os.path.abspath(anchors[0])})")


# ---------------------------------------------------------------- where every stage reads and writes


class ProjectPaths(Section):
    """The ``paths`` section: every folder and file the DVC stages pass between them, once.

    ``dvc.yaml`` names them as ``${paths.<key>}`` and the stages read them from here, so a
    path is written in one place. Names of files inside these folders are conventions of
    the methods below (``dvc.yaml`` spells the same ones).
    """

    raw: OutputPath  # download -> prepare: each source's files as published
    download_cache: OutputPath  # archives being fetched (resumable), outside the DVC output
    prepared: OutputPath  # the canonical dataset
    crops: OutputPath  # face-detected portrait crops (canonical)
    crops_report: OutputPath  # calibration of the crops against EG1800
    teacher: OutputPath  # the trained DeepLabv3+ teacher (a file)
    teacher_resume: OutputPath  # its resumable checkpoints (DVC persist)
    pseudo: OutputPath  # pseudo-labelled pool (canonical + scores.csv)
    quality: OutputPath  # score_pool: calibrated P(good) per pool mask, the auto-accept journal (auto.jsonl)
    journal: OutputPath  # review journals, one <reviewer>.jsonl each (committed with git)
    decisions: OutputPath  # review decisions that still apply (a file)
    train_set: OutputPath  # the assembled training manifest
    models: OutputPath  # models/<arch>/{model.pt, checkpoints/, per_image.csv}
    metrics: OutputPath  # metrics/<stage>.json and metrics/{train,eval,bias}/<arch>.json
    plots: OutputPath  # plots/train/<arch>.csv
    reports: OutputPath  # reports/compare/, reports/bias/<arch>/
    attributes: InputPath  # race/gender/age of the test portraits (a CSV, may be outside)

    def dataset(self, name: str) -> Path:
        """The folder of a canonical dataset named in params (``prepared``, ``crops``, ...)."""
        if name not in CANONICAL_DATASETS:
            raise ValueError(f"unknown dataset {name!r}; one of {', '.join(CANONICAL_DATASETS)}")
        return Path(getattr(self, name))

    def metrics_file(self, *parts: str) -> Path:
        return Path(self.metrics).joinpath(*parts)

    def model_dir(self, arch: str) -> Path:
        return Path(self.models) / arch


# Canonical datasets a params entry may select rows from (``dataset: prepared``).
CANONICAL_DATASETS = ("prepared", "crops", "pseudo", "train_set")
