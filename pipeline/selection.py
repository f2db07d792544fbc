"""Choosing rows of canonical datasets: which manifest, which splits and sources, no leaks.

The teacher's training and validation data and the pseudo-label stage's validation data are
lists of ``DataSource`` entries; every stage selects them the same way, so a typo in a source
name is the same clear error everywhere and validation rows never leak into training.
"""

from __future__ import annotations

import os
from typing import Literal, Sequence

import pandas as pd
from pydantic import Field, field_validator

from pipeline.data import readable_rows
from pipeline.errors import StageError
from pipeline.manifest import read_manifest
from pipeline.params import Section
from pipeline.paths import ProjectPaths, shown_path


SplitName = Literal["train", "val", "test", "unlabelled"]  # manifest.SPLITS
DatasetName = Literal["prepared", "crops", "pseudo", "train_set"]  # paths.CANONICAL_DATASETS


class DataSource(Section):
    """Rows of one canonical dataset (a key of ``paths``): its manifest filtered by split and source.

    A source name the manifest does not hold, or an entry that selects no labelled row, is
    an error (a typo must not train on less data); ``optional: true`` turns a missing
    manifest or an empty selection into a note instead. A per-item record: ``splits``,
    ``sources`` and ``optional`` keep defaults for what an entry need not say.
    """

    dataset: DatasetName
    splits: list[SplitName] = Field(["train"], min_length=1)
    sources: list[str] | None = Field(None, min_length=1)  # null: every source in the manifest
    optional: bool = False

    @field_validator("splits", "sources")
    @classmethod
    def _no_repeats(cls, names: list[str] | None) -> list[str] | None:
        repeated = sorted({n for n in names or [] if names.count(n) > 1})
        if repeated:
            raise ValueError(f"named more than once: {', '.join(repeated)}")
        return names


def gather_rows(sources: list[DataSource], paths: ProjectPaths, notes: list[str], where: str = "data",
                project: str | os.PathLike = ".") -> pd.DataFrame:
    """Labelled manifest rows of every source, with a ``_root`` column saying where they live.

    ``where`` names the param list in errors and notes (``teacher.train_data``).
    """
    frames = []
    for position, source in enumerate(sources):
        root = paths.dataset(source.dataset)
        name = f"{where}.{position} ({shown_path(root, project)})"
        try:
            frame = read_manifest(root)
        except FileNotFoundError:
            if source.optional:
                notes.append(f"optional {name}: no manifest, skipped")
                continue
            raise StageError(f"{name}: no {root / 'manifest.csv'} (has the stage that writes it run?)") from None
        except ValueError as exc:
            raise StageError(str(exc)) from None
        if source.sources is not None:
            unknown = sorted(set(source.sources) - set(frame["source"]))
            if unknown:
                raise StageError(f"{name}: source(s) {', '.join(unknown)} not in its manifest (it holds "
                                 f"{', '.join(sorted(set(frame['source']))) or 'no rows'})")
        frame = select(frame, source.splits, source.sources)
        frame = frame[frame["mask"] != ""].copy()
        if frame.empty:
            message = (f"{name}: no labelled rows with split in {source.splits}"
                       + ("" if source.sources is None else f" and source in {source.sources}"))
            if source.optional:
                notes.append(f"optional {message}: skipped")
                continue
            raise StageError(message)
        frame["_root"] = str(root)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["id", "origin", "mask", "_root"])
    return pd.concat(frames, ignore_index=True)


def keep_readable(frame: pd.DataFrame, skipped: list[dict], project: str | os.PathLike = ".") -> pd.DataFrame:
    """Drop rows whose files do not decode, recording ``{"id", "root", "reason"}`` for each."""
    parts = []
    for root, rows in frame.groupby("_root", sort=True):
        kept, bad = readable_rows(root, rows)
        skipped += [{"id": b["id"], "root": shown_path(root, project), "reason": b["reason"]} for b in bad]
        parts.append(kept)
    return pd.concat(parts) if parts else frame


def drop_leaks(train: pd.DataFrame, val: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Remove training rows that are validation samples or derived from one (crops)."""
    val_ids = set(val["id"])
    leak = train["id"].isin(val_ids) | train["origin"].isin(val_ids)
    return train[~leak], int(leak.sum())


def subsample(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    if limit is None or len(frame) <= limit:
        return frame
    return frame.sample(n=limit, random_state=seed).sort_index()


def select(frame: pd.DataFrame, splits: Sequence[str] | None = None, sources: Sequence[str] | None = None) -> pd.DataFrame:
    if splits is not None:
        frame = frame[frame["split"].isin(list(splits))]
    if sources is not None:
        frame = frame[frame["source"].isin(list(sources))]
    return frame
