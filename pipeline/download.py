"""Stage ``download``: fetch each dataset source, verify its sha256, extract it safely.

A source is an http(s) URL, a ``file://`` URL or a local path, pointing at an archive
(zip, tar, tar.gz, ...), a single file, or a directory (an offline mirror such as
``../shared/datasets``). Archives are cached under ``data/.cache/downloads`` (outside
the stage's DVC output, so an interrupted download resumes from its ``.part`` file),
checked against the pinned sha256, and extracted with every member's path checked:
a member that would land outside the target (zip-slip / tar-slip, absolute paths,
links) refuses the whole archive. Directories are copied and hashed as a tree.

Each source lands atomically in ``data/raw/<name>/``; ``data/raw/SOURCES.json``
records where each came from and its hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from pydantic import Field, field_validator
from tqdm import tqdm

from pipeline.atomic import atomic_dir, write_json
from pipeline.hashing import sha256_file
from pipeline.params import Section, load_section
from pipeline.stage import StageError, make_parser, run_main

CHUNK = 1 << 20


class SourceParams(Section):
    url: str = Field(description="upstream location: http(s) URL, file:// URL or local path")
    sha256: str | None = Field(None, description="sha256 of the file (or tree hash of a directory); null = not pinned")
    subdir: str | None = Field(None, description="folder inside the archive/directory that holds the dataset")
    mirror: str | None = Field(None, description="path of this source under download.mirror")
    mirror_sha256: str | None = None

    @field_validator("sha256", "mirror_sha256")
    @classmethod
    def _hex64(cls, value):
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower())):
            raise ValueError("must be 64 hexadecimal characters (a sha256) or null")
        return None if value is None else value.lower()


class DownloadParams(Section):
    mirror: str | None = Field(None, description="offline mirror root; when set, sources are read from there")
    sources: dict[str, SourceParams]
    out_dir: str = "data/raw"
    cache_dir: str = "data/.cache/downloads"

    @field_validator("sources")
    @classmethod
    def _names(cls, value):
        if not value:
            raise ValueError("at least one source is needed")
        for name in value:
            if not name or any(c in name for c in "/\\") or name.startswith("."):
                raise ValueError(f"source name {name!r} must be a plain folder name")
        return value


class ChecksumError(StageError):
    pass


class UnsafeArchiveError(StageError):
    pass


# ---------------------------------------------------------------- hashing

def tree_files(root: Path) -> list[Path]:
    """Regular files under ``root`` in a stable order (symlinks and special files refused)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
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
    path = Path(location).expanduser()
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


def safe_extract(archive: Path, target: Path) -> None:
    """Extract ``archive`` into the empty folder ``target``, checking every member first."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                check_member_path(info.filename, archive.name)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a symbolic link; archive refused")
            for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", leave=False):
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
    raise StageError(f"{archive}: not a zip or tar archive")


# ---------------------------------------------------------------- one source

@dataclass
class FetchResult:
    name: str
    location: str
    kind: str  # directory | archive | file
    sha256: str
    pinned: bool
    files: int


def copy_tree(src: Path, dst: Path, files: list[Path], progress: bool = True) -> None:
    for path in tqdm(files, desc=f"copy {src.name}", unit="file", disable=not progress, leave=False):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)


def fetch_source(name: str, location: str, expected: str | None, subdir: str | None, out_dir: Path,
                 cache_dir: Path, base: Path, progress: bool = True) -> FetchResult:
    """Bring one source into ``out_dir/name`` atomically; verify ``expected`` when pinned."""
    local = local_path(location, base)
    target = out_dir / name
    if local is not None and local.is_dir():
        files = tree_files(local)
        if not files:
            raise StageError(f"source {name}: {local} is an empty directory")
        digest = tree_sha256(local, files)
        _verify(name, location, digest, expected)
        with atomic_dir(target) as tmp:
            copy_tree(local, tmp / "_all", files, progress)
            inner = tmp / "_all" / subdir if subdir else tmp / "_all"
            if not inner.is_dir():
                raise StageError(f"source {name}: no folder {subdir!r} inside {local}")
            for entry in inner.iterdir():
                os.replace(entry, tmp / entry.name)
            shutil.rmtree(tmp / "_all")
        return FetchResult(name, location, "directory", digest, expected is not None, len(files))

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
    with atomic_dir(target) as tmp:
        if is_archive(file_path):
            staging = tmp / "_extract"
            staging.mkdir()
            safe_extract(file_path, staging)
            inner = staging / subdir if subdir else _single_top_folder(staging)
            if not inner.is_dir():
                raise StageError(f"source {name}: no folder {subdir!r} inside {file_path.name}")
            for entry in list(inner.iterdir()):
                os.replace(entry, tmp / entry.name)
            shutil.rmtree(staging)
            kind = "archive"
        else:
            shutil.copy2(file_path, tmp / file_path.name)
            kind = "file"
        count = sum(1 for p in tmp.rglob("*") if p.is_file())
    return FetchResult(name, location, kind, digest, expected is not None, count)


def _single_top_folder(folder: Path) -> Path:
    entries = list(folder.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def _verify(name: str, location: str, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise ChecksumError(f"source {name}: sha256 mismatch for {location}: expected {expected}, got {digest}. "
                            "The file changed upstream or the download is corrupt; nothing was written.")


def resolve_location(params: DownloadParams, name: str, base: Path) -> tuple[str, str | None]:
    source = params.sources[name]
    if params.mirror and source.mirror:
        mirror_root = local_path(params.mirror, base)
        return str((mirror_root / source.mirror).resolve()), source.mirror_sha256
    return source.url, source.sha256


def run(params: DownloadParams, base: Path, progress: bool = True) -> list[FetchResult]:
    out_dir = base / params.out_dir
    cache_dir = base / params.cache_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, source in params.sources.items():
        location, expected = resolve_location(params, name, base)
        subdir = None if (params.mirror and source.mirror) else source.subdir
        result = fetch_source(name, location, expected, subdir, out_dir, cache_dir, base, progress)
        results.append(result)
    write_json(out_dir / "SOURCES.json", {r.name: {"location": r.location, "kind": r.kind, "sha256": r.sha256,
                                                   "pinned": r.pinned, "files": r.files} for r in results})
    return results


def main(argv=None) -> int:
    parser = make_parser("download", __doc__)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")

    def body(args):
        params = load_section(DownloadParams, "download", args.params)
        results = run(params, Path.cwd(), progress=not args.quiet)
        for r in results:
            pin = "verified" if r.pinned else "NOT PINNED (add this sha256 to params.yaml)"
            print(f"{r.name:10s} {r.kind:9s} {r.files:6d} files  sha256 {r.sha256}  {pin}  <- {r.location}")
        return 0

    return run_main(body, parser, argv)
