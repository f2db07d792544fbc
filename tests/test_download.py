import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from pipeline.atomic import OWNER_MARKER
from pipeline.stages.download import (ChecksumError, DownloadParams, UnsafeArchiveError, fetch_source, fetch_to_cache,
                                      main, run, safe_extract, tree_sha256)
from pipeline.params import ParamsError, parse_section
from params_helpers import write_params


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(params: DownloadParams, project: Path):
    """The stage's core with the project layout of params.yaml's paths (raw, download_cache)."""
    return run(params, project / "data/raw", project / "data/.cache/downloads", project, progress=False)


def test_directory_source_is_copied_and_its_tree_hash_verified(tmp_path):
    src = tmp_path / "mirror" / "ds"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    digest = tree_sha256(src)
    result = fetch_source("ds", str(src), digest, None, tmp_path / "raw" / "ds", tmp_path / "cache", tmp_path)
    assert result.kind == "directory" and result.files == 2
    assert (tmp_path / "raw" / "ds" / "sub" / "b.txt").read_text() == "b"
    # a changed file changes the hash: refused before anything is written
    (src / "a.txt").write_text("tampered")
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        fetch_source("ds", str(src), digest, None, tmp_path / "raw2" / "ds", tmp_path / "cache", tmp_path)
    assert not (tmp_path / "raw2").exists()
    assert (tmp_path / "raw" / "ds" / "a.txt").read_text() == "a"


def test_directory_source_subdir_copies_only_that_folder(tmp_path):
    src = tmp_path / "mirror" / "ds"
    (src / "repo" / "data").mkdir(parents=True)
    (src / "repo" / "data" / "x.txt").write_text("x")
    (src / "repo" / "README").write_text("r")
    result = fetch_source("ds", str(src), tree_sha256(src), "repo/data", tmp_path / "raw" / "ds", tmp_path / "cache",
                          tmp_path)
    assert sorted(p.name for p in (tmp_path / "raw" / "ds").iterdir()) == ["x.txt"]
    assert result.files == 1
    assert (src / "repo" / "README").is_file()  # the source is read, never moved


def test_archive_via_file_url_is_extracted_under_its_subdir(tmp_path):
    archive = _zip(tmp_path / "ds.zip", {"repo-master/data/x.txt": b"x", "repo-master/README": b"r"})
    result = fetch_source("ds", archive.as_uri(), _sha(archive), "repo-master/data", tmp_path / "raw" / "ds",
                          tmp_path / "cache", tmp_path)
    assert sorted(p.name for p in (tmp_path / "raw" / "ds").iterdir()) == ["x.txt"]
    assert result.kind == "archive" and result.files == 1
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["ds"]  # no extraction leftovers


def test_run_counts_dataset_files_only_and_marks_only_the_output_root(tmp_path):
    """The owner marker of atomic_dir sits in out_dir, never inside a source's folder or its count."""
    archive = _zip(tmp_path / "ds.zip", {"repo-master/data/x.txt": b"x", "repo-master/data/y.txt": b"y"})
    params = parse_section(DownloadParams, {"download": {"mirror": None, "sources": {"ds": {
        "url": archive.as_uri(), "sha256": _sha(archive), "subdir": "repo-master/data"}}}}, "download")
    results = _run(params, tmp_path)
    raw = tmp_path / "data" / "raw"
    assert sorted(p.name for p in (raw / "ds").iterdir()) == ["x.txt", "y.txt"]
    assert results[0].files == 2
    assert json.loads((raw / "SOURCES.json").read_text())["ds"]["files"] == 2
    assert (raw / OWNER_MARKER).is_file()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_zip_slip_is_refused_and_nothing_written(tmp_path, name):
    archive = _zip(tmp_path / "bad.zip", {"fine.txt": b"ok", name: b"evil"})
    with pytest.raises(UnsafeArchiveError, match="refused"):
        fetch_source("bad", str(archive), None, None, tmp_path / "raw" / "bad", tmp_path / "cache", tmp_path)
    assert not (tmp_path / "raw" / "bad").exists()
    assert not list(tmp_path.rglob("evil.txt"))


def _tar(path: Path, add) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        add(tf)
    return path


def _add_file(tf, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_tar_slip_is_refused(tmp_path, kind):
    def add(tf):
        _add_file(tf, "data/ok.txt")
        if kind == "dotdot":
            _add_file(tf, "data/../../escape.txt")
        elif kind == "absolute":
            _add_file(tf, "/tmp/escape.txt")
        elif kind in ("symlink", "hardlink"):
            info = tarfile.TarInfo("data/link")
            info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            info.linkname = "/etc/passwd"
            tf.addfile(info)
        else:
            info = tarfile.TarInfo("data/dev")
            info.type = tarfile.CHRTYPE
            tf.addfile(info)

    archive = _tar(tmp_path / "bad.tar.gz", add)
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(UnsafeArchiveError, match="refused"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []


def test_good_tar_extracts(tmp_path):
    archive = _tar(tmp_path / "good.tgz", lambda tf: _add_file(tf, "top/data/y.txt", b"yy"))
    fetch_source("g", str(archive), _sha(archive), None, tmp_path / "raw" / "g", tmp_path / "cache", tmp_path)
    assert (tmp_path / "raw" / "g" / "data" / "y.txt").read_bytes() == b"yy"  # single top folder unwrapped


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    honour_range = True
    requests: list = []

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        data, status = self.payload, 200
        if rng and self.honour_range:
            start = int(rng.split("=")[1].rstrip("-"))
            data, status = self.payload[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("H", (_RangeHandler,), {"payload": bytes(range(256)) * 4000, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()


def test_interrupted_download_resumes_from_part_file(tmp_path, server):
    handler, url = server
    dest = tmp_path / "file.bin"
    part = dest.with_name("file.bin.part")
    part.write_bytes(handler.payload[:300_000])  # what an interrupted run left behind
    fetch_to_cache(url, dest, progress=False)
    assert dest.read_bytes() == handler.payload and not part.exists()
    assert handler.requests == ["bytes=300000-"]


def test_server_ignoring_range_restarts_cleanly(tmp_path, server):
    handler, url = server
    handler.honour_range = False
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(b"garbage" * 100)
    fetch_to_cache(url, dest, progress=False)
    assert dest.read_bytes() == handler.payload


def test_http_source_with_wrong_checksum_is_not_kept(tmp_path, server):
    handler, url = server
    with pytest.raises(ChecksumError):
        fetch_source("h", url, "0" * 64, None, tmp_path / "raw" / "h", tmp_path / "cache", tmp_path)
    assert not list((tmp_path / "cache").glob("*"))  # the next run downloads again
    assert not (tmp_path / "raw" / "h").exists()


def test_mirror_overrides_upstream_url(tmp_path):
    (tmp_path / "m" / "ds").mkdir(parents=True)
    (tmp_path / "m" / "ds" / "f").write_text("f")
    params = parse_section(DownloadParams, {"download": {"mirror": "m", "sources": {"ds": {
        "url": "https://example.invalid/ds.zip", "mirror": "ds", "mirror_sha256": tree_sha256(tmp_path / "m" / "ds")}}}},
        "download")
    results = _run(params, tmp_path)
    assert results[0].pinned and (tmp_path / "data/raw/ds/f").is_file()
    assert (tmp_path / "data/raw/SOURCES.json").is_file()


def test_bad_checksum_param_is_reported_by_key():
    with pytest.raises(ParamsError, match=r"download\.sources\.ds\.sha256"):
        parse_section(DownloadParams, {"download": {"mirror": None, "sources": {"ds": {"url": "x", "sha256": "abc"}}}},
                      "download")


def test_main_writes_where_the_paths_section_says(tmp_path, server, monkeypatch, capsys):
    """paths.raw and paths.download_cache, not the quick profile's data/raw and data/.cache."""
    handler, file_url = server
    handler.payload = _zip(tmp_path / "served.zip", {"top/data/x.txt": b"x"}).read_bytes()
    url = file_url.rsplit("/", 1)[0] + "/ds.zip"
    project = tmp_path / "proj"
    project.mkdir()
    monkeypatch.chdir(project)
    params = write_params(project / "params.yaml", {"paths": {"raw": "store/raw", "download_cache": "store/cache"}})
    profile = yaml.safe_load(params.read_text())
    profile["download"] = {"mirror": None, "sources": {"ds": {"url": url, "sha256": hashlib.sha256(
        handler.payload).hexdigest(), "subdir": "top/data"}}}
    params.write_text(yaml.safe_dump(profile))
    assert main(["--params", "params.yaml", "--quiet"]) == 0
    assert (project / "store/raw/ds/x.txt").read_bytes() == b"x"
    assert json.loads((project / "store/raw/SOURCES.json").read_text())["ds"]["pinned"] is True
    assert [p.name.endswith("ds.zip") for p in (project / "store/cache").iterdir()] == [True]
    assert not (project / "data").exists()
    assert capsys.readouterr().err == ""  # --quiet: no progress bars
