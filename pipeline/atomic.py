"""Atomic writes: a crash leaves either the old output or the new one, never half of one.

Every stage writes through these helpers. Files go to a temporary sibling and are
renamed into place; directories are built under a temporary sibling and swapped in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from pipeline.errors import StageError

# Every folder atomic_dir writes holds this file; a folder without it was not made by a
# stage, so it is never replaced (a mistyped output path must not swap away /etc).
OWNER_MARKER = ".portrait-curation-output"
_MARKER_TEXT = "written by a portrait-curation stage: the stage replaces this folder as a whole\n"


class ForeignOutputError(StageError):
    """An output folder that a stage did not create: refused instead of replaced."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_like_plain(path: Path, base_mode: int) -> None:
    # mkstemp/mkdtemp create 0600/0700; an output must get the mode open()/mkdir() would
    # give it, or teammates on a shared machine cannot read the dataset.
    os.chmod(path, base_mode & ~_umask())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; rename it onto ``target`` on success.

    On an exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    if target.is_dir():
        raise ForeignOutputError(f"{target}: is a folder; an output file cannot replace it (check the path)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    chmod_like_plain(tmp_path, 0o666)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj, indent: int = 2) -> None:
    write_text(target, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    # numpy scalars and paths turn up in metrics; write them as plain JSON values.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_csv(target: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def check_replaceable(target: str | os.PathLike) -> None:
    """Raise ForeignOutputError unless ``target`` is absent, an empty folder or a stage's own output."""
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ForeignOutputError(f"{target}: exists and is not a folder a stage wrote; refusing to replace it "
                                 "(choose another output path or remove it yourself)")
    if target.is_dir() and any(target.iterdir()) and not (target / OWNER_MARKER).is_file():
        raise ForeignOutputError(f"{target}: this folder was not written by a portrait-curation stage (no "
                                 f"{OWNER_MARKER}); refusing to replace it. Choose another output path, or "
                                 "remove the folder yourself if it really is an old output")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory; swap it in as ``target`` on success.

    The old ``target`` (if any) stays in place until the new one is complete, so an
    interrupted stage never leaves a half-written dataset where the old one was. Only a
    folder a stage wrote (it holds ``OWNER_MARKER``) or an empty one is ever replaced;
    anything else is refused before any work starts.
    """
    target = Path(target)
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    chmod_like_plain(tmp, 0o777)
    try:
        yield tmp
        (tmp / OWNER_MARKER).write_text(_MARKER_TEXT)
        check_replaceable(target)  # it may have appeared while the stage ran
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete leftovers of interrupted atomic writes (``.name.*.tmp``) in ``directory``."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
