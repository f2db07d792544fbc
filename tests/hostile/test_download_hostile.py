"""Hostile input for the ``download`` stage (issue "Hostile input", defects 1, 3 and 5).

Each case runs the stage as a user would (``main`` on a params file in a project folder)
next to a sentinel folder outside the project that must stay byte-identical: a source
path can never leave its root, all of ``data/raw`` is replaced or none of it, a corrupt
archive is one clear line, and SOURCES.json is the same in every checkout.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from pipeline.stages.download import DownloadParams, check_paths, fetch_source, inner_folder, main, tree_sha256
from pipeline.errors import StageError
from pipeline.params import ParamsError, parse_section
from pipeline.paths import ProjectPaths
from params_helpers import quick_params


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def _zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    """A fixed member date, so two archives built seconds apart are the same bytes (zip stores the clock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compress_type=compression)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """(project, sentinel): a project folder (the cwd) and a precious folder beside it."""
    proj, sentinel = tmp_path / "proj", tmp_path / "outside" / "sentinel"
    (sentinel / "deep").mkdir(parents=True)
    (sentinel / "precious.txt").write_text("do not touch")
    (sentinel / "deep" / "more.bin").write_bytes(bytes(range(256)))
    proj.mkdir()
    monkeypatch.chdir(proj)
    return proj, sentinel


def _profile(download: dict, paths: dict | None = None) -> dict:
    """The quick profile with this ``download`` section (mirror null unless given) and ``paths`` changes."""
    params = quick_params()
    params["download"] = {"mirror": None, **download}
    params["paths"].update(paths or {})
    return params


def _download(proj: Path, section: dict, capsys, paths: dict | None = None) -> tuple[int, str]:
    (proj / "params.yaml").write_text(yaml.safe_dump(_profile(section, paths)))
    code = main(["--quiet", "--params", "params.yaml"])
    return code, capsys.readouterr().err


def _one_clear_line(err: str) -> str:
    """The stage's one error message (a params error may list its keys on indented lines below)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "Traceback" not in err, err
    assert lines[0].startswith("portrait-curation download: error:"), err
    assert all(line.startswith("  ") for line in lines[1:]), err
    return "\n".join(lines)


def _source(proj: Path, kind: str) -> dict:
    """An archive or a directory source (inside the project) holding ``repo/data/x.txt``."""
    if kind == "archive":
        archive = _zip(proj / "incoming" / "ds.zip", {"repo/data/x.txt": b"x", "repo/README": b"r"})
        return {"url": "incoming/ds.zip", "sha256": _sha(archive)}
    folder = proj / "incoming" / "ds"
    (folder / "repo" / "data").mkdir(parents=True)
    (folder / "repo" / "data" / "x.txt").write_text("x")
    return {"url": "incoming/ds", "sha256": tree_sha256(folder)}


# ------------------------------------------------------------ defect 1: subdir / mirror


@pytest.mark.parametrize("kind", ["archive", "directory"])
@pytest.mark.parametrize("how", ["absolute", "climbing"])
def test_subdir_outside_the_source_is_refused_and_the_sentinel_untouched(project, kind, how, capsys):
    proj, sentinel = project
    before = _snapshot(sentinel)
    # climbing: enough '..' to reach the sentinel from any staging folder the stage might use
    subdir = str(sentinel) if how == "absolute" else "../" * 40 + os.path.relpath(sentinel, "/")
    code, err = _download(proj, {"sources": {"ds": {**_source(proj, kind), "subdir": subdir}}}, capsys)
    assert code == 2
    assert "download.sources.ds.subdir" in _one_clear_line(err)
    assert _snapshot(sentinel) == before
    # and a later run with the right subdir deletes nothing outside either
    code, _ = _download(proj, {"sources": {"ds": {**_source_again(proj, kind), "subdir": "repo/data"}}}, capsys)
    assert code == 0 and (proj / "data/raw/ds/x.txt").read_text() == "x"
    assert _snapshot(sentinel) == before


def _source_again(proj: Path, kind: str) -> dict:
    path = proj / "incoming" / ("ds.zip" if kind == "archive" else "ds")
    return {"url": f"incoming/{path.name}", "sha256": _sha(path) if kind == "archive" else tree_sha256(path)}


@pytest.mark.parametrize("value", ["/etc", "../../x", "a/../../b"])
def test_mirror_path_of_a_source_cannot_leave_the_mirror(value):
    raw = _profile({"mirror": "../shared/datasets", "sources": {"ds": {"url": "x", "mirror": value}}})
    with pytest.raises(ParamsError, match=r"download\.sources\.ds\.mirror"):
        parse_section(DownloadParams, raw, "download")


def test_the_mirror_root_may_be_outside_the_project_but_outputs_may_not(project, capsys):
    proj, sentinel = project
    before = _snapshot(sentinel.parent)
    ok = parse_section(DownloadParams, _profile({"mirror": "../shared/datasets", "sources": {"ds": {"url": "x"}}}),
                       "download", "params.yaml")
    assert ok.mirror == "../shared/datasets"
    for key in ("raw", "download_cache"):  # where download writes: paths, no longer keys of its section
        for value in (str(sentinel / "x"), "../outside/sentinel/x"):
            raw = _profile({"sources": {"ds": {"url": "x"}}}, {key: value})
            with pytest.raises(ParamsError, match=rf"paths\.{key}.*outside the project"):
                parse_section(ProjectPaths, raw, "paths", "params.yaml")
            code, err = _download(proj, {"sources": {"ds": _source_again_or_new(proj)}}, capsys, {key: value})
            assert code == 2 and f"paths.{key}" in _one_clear_line(err)
    assert _snapshot(sentinel.parent) == before


def _source_again_or_new(proj: Path) -> dict:
    return _source_again(proj, "directory") if (proj / "incoming" / "ds").is_dir() else _source(proj, "directory")


@pytest.mark.parametrize("kind", ["archive", "directory"])
def test_the_code_itself_refuses_a_subdir_outside_even_when_params_were_not_checked(project, kind):
    """Defence in depth: fetch_source called directly (a section built in code) with hostile subdirs."""
    proj, sentinel = project
    before = _snapshot(sentinel)
    spec = _source(proj, kind)
    location = str(proj / spec["url"])
    rel = os.path.relpath(sentinel, "/")
    hostile = [str(sentinel), "../" * 40 + rel, "../../outside/sentinel", "repo/../../..", "~/x"]
    for subdir in hostile:
        dest = proj / "stage" / "ds"
        with pytest.raises(StageError, match="subdir"):
            fetch_source("ds", location, spec["sha256"], subdir, dest, proj / "cache", proj, progress=False)
        assert not dest.exists()
        assert _snapshot(sentinel) == before


def test_a_subdir_through_a_symlink_is_refused(project):
    proj, sentinel = project
    root = proj / "tree"
    root.mkdir()
    (root / "link").symlink_to(sentinel, target_is_directory=True)
    with pytest.raises(StageError, match="leads outside"):
        inner_folder("ds", root, "link", "tree")
    with pytest.raises(StageError, match="symbolic link"):  # a directory source never follows one either
        fetch_source("ds", str(root), None, None, proj / "stage" / "ds", proj / "cache", proj, progress=False)


def test_hostile_source_names_and_mirror_urls_are_refused(project, capsys):
    proj, _ = project
    for name in ("SOURCES.json", "..", ".hidden", "a/b", "c:x"):
        with pytest.raises(ParamsError, match="plain folder name"):
            parse_section(DownloadParams, _profile({"sources": {name: {"url": "x"}}}), "download")
    with pytest.raises(ParamsError, match=r"download\.sources\.ds\.url"):
        parse_section(DownloadParams, _profile({"sources": {"ds": {"url": "  "}}}), "download")
    code, err = _download(proj, {"mirror": "https://example.invalid/m", "sources": {"ds": {
        "url": "x", "mirror": "ds"}}}, capsys)
    assert code == 2 and "download.mirror" in _one_clear_line(err)


def test_a_source_folder_holding_the_output_or_a_subdir_on_a_file_is_refused(project, capsys):
    proj, _ = project
    (proj / "notes.txt").write_text("n")
    code, err = _download(proj, {"sources": {"ds": {"url": "."}}}, capsys)
    assert code == 2 and "holds the stage's own output" in _one_clear_line(err)
    code, err = _download(proj, {"sources": {"ds": {"url": "notes.txt", "subdir": "x"}}}, capsys)
    assert code == 2 and "single file" in _one_clear_line(err)
    assert not (proj / "data" / "raw").exists()


def test_cache_inside_the_output_is_refused(project, capsys):
    proj, _ = project
    for out_dir, cache_dir in (("data/raw", "data/raw/cache"), ("data", "data/.cache"), ("data/raw", "data/raw")):
        layout = {"raw": out_dir, "download_cache": cache_dir}
        paths = parse_section(ProjectPaths, _profile({"sources": {"ds": {"url": "x"}}}, layout), "paths")
        with pytest.raises(ParamsError, match="must not contain each other"):
            check_paths(paths)
        code, err = _download(proj, {"sources": {"ds": _source_again_or_new(proj)}}, capsys, layout)
        line = _one_clear_line(err)
        assert code == 2 and "paths.download_cache" in line and "must not contain each other" in line
        assert not (proj / out_dir).exists() or not any((proj / out_dir).iterdir())


def test_an_out_dir_the_stage_did_not_write_is_not_replaced(project, capsys):
    proj, _ = project
    (proj / "data" / "raw").mkdir(parents=True)
    (proj / "data" / "raw" / "mine.txt").write_text("a user's file")
    code, err = _download(proj, {"sources": {"ds": _source(proj, "directory")}}, capsys)
    assert code == 2 and "not written by a portrait-curation stage" in _one_clear_line(err)
    assert sorted(p.name for p in (proj / "data" / "raw").iterdir()) == ["mine.txt"]


# ------------------------------------------------------------ defect 3: all sources or none


def _mirror_project(proj: Path) -> dict:
    mirror = proj.parent / "mirror"
    for name in ("first", "second"):
        (mirror / name).mkdir(parents=True)
        (mirror / name / f"{name}.txt").write_text(f"{name} v1")
    return {"mirror": "../mirror", "sources": {
        name: {"url": f"https://example.invalid/{name}.zip", "mirror": name,
               "mirror_sha256": tree_sha256(mirror / name)} for name in ("first", "second")}}


def test_a_failing_second_source_leaves_the_first_and_sources_json_as_they_were(project, capsys):
    proj, _ = project
    section = _mirror_project(proj)
    code, _ = _download(proj, section, capsys)
    assert code == 0
    raw = proj / "data" / "raw"
    before = _snapshot(raw)
    assert "first/first.txt" in before and "SOURCES.json" in before
    # the first source changes (and is pinned to its new content); the second is pinned wrongly
    mirror = proj.parent / "mirror"
    (mirror / "first" / "first.txt").write_text("first v2")
    section["sources"]["first"]["mirror_sha256"] = tree_sha256(mirror / "first")
    section["sources"]["second"]["mirror_sha256"] = "0" * 64
    code, err = _download(proj, section, capsys)
    assert code == 2
    line = _one_clear_line(err)
    assert "second" in line and "sha256 mismatch" in line and "nothing was written" in line
    assert _snapshot(raw) == before
    assert (raw / "first" / "first.txt").read_text() == "first v1"
    assert not [p for p in raw.parent.iterdir() if p.name.endswith(".tmp")]  # no staging left behind


# ------------------------------------------------------------ defect 5: corrupt archives


def _corrupt(kind: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("bad-crc", "bad-central-directory"):
        path = _zip(folder / "ds.zip", {"top/a.txt": b"hello world " * 100, "top/b.txt": b"b"}, zipfile.ZIP_STORED)
        data = bytearray(path.read_bytes())
        at = data.find(b"hello world") if kind == "bad-crc" else data.find(b"PK\x01\x02")
        data[at:at + 4] = b"XXXX"
        path.write_bytes(bytes(data))
        return path
    if kind == "truncated-tar-gz":
        path = folder / "ds.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            for k in range(4):
                payload = hashlib.sha256(str(k).encode()).digest() * 1000  # little to compress
                info = tarfile.TarInfo(f"top/f{k}.bin")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    suffix = {"garbage-zip": "ds.zip", "garbage-tgz": "ds.tgz"}[kind]
    path = folder / suffix
    path.write_bytes(b"this is not an archive\n" * 200)
    return path


def _good_archive(path: Path) -> Path:
    if path.name.endswith(".zip"):
        return _zip(path, {"top/ok.txt": b"ok"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("top/ok.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
    return path


CORRUPT = ["bad-crc", "bad-central-directory", "truncated-tar-gz", "garbage-zip", "garbage-tgz"]


@pytest.mark.parametrize("kind", CORRUPT)
def test_a_corrupt_archive_is_one_line_naming_source_and_file(project, kind, capsys):
    proj, _ = project
    path = _corrupt(kind, proj / "incoming")
    code, err = _download(proj, {"sources": {"ds": {"url": f"incoming/{path.name}", "sha256": _sha(path)}}}, capsys)
    assert code == 2
    line = _one_clear_line(err)
    assert "source ds" in line and path.name in line and "archive" in line
    assert path.is_file()  # a local archive is the user's file: never removed
    assert not (proj / "data" / "raw").exists()


class _Serve(http.server.BaseHTTPRequestHandler):
    payload = b""
    hits = 0

    def do_GET(self):  # noqa: N802
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("H", (_Serve,), {"payload": b"", "hits": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("kind", ["bad-crc", "truncated-tar-gz", "garbage-zip"])
def test_a_corrupt_download_is_removed_from_the_cache_so_a_rerun_fetches_again(project, server, kind, tmp_path, capsys):
    proj, _ = project
    handler, base_url = server
    bad = _corrupt(kind, tmp_path / "served")
    handler.payload = bad.read_bytes()
    section = {"sources": {"ds": {"url": f"{base_url}/{bad.name}"}}}  # unpinned: the sha256 cannot catch it
    code, err = _download(proj, section, capsys)
    assert code == 2
    line = _one_clear_line(err)
    assert "source ds" in line and bad.name in line and "run again" in line
    cache = proj / "data" / ".cache" / "downloads"
    assert not list(cache.iterdir())
    # upstream fixed: the rerun downloads again (same URL) instead of reusing the corrupt copy
    handler.payload = _good_archive(tmp_path / "good" / bad.name).read_bytes()
    code, err = _download(proj, section, capsys)
    assert code == 0, err
    assert (proj / "data" / "raw" / "ds" / "ok.txt").read_bytes() == b"ok"
    assert handler.hits == 2


# ------------------------------------------------------------ SOURCES.json: no machine paths


def _checkout(root: Path) -> Path:
    """A project with a mirror beside it: a directory source, a mirrored archive and a local-path archive."""
    proj = root / "proj"
    mirror = root / "mirror"
    (mirror / "photos" / "sub").mkdir(parents=True)
    (mirror / "photos" / "sub" / "a.jpg").write_bytes(b"jpeg")
    (mirror / "photos" / "b.jpg").write_bytes(b"jpeg2")
    _zip(mirror / "pack.zip", {"pack/x.txt": b"x"})
    proj.mkdir(parents=True)
    section = {"mirror": "../mirror", "sources": {
        "photos": {"url": "https://example.invalid/photos.zip", "mirror": "photos",
                   "mirror_sha256": tree_sha256(mirror / "photos")},
        "pack": {"url": "https://example.invalid/pack.zip", "mirror": "pack.zip",
                 "mirror_sha256": _sha(mirror / "pack.zip")},
        "local": {"url": "../mirror/pack.zip", "sha256": _sha(mirror / "pack.zip")},
        "tree": {"url": "../mirror/photos", "subdir": "sub"}}}
    (proj / "params.yaml").write_text(yaml.safe_dump(_profile(section)))
    return proj


def test_sources_json_is_byte_identical_in_two_checkouts(tmp_path, monkeypatch, capsys):
    outputs = []
    for root in (tmp_path / "a", tmp_path / "b" / "somewhere" / "else"):
        proj = _checkout(root)
        monkeypatch.chdir(proj)
        assert main(["--quiet", "--params", "params.yaml"]) == 0, capsys.readouterr().err
        outputs.append((proj / "data" / "raw" / "SOURCES.json").read_bytes())
    assert outputs[0] == outputs[1]
    text = outputs[0].decode()
    assert str(tmp_path) not in text and os.path.realpath(tmp_path) not in text
    recorded = json.loads(text)
    assert recorded["photos"] == {"location": "photos", "mirror": "../mirror", "kind": "directory",
                                  "sha256": recorded["photos"]["sha256"], "pinned": True, "files": 2}
    assert recorded["local"]["location"] == "../mirror/pack.zip" and "mirror" not in recorded["local"]
    assert recorded["tree"]["files"] == 1 and recorded["tree"]["pinned"] is False
