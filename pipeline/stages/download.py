"""Stage ``download``: fetch each dataset source, verify its sha256, extract it safely.

Reads the ``download`` section (the sources, the offline mirror); writes ``paths.raw``
(``<source>/`` as published, plus ``SOURCES.json``) and caches archives in
``paths.download_cache``.

A source is an http(s) URL, a ``file://`` URL or a local path, pointing at an archive
(zip, tar, tar.gz, ...), a single file, or a directory (an offline mirror such as
``../shared/datasets``). Archives are cached in ``paths.download_cache`` (outside
the stage's DVC output, so an interrupted download resumes from its ``.part`` file),
checked against the pinned sha256, and extracted with every member's path checked:
a member that would land outside the target (zip-slip / tar-slip, absolute paths,
links) refuses the whole archive. Directories are copied and hashed as a tree.

All sources are built together in one temporary folder that replaces ``paths.raw`` as a
whole, so a failing source leaves every earlier source and ``SOURCES.json`` as they
were. ``SOURCES.json`` records each source as the params name it (URL, or mirror root
plus the path inside it), never as a resolved path, so it is the same in every checkout.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from pydantic import Field, field_validator
from tqdm import tqdm

from pipeline.atomic import atomic_dir, chmod_like_plain, write_json
from pipeline.hashing import sha256_file
from pipeline.params import InputPath, ParamsError, Section, SubPath, check_sub_path, load_section
from pipeline.paths import ProjectPaths
from pipeline.stage import StageError, make_parser, run_main

CHUNK = 1 << 20


SOURCES_FILE = "SOURCES.json"


class SourceParams(Section):
    """One source (an entry of ``download.sources``).

    A per-item record: only ``url`` is required; ``sha256``, ``subdir``, ``mirror`` and
    ``mirror_sha256`` are optional per source and default to null (not pinned, the whole
    archive or folder, not mirrored).
    """

    url: str = Field(min_length=1, description="upstream location: http(s) URL, file:// URL or local path")
    sha256: str | None = Field(None, description="sha256 of the file (or tree hash of a directory); null = not pinned")
    subdir: SubPath | None = Field(None, description="folder inside the archive/directory that holds the dataset")
    mirror: SubPath | None = Field(None, description="path of this source under download.mirror")
    mirror_sha256: str | None = None

    @field_validator("url")
    @classmethod
    def _not_blank(cls, value):
        if not value.strip():
            raise ValueError("must be a URL or a path, not blank")
        return value

    @field_validator("sha256", "mirror_sha256")
    @classmethod
    def _hex64(cls, value):
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower())):
            raise ValueError("must be 64 hexadecimal characters (a sha256) or null")
        return None if value is None else value.lower()


class DownloadParams(Section):
    mirror: InputPath | None = Field(description="offline mirror root; when set, sources are read from there")
    sources: dict[str, SourceParams]

    @field_validator("sources")
    @classmethod
    def _names(cls, value):
        if not value:
            raise ValueError("at least one source is needed")
        for name in value:
            if (not name or any(c in name for c in "/\\:") or name.startswith(".") or name == SOURCES_FILE
                    or any(ord(c) < 32 for c in name)):
                raise ValueError(f"source name {name!r} must be a plain folder name (not {SOURCES_FILE!r})")
        return value


def check_paths(paths: ProjectPaths, source: str | os.PathLike = "params.yaml") -> None:
    """Refuse a download cache inside ``paths.raw`` (or around it).

    ``paths.raw`` is replaced as a whole: a cache inside it would be wiped (and shipped as data).
    """
    out, cache = (Path(os.path.normpath(p)) for p in (paths.raw, paths.download_cache))
    if out == cache or out in cache.parents or cache in out.parents:
        raise ParamsError(f"{source}: paths.download_cache {paths.download_cache!r} and paths.raw {paths.raw!r} "
                          "must not contain each other (paths.raw is replaced as a whole on every run)")


class ChecksumError(StageError):
    pass


class UnsafeArchiveError(StageError):
    pass


class CorruptArchiveError(StageError):
    pass


# ---------------------------------------------------------------- hashing

def tree_files(root: Path) -> list[Path]:
    """Regular files under ``root`` in a stable order (symlinks and special files refused)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in dirnames:
            if (Path(dirpath) / name).is_symlink():
                raise UnsafeArchiveError(f"{Path(dirpath) / name}: symbolic links are not copied from a source "
                                         "directory")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"{path}: symbolic links are not copied from a source directory")
            if stat.S_ISREG(mode):
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def tree_sha256(root: Path, files: Iterable[Path] | None = None) -> str:
    """Hash of a directory: sha256 over each file's relative path and content hash."""
    digest = hashlib.sha256()
    for path in (tree_files(root) if files is None else files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------- locations

def local_path(location: str, base: Path) -> Path | None:
    """The local path a location names, or None for a network URL."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme in ("http", "https", "ftp"):
        return None
    if parsed.scheme and len(parsed.scheme) > 1:
        raise StageError(f"unsupported URL scheme {parsed.scheme!r} in {location!r}")
    try:
        path = Path(location).expanduser()
    except RuntimeError as exc:  # "~nobody/x"
        raise StageError(f"cannot read location {location!r}: {exc}") from None
    return path if path.is_absolute() else base / path


def fetch_to_cache(url: str, dest: Path, progress: bool = True, opener: Callable = urllib.request.urlopen) -> Path:
    """Download ``url`` to ``dest``, resuming from ``dest.part`` when the server allows it."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "portrait-curation"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = opener(request, timeout=60)
    except Exception as exc:
        raise StageError(f"cannot fetch {url}: {exc} (partial download kept in {part})") from None
    with response:
        status = getattr(response, "status", 200)
        if have and status != 206:
            have = 0  # the server ignored the Range header: start again
        total = response.headers.get("Content-Length")
        total = int(total) + have if total and total.isdigit() else None
        mode = "ab" if have else "wb"
        with open(part, mode) as fh, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                           desc=f"download {dest.name}", disable=not progress) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except Exception as exc:
                    raise StageError(f"download of {url} interrupted: {exc}; run again to resume") from None
                if not block:
                    break
                fh.write(block)
                bar.update(len(block))
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------- archives

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(ARCHIVE_SUFFIXES) or zipfile.is_zipfile(path) or _is_tar(path)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def check_member_path(name: str, archive: str) -> PurePosixPath:
    """Refuse a member path that is absolute or climbs out of the extraction folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; archive refused")
    if ".." in posix.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the target folder; archive refused")
    return posix


# What a damaged archive raises while it is read (bad CRC, truncated stream, broken headers).
CORRUPT_ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.ReadError, tarfile.CompressionError,
                          gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError, NotImplementedError)


def safe_extract(archive: Path, target: Path, progress: bool = True) -> None:
    """Extract ``archive`` into the empty folder ``target``, checking every member first.

    A damaged archive raises CorruptArchiveError (one line naming the file), not the
    zipfile/tarfile/gzip exception it came from.
    """
    try:
        _extract_checked(archive, target, progress)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"{archive.name}: {exc}; archive refused") from None
    except CORRUPT_ARCHIVE_ERRORS as exc:
        raise CorruptArchiveError(f"{archive.name}: corrupt or truncated archive "
                                  f"({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        if exc.errno is None:  # bz2 "Invalid data stream" and the like: the archive, not the disk
            raise CorruptArchiveError(f"{archive.name}: corrupt or truncated archive ({exc})") from None
        raise StageError(f"{archive.name}: cannot extract into {target}: {exc}") from None  # disk full, permissions


def _extract_checked(archive: Path, target: Path, progress: bool) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                check_member_path(info.filename, archive.name)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a symbolic link; "
                                             "archive refused")
            for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", leave=False,
                             disable=not progress):
                zf.extract(info, target)
        return
    if _is_tar(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                check_member_path(member.name, archive.name)
                if member.issym() or member.islnk():
                    raise UnsafeArchiveError(f"{archive.name}: member {member.name!r} is a link; archive refused")
                if not (member.isfile() or member.isdir()):
                    raise UnsafeArchiveError(f"{archive.name}: member {member.name!r} is a device or special file; "
                                             "archive refused")
            tf.extractall(target, members=members, filter="data")
        return
    raise CorruptArchiveError(f"{archive.name}: named like an archive but not a readable zip or tar archive")


# ---------------------------------------------------------------- one source

@dataclass
class FetchResult:
    name: str
    location: str  # as the params name it: the URL / path, or the path under ``mirror``
    kind: str  # directory | archive | file
    sha256: str
    pinned: bool
    files: int
    mirror: str | None = None  # the mirror root as the params name it, when read from the mirror

    def record(self) -> dict:
        """This source's entry in SOURCES.json: only values from the params and the data."""
        entry = {"location": self.location}
        if self.mirror is not None:
            entry["mirror"] = self.mirror
        return {**entry, "kind": self.kind, "sha256": self.sha256, "pinned": self.pinned, "files": self.files}


def copy_tree(src: Path, dst: Path, files: list[Path], progress: bool = True) -> None:
    for path in tqdm(files, desc=f"copy {src.name}", unit="file", disable=not progress, leave=False):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)


def _sub_parts(name: str, subdir: str | None, key: str = "subdir") -> tuple[str, ...]:
    """The parts of ``subdir`` (None: the root itself); absolute or climbing values refused."""
    if subdir is None:
        return ()
    try:
        check_sub_path(subdir)
    except ValueError as exc:
        raise StageError(f"source {name}: {key} {exc}") from None
    normal = os.path.normpath(subdir.replace("\\", "/"))  # "a/./b/" -> "a/b"; never climbs (checked above)
    return tuple(part for part in PurePosixPath(normal).parts if part != ".")


def inner_folder(name: str, root: Path, subdir: str | None, what: str) -> Path:
    """``root/subdir``, refused unless it is a real folder inside ``root`` (after resolving links)."""
    parts = _sub_parts(name, subdir)
    inner = root.joinpath(*parts)
    real_root, real_inner = root.resolve(), inner.resolve()
    if real_inner != real_root and real_root not in real_inner.parents:
        raise StageError(f"source {name}: subdir {subdir!r} leads outside {what}; refused")
    if inner.is_symlink() or not inner.is_dir():
        raise StageError(f"source {name}: no folder {subdir!r} inside {what}")
    return inner


def fetch_source(name: str, location: str, expected: str | None, subdir: str | None, dest: Path,
                 cache_dir: Path, base: Path, progress: bool = True, label: str | None = None,
                 mirror: str | None = None) -> FetchResult:
    """Build source ``name`` as the new folder ``dest``; verify ``expected`` when pinned.

    ``dest`` must not exist; it is meant to sit inside a staging folder that the caller
    swaps in atomically (``run`` does). Nothing outside ``dest`` is moved or deleted,
    except this source's own corrupt download in ``cache_dir``. ``label`` is how the
    source is recorded (default: ``location``).
    """
    label = location if label is None else label
    if dest.exists():
        raise StageError(f"source {name}: {dest} already exists; fetch_source builds a new folder")
    local = local_path(location, base)
    if local is not None and local.is_dir():
        files = tree_files(local)
        if not files:
            raise StageError(f"source {name}: {local} is an empty directory")
        real_local, real_dest = local.resolve(), dest.parent.resolve()
        if real_dest == real_local or real_local in real_dest.parents:
            raise StageError(f"source {name}: {location!r} is a folder that holds the stage's own output; "
                             "name the dataset's folder instead")
        digest = tree_sha256(local, files)
        _verify(name, location, digest, expected)
        inner = inner_folder(name, local, subdir, str(local))
        parts = _sub_parts(name, subdir)
        chosen = [f for f in files if f.relative_to(local).parts[:len(parts)] == parts]
        if not chosen:
            raise StageError(f"source {name}: folder {subdir!r} inside {local} holds no files")
        dest.mkdir(parents=True)
        copy_tree(inner, dest, [inner.joinpath(*f.relative_to(local).parts[len(parts):]) for f in chosen], progress)
        return FetchResult(name, label, "directory", digest, expected is not None, len(chosen), mirror)

    if local is not None:
        if not local.is_file():
            raise StageError(f"source {name}: {local} does not exist")
        file_path = local
    else:
        file_name = Path(urllib.parse.urlparse(location).path).name or f"{name}.bin"
        key = (expected or hashlib.sha256(location.encode()).hexdigest())[:16]
        file_path = cache_dir / f"{name}-{key}-{file_name}"
        if not file_path.exists():
            fetch_to_cache(location, file_path, progress)
    digest = sha256_file(file_path)
    try:
        _verify(name, location, digest, expected)
    except ChecksumError:
        if local is None:
            file_path.unlink(missing_ok=True)  # a bad download must not be reused next time
        raise
    if not is_archive(file_path):
        if subdir is not None:
            raise StageError(f"source {name}: subdir {subdir!r} is set but {file_path.name} is a single file, "
                             "not an archive or a folder")
        dest.mkdir(parents=True)
        shutil.copy2(file_path, dest / file_path.name)
        return FetchResult(name, label, "file", digest, expected is not None, 1, mirror)

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extract", dir=dest.parent))
    chmod_like_plain(staging, 0o777)  # it may become dest itself
    try:
        try:
            safe_extract(file_path, staging, progress)
        except CorruptArchiveError as exc:
            if local is None:
                file_path.unlink(missing_ok=True)  # fetch it again next run
                exc = f"{exc}; the cached download was removed, run again to fetch it anew"
            raise CorruptArchiveError(f"source {name}: {exc}") from None
        except StageError as exc:
            raise type(exc)(f"source {name}: {exc}") from None
        if subdir is not None:
            inner = inner_folder(name, staging, subdir, file_path.name)
        else:
            inner = _single_top_folder(staging)
        os.replace(inner, dest)  # both inside the staging tree: nothing outside moves
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    count = sum(1 for p in dest.rglob("*") if p.is_file())
    return FetchResult(name, label, "archive", digest, expected is not None, count, mirror)


def _single_top_folder(folder: Path) -> Path:
    entries = list(folder.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink() else folder


def _verify(name: str, location: str, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise ChecksumError(f"source {name}: sha256 mismatch for {location}: expected {expected}, got {digest}. "
                            "The file changed upstream or the download is corrupt; nothing was written.")


@dataclass(frozen=True)
class Plan:
    """Where one source is read from, and how SOURCES.json names it."""

    location: str  # what fetch_source opens
    expected: str | None
    subdir: str | None
    label: str  # what the params say: the URL, or the path under the mirror
    mirror: str | None


def resolve_location(params: DownloadParams, name: str, base: Path) -> Plan:
    source = params.sources[name]
    if params.mirror and source.mirror:
        mirror_root = local_path(params.mirror, base)
        if mirror_root is None:
            raise StageError(f"download.mirror {params.mirror!r} must be a local folder (a path or file:// URL)")
        parts = _sub_parts(name, source.mirror, "mirror")  # refused here too when the section was built in code
        return Plan(str(mirror_root.joinpath(*parts)), source.mirror_sha256, None, source.mirror, params.mirror)
    return Plan(source.url, source.sha256, source.subdir, source.url, None)


def run(params: DownloadParams, out_dir: Path, cache_dir: Path, base: Path, progress: bool = True
        ) -> list[FetchResult]:
    """Fetch every source into one new ``out_dir``: all of it replaces the old one, or none.

    Relative source locations and the mirror are read relative to ``base`` (the project).
    """
    results = []
    with atomic_dir(out_dir) as staging:
        for name in params.sources:
            plan = resolve_location(params, name, base)
            results.append(fetch_source(name, plan.location, plan.expected, plan.subdir, staging / name, cache_dir,
                                        base, progress, label=plan.label, mirror=plan.mirror))
        write_json(staging / SOURCES_FILE, {r.name: r.record() for r in results})
    return results


def main(argv=None) -> int:
    parser = make_parser("download", __doc__)

    def body(args):
        params = load_section(DownloadParams, "download", args.params)
        paths = load_section(ProjectPaths, "paths", args.params)
        check_paths(paths, args.params)
        base = Path.cwd()
        results = run(params, base / paths.raw, base / paths.download_cache, base, progress=not args.quiet)
        for r in results:
            pin = "verified" if r.pinned else "NOT PINNED (add this sha256 to params.yaml)"
            where = f"{r.mirror}: {r.location}" if r.mirror is not None else r.location
            print(f"{r.name:10s} {r.kind:9s} {r.files:6d} files  sha256 {r.sha256}  {pin}  <- {where}")
        return 0

    return run_main(body, parser, argv)
