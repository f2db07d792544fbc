import os
import stat

import pytest

from pipeline.atomic import (
    OWNER_MARKER,
    ForeignOutputError,
    atomic_dir,
    atomic_path,
    remove_stale_temporaries,
    write_json,
    write_text,
)


def _stage_output(target, name="old.txt", text="old"):
    with atomic_dir(target) as tmp:
        (tmp / name).write_text(text)


def test_atomic_dir_keeps_old_output_when_the_writer_crashes(tmp_path):
    target = tmp_path / "out"
    _stage_output(target)
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "old.txt").read_text() == "old"
    assert not (target / "new.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporaries left


def test_atomic_dir_replaces_output_on_success(tmp_path):
    target = tmp_path / "out"
    _stage_output(target)
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == sorted([OWNER_MARKER, "new.txt"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_never_replaces_a_folder_no_stage_wrote(tmp_path):
    foreign = tmp_path / "etc"
    foreign.mkdir()
    (foreign / "passwd").write_text("root")
    ran = []
    with pytest.raises(ForeignOutputError, match="not written by a portrait-curation stage"):
        with atomic_dir(foreign) as tmp:
            ran.append(tmp)
    assert not ran  # refused before any work
    assert (foreign / "passwd").read_text() == "root"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etc"]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(ForeignOutputError, match="not a folder"):
        with atomic_dir(a_file):
            pass
    assert a_file.read_text() == "mine"


def test_atomic_dir_accepts_an_empty_folder(tmp_path):
    empty = tmp_path / "fresh"
    empty.mkdir()
    with atomic_dir(empty) as tmp:
        (tmp / "a.txt").write_text("a")
    assert (empty / "a.txt").read_text() == "a" and (empty / OWNER_MARKER).is_file()


def test_atomic_path_leaves_previous_file_on_error(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise ValueError
    assert target.read_text().strip() == '{\n  "v": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / ".x.123.tmp").write_text("")
    (tmp_path / ".y.1.tmp").mkdir()
    (tmp_path / "keep.txt").write_text("")
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_atomic_path_never_replaces_a_folder(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "teacher.pt").write_text("weights")
    with pytest.raises(ForeignOutputError, match="is a folder"):
        write_json(folder, {"v": 1})
    assert (folder / "teacher.pt").read_text() == "weights"


def test_outputs_get_the_umask_mode_not_the_private_temp_mode(tmp_path):
    # mkstemp/mkdtemp make 0600/0700; a dataset written that way is unreadable to teammates.
    old_mask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("x")
        write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
