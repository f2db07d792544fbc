"""pseudo_label's engines: Ray Data gives the local engine's outputs; the work folder resumes; fsspec pools.

One real local Ray cluster (2 CPUs) serves the whole module; tests that need no Ray come first
and do not start it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from params_helpers import write_params
from PIL import Image
from teacher_helpers import BrightnessTeacher, count_teacher_calls, rectangle_image, write_canonical

import pipeline.stages.pseudo_label as pl
from pipeline.errors import StageError
from pipeline.images import read_mask_png
from pipeline.labelling.labeller import Labeller
from pipeline.labelling.local import run_local
from pipeline.labelling.pool_files import PoolReader, list_images
from pipeline.labelling.prediction import FusedTeachers
from pipeline.labelling.ray_data import RaySettings, connect, run_ray
from pipeline.labelling.work import ItemResult, SampleResult, WorkFolder, WorkItem
from pipeline.manifest import read_manifest
from pipeline.params import load_params, parse_section
from pipeline.review.pool import disagreement_path_for

TESTS = Path(__file__).resolve().parent


def noisy_pool(count: int, seed: int = 0) -> list[dict]:
    """Pool samples of different sizes: a bright noisy rectangle on a dark noisy ground."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        h, w = 72 + 9 * i, 56 + 7 * i
        image, _ = rectangle_image(h, w, (4 + i, 8, w - 8, h - 4))
        image = (image.astype(int) + rng.integers(-20, 20, image.shape)).clip(0, 255).astype(np.uint8)
        samples.append({"id": f"pool/p{i}", "split": "unlabelled", "image": image})
    return samples


def params_for(tmp_path: Path, name: str, **section) -> str:
    """Params writing to ``data/<name>`` with its own work folder; no validation set (allowed explicitly)."""
    paths = {"teacher": str(tmp_path / "teacher.pt"), "prepared": str(tmp_path / "prepared"),
             "pseudo": str(tmp_path / "data" / name), "metrics": str(tmp_path / f"metrics_{name}")}
    body = {"teachers": ["deeplab"], "pool_crop": "none", "batch_size": 2, "flip_tta": True, "device": "cpu",
            "bfloat16": False, "work_dir": str(tmp_path / f"work_{name}"),
            "validation": {"data": [], "allow_empty_validation": True}}
    body.update(section)
    return str(write_params(tmp_path / f"params_{name}.yaml", {"paths": paths, "teacher": {"encoder_name": "resnet18"},
                                                                "pseudo_label": body}))


@pytest.fixture
def counted_teacher(monkeypatch, tmp_path):
    """The bright-pixel stand-in as the DeepLabv3+; returns the list of batch sizes the teachers were given."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pl, "load_teacher", lambda path, expected_config=None: (BrightnessTeacher().eval(),
                                                                                {"input_size": 64, "train_ids": []}))
    return count_teacher_calls(monkeypatch)


def outputs(folder: Path) -> tuple[pd.DataFrame, dict[str, bytes]]:
    """scores.csv and every mask's bytes by sample id."""
    manifest = read_manifest(folder)
    return pd.read_csv(folder / "scores.csv"), {r["id"]: (folder / r["mask"]).read_bytes()
                                                for r in manifest.to_dict("records")}


def disagreement_maps(folder: Path) -> dict[str, bytes]:
    """Every sample's teacher-disagreement PNG bytes by sample id, where the review view reads them."""
    return {r["id"]: disagreement_path_for(folder, r["mask"]).read_bytes()
            for r in read_manifest(folder).to_dict("records")}


def item_records(work_root: Path) -> list[Path]:
    return sorted(work_root.glob("*/items/*/*/record.json"))


# ---------------------------------------------------------------------------- resumable work (no Ray)


def test_a_killed_run_resumes_with_only_the_missing_images(tmp_path, counted_teacher, monkeypatch):
    write_canonical(tmp_path / "prepared", noisy_pool(6))
    params = params_for(tmp_path, "pseudo")
    predict = FusedTeachers.predict

    def dies_on_third_batch(self, images):
        if len(counted_teacher) == 2:
            counted_teacher.append(len(images))
            raise KeyboardInterrupt  # what a killed job looks like from inside
        return predict(self, images)

    monkeypatch.setattr(FusedTeachers, "predict", dies_on_third_batch)
    assert pl.main(["--params", params, "--quiet"]) == 130
    assert not (tmp_path / "data" / "pseudo").exists()  # nothing partial is taken as complete
    assert len(item_records(tmp_path / "work_pseudo")) == 4
    monkeypatch.setattr(FusedTeachers, "predict", predict)  # the counting one of the fixture
    counted_teacher.clear()
    assert pl.main(["--params", params, "--quiet"]) == 0
    assert sum(counted_teacher) == 2  # only the two images the killed run did not finish
    metrics = json.loads((tmp_path / "metrics_pseudo" / "pseudo_label.json").read_text())["pool"]
    assert (metrics["labelled_this_run"], metrics["reused_from_work"], metrics["images"]) == (2, 4, 6)

    # The same outputs as one uninterrupted run.
    counted_teacher.clear()
    assert pl.main(["--params", params_for(tmp_path, "fresh"), "--quiet"]) == 0
    assert sum(counted_teacher) == 6
    resumed, fresh = outputs(tmp_path / "data" / "pseudo"), outputs(tmp_path / "data" / "fresh")
    assert resumed[1] == fresh[1]
    pd.testing.assert_frame_equal(resumed[0], fresh[0])


def test_torn_items_are_redone_and_changed_settings_start_afresh(tmp_path, counted_teacher):
    write_canonical(tmp_path / "prepared", noisy_pool(5))
    params = params_for(tmp_path, "pseudo")
    assert pl.main(["--params", params, "--quiet"]) == 0
    before = outputs(tmp_path / "data" / "pseudo")
    records = item_records(tmp_path / "work_pseudo")
    assert len(records) == 5
    records[0].unlink()  # killed before its record landed
    mask = next(records[1].parent.glob("*.mask.png"))
    mask.write_bytes(mask.read_bytes()[:20])  # a torn mask file under a finished record
    records[2].write_text('{"key": ')  # a torn record
    counted_teacher.clear()
    assert pl.main(["--params", params, "--quiet"]) == 0
    assert sum(counted_teacher) == 3
    after = outputs(tmp_path / "data" / "pseudo")
    assert after[1] == before[1]

    # flip TTA off changes every result: nothing is reused, and the old work is pruned
    old = {p.parent.parent.parent.parent.name for p in item_records(tmp_path / "work_pseudo")}
    counted_teacher.clear()
    assert pl.main(["--params", params_for(tmp_path, "pseudo", flip_tta=False), "--quiet"]) == 0
    assert sum(counted_teacher) == 5
    new = {p.parent.parent.parent.parent.name for p in item_records(tmp_path / "work_pseudo")}
    assert len(new) == 1 and new.isdisjoint(old)
    assert pd.read_csv(tmp_path / "data" / "pseudo" / "scores.csv")["flip_agreement"].isna().all()


# ---------------------------------------------------------------------------- pools through fsspec (no Ray)


def test_a_folder_and_a_memory_pool_give_the_same_self_contained_dataset(tmp_path, counted_teacher):
    import fsspec
    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    memory = fsspec.filesystem("memory")
    truths = {}
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        image, truth = rectangle_image(50 + 10 * i, 40, (5, 5 + i, 30, 40))
        Image.fromarray(image).save(folder / name, quality=100)
        memory.pipe(f"/h17r_pool/{name}", (folder / name).read_bytes())
        truths[name] = truth
    (folder / "notes.txt").write_text("not an image")
    memory.pipe("/h17r_pool/broken.png", b"not a png")
    try:
        assert list_images("memory://h17r_pool") == ["a.png", "b.jpg", "broken.png", "sub/c.png"]
        assert pl.main(["--params", params_for(tmp_path, "from_folder", pool_location=str(folder)), "--quiet"]) == 0
        assert pl.main(["--params", params_for(tmp_path, "from_memory", pool_location="memory://h17r_pool"),
                        "--quiet"]) == 0
    finally:
        memory.rm("/h17r_pool", recursive=True)
    from_folder, from_memory = tmp_path / "data" / "from_folder", tmp_path / "data" / "from_memory"
    manifest = read_manifest(from_folder)
    assert sorted(manifest["origin"]) == ["photos/a", "photos/b", "photos/sub/c"]
    for row in manifest.to_dict("records"):
        name = next(n for n in truths if row["origin"].endswith(Path(n).with_suffix("").as_posix()))
        assert (from_folder / row["image"]).read_bytes() == (folder / name).read_bytes()  # copied, not pointed at
        mask = read_mask_png(from_folder / row["mask"])
        assert (mask & truths[name]).sum() / (mask | truths[name]).sum() > 0.85
    assert outputs(from_folder)[1] == {k.replace("h17r_pool_", "photos_"): v for k, v in outputs(from_memory)[1].items()}
    skipped = pd.read_csv(from_memory / "skipped.csv")
    assert skipped["id"].tolist() == ["h17r_pool/broken"]
    assert skipped["reason"].iloc[0].startswith("broken.png: not an image")


def test_a_pool_location_without_images_is_one_line(tmp_path, counted_teacher, capsys):
    (tmp_path / "empty").mkdir()
    assert pl.main(["--params", params_for(tmp_path, "x", pool_location=str(tmp_path / "empty")), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pseudo_label.pool_location" in err and "no image files" in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="not a folder"):
        list_images("memory://nowhere")


# ---------------------------------------------------------------------------- engine choice and errors (no Ray)


def test_the_local_engine_needs_no_ray(tmp_path, counted_teacher, monkeypatch, capsys):
    code = "import sys, pipeline.stages.pseudo_label; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0
    write_canonical(tmp_path / "prepared", noisy_pool(2))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    assert pl.main(["--params", params_for(tmp_path, "local"), "--quiet"]) == 0
    assert pl.main(["--params", params_for(tmp_path, "ray", engine="ray"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "distributed" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("section, words", [
    ({"engine": "spark"}, "pseudo_label.engine: Input should be 'local' or 'ray'"),
    ({"engine": "ray", "ray": {"address": "not an address"}}, "pseudo_label.ray.address: Value error, expected null"),
    ({"engine": "ray", "ray": {"address": "127.0.0.1:1"}}, "pseudo_label.ray.address '127.0.0.1:1': nothing answers"),
])
def test_a_bad_engine_or_address_is_one_line(tmp_path, counted_teacher, capsys, section, words):
    """One line names the key (a params error has the file's name on a line above it, as every stage's does)."""
    write_canonical(tmp_path / "prepared", noisy_pool(1))
    assert pl.main(["--params", params_for(tmp_path, "x", **section), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert any(words in line for line in lines) and len(lines) <= 2, lines
    assert not (tmp_path / "data" / "x").exists()


def test_connect_checks_the_address_before_ray_waits_for_it():
    with pytest.raises(StageError, match="nothing answers there"):
        connect("ray://127.0.0.1:1", quiet=True)


# ---------------------------------------------------------------------------- a real local Ray cluster


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster of 2 CPUs for the module; workers can import this test module (for stand-ins)."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def test_ray_gives_the_local_engines_masks_and_scores(tmp_path, ray_cluster, monkeypatch):
    """Real MediaPipe teachers, in 2 Ray actors vs this process: same PNG bytes, scores within 1e-6."""
    monkeypatch.chdir(tmp_path)
    write_canonical(tmp_path / "prepared", noisy_pool(6, seed=1))
    common = {"teachers": ["mediapipe", "mediapipe_landscape"], "threads": 1}
    assert pl.main(["--params", params_for(tmp_path, "local", **common), "--quiet"]) == 0
    ray_section = {"num_actors": 2, "num_cpus_per_actor": 1, "batch_size": 2, "address": None}
    assert pl.main(["--params", params_for(tmp_path, "ray", engine="ray", ray=ray_section, **common), "--quiet"]) == 0
    (local_scores, local_masks), (ray_scores, ray_masks) = outputs(tmp_path / "data" / "local"), \
        outputs(tmp_path / "data" / "ray")
    assert len(local_masks) == 6 and local_masks == ray_masks
    assert local_scores["id"].tolist() == ray_scores["id"].tolist()
    numeric = local_scores.select_dtypes("number").columns
    assert np.allclose(local_scores[numeric], ray_scores[numeric], atol=1e-6, rtol=0, equal_nan=True)
    assert (local_scores["mask_sha256"] == ray_scores["mask_sha256"]).all()
    local_manifest = read_manifest(tmp_path / "data" / "local")
    pd.testing.assert_frame_equal(local_manifest, read_manifest(tmp_path / "data" / "ray"))
    # two teachers: a teacher-disagreement map beside every mask, the same bytes from both engines
    local_maps, ray_maps = disagreement_maps(tmp_path / "data" / "local"), disagreement_maps(tmp_path / "data" / "ray")
    assert sorted(local_maps) == sorted(local_masks) and local_maps == ray_maps
    for row in local_manifest.to_dict("records"):
        pixels = np.asarray(Image.open(disagreement_path_for(tmp_path / "data" / "local", row["mask"])))
        assert pixels.shape == (row["height"], row["width"]) and set(np.unique(pixels)) <= {0, 255}
    metrics = json.loads((tmp_path / "metrics_ray" / "pseudo_label.json").read_text())["pool"]
    assert metrics["engine"] == "ray" and metrics["labelled_this_run"] == 6


class DyingLabeller:
    """A stand-in labeller factory whose worker process dies on its first batch (or on every batch)."""

    def __init__(self, marker: str, every_time: bool):
        self.marker, self.every_time = marker, every_time

    def __call__(self):
        def label(items):
            if self.every_time or not os.path.exists(self.marker):
                Path(self.marker).write_text("died")
                os._exit(1)  # what a segfault or the OOM killer looks like
            return [ItemResult(i.key, i.id, i.image, [SampleResult(i.key, (1, 1), {}, {}, "", b"mask " + i.key.encode())])
                    for i in items]
        return label


def test_a_killed_ray_worker_is_survived_or_reported_in_one_line(tmp_path, ray_cluster):
    items = [WorkItem(f"k{i}", f"pool/{i}", f"{i}.png") for i in range(6)]
    settings = RaySettings(address=None, num_actors=2, num_cpus_per_actor=1, num_gpus_per_actor=0, batch_size=2,
                           max_restarts=2, max_task_retries=2)
    work = WorkFolder(tmp_path / "work", "0" * 16)
    assert run_ray(DyingLabeller(str(tmp_path / "died_once"), False), items, work, settings, progress=False) == 6
    assert (tmp_path / "died_once").exists() and work.missing(items) == []
    assert work.load(items[3]).samples[0].mask_png == b"mask k3"

    doomed = WorkFolder(tmp_path / "doomed", "1" * 16)
    once = RaySettings(**{**settings.__dict__, "max_restarts": 1, "max_task_retries": 1})
    with pytest.raises(StageError) as caught:
        run_ray(DyingLabeller(str(tmp_path / "dies_always"), True), items, doomed, once, progress=False)
    message = str(caught.value)
    assert "ActorDiedError" in message and "re-run" in message and len(message.splitlines()) == 1
    assert doomed.missing(items) == items  # nothing taken as done


class DrawnLabeller:
    """A picklable labeller factory with two teachers that disagree (bright pixels vs the left half of the frame)."""

    def __init__(self, settings: pl.PseudoLabelParams, location: str):
        self.settings, self.location = settings, location

    def __call__(self):
        # importable in the workers too (PYTHONPATH has tests/)
        from teacher_helpers import DrawnTeacher

        runner = FusedTeachers([DrawnTeacher("deeplab", None), DrawnTeacher("mediapipe", 0.5)], "mean", {}, False)
        return Labeller(runner, self.settings, PoolReader(self.location))


def test_ray_gives_the_local_engines_disagreement_maps(tmp_path, ray_cluster):
    """Teachers that disagree, in 2 Ray actors vs this process: the same disagreement PNG bytes in the dataset."""
    pool_root = tmp_path / "prepared"
    write_canonical(pool_root, noisy_pool(5, seed=2))
    params = params_for(tmp_path, "x", teachers=["deeplab", "mediapipe"], flip_tta=False)
    settings = parse_section(pl.PseudoLabelParams, load_params(params), "pseudo_label", params)
    pool = read_manifest(pool_root)
    items = [WorkItem(r["id"].replace("/", "_"), r["id"], r["image"]) for r in pool.to_dict("records")]
    factory = DrawnLabeller(settings, str(pool_root))
    ray_settings = RaySettings(address=None, num_actors=2, num_cpus_per_actor=1, num_gpus_per_actor=0, batch_size=2,
                               max_restarts=0, max_task_retries=0)
    local, ray = WorkFolder(tmp_path / "work_local", "2" * 16), WorkFolder(tmp_path / "work_ray", "2" * 16)
    assert run_local(factory, items, local, batch_size=2, progress=False) == 5
    assert run_ray(factory, items, ray, ray_settings, progress=False) == 5
    maps = {}
    for name, work in (("local", local), ("ray", ray)):
        out = tmp_path / "data" / name
        manifest, _, _ = pl.assemble_dataset(work, items, pool, settings, out, out, pool_root)
        maps[name] = {r["id"]: disagreement_path_for(out, r["mask"]).read_bytes() for r in manifest.to_dict("records")}
    assert len(maps["local"]) == 5 and maps["local"] == maps["ray"]
    for data in maps["local"].values():  # neither all-agree nor all-disagree: the maps carry pixels
        pixels = np.asarray(Image.open(io.BytesIO(data)))
        assert set(np.unique(pixels)) == {0, 255}
