import pytest

from pipeline.atomic import atomic_dir, atomic_path, remove_stale_temporaries, write_json


def test_atomic_dir_keeps_old_output_when_the_writer_crashes(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "old.txt").read_text() == "old"
    assert not (target / "new.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporaries left


def test_atomic_dir_replaces_output_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


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
