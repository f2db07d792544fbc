"""Training under torchrun: a real 2-process gloo run of the train stage against one process.

The torchrun runs start this very file as their worker (``__main__`` below): it registers the
test network, optionally records which rank writes which file, optionally has rank 1 kill
itself with SIGKILL, and runs ``pipeline.stages.train.main``. The single-process runs happen in
the pytest process. Everything is tiny (32 px, 10 training images, 3 epochs of 2 steps of 4) so
the module takes about 20 s on a quiet 2-core machine (100 s at a load average of 10), most of
it starting the three torchrun runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from params_helpers import write_params
from pipeline.distributed import Topology, rank_batch, shard_batches, topology, trimmed_for_ranks
from pipeline.errors import StageError
from pipeline.models import MODELS, register
from test_train import write_synthetic_set

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
ARCH = "test_ddp_plain"
TRAIN = {"input_size": 32, "epochs": 3, "batch_size": 4, "workers": 0, "max_steps_per_epoch": 2,
         "val_fraction": 0.3, "lr": 0.01, "seed": 3, "device": "cpu", "threads": 1,
         "loss": {"kind": "lovasz", "boundary_weight": 0.5, "boundary_kernel": 3}}
# Weights of the 2-process run against one process: the same images per step and the same
# gradient, summed in another order (two partial sums of 2 images, then the all-reduce, instead
# of one sum of 4). float32 rounding of that reordering is ~1e-7 relative per sum; Adam divides
# each gradient by its running RMS, so a relative rounding of the gradient becomes the same
# relative rounding of a step of at most lr = 0.01; six steps give well under 1e-6 absolute
# (measured: 2.4e-7, a running variance, whose one-pass computation across the ranks adds its own).
# 1e-5 leaves margin for the Lovász sort, where two errors equal to rounding may swap places.
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-5  # the logged losses: the same reordering, plus the all-reduce of the two half-batch means


class PlainNet(nn.Module):
    """Stand-in with batch norm and without dropout (tests only): with the batch statistics
    synchronised its 2-process run must equal one process's up to float reordering."""

    def __init__(self, num_classes: int = 1, width: int = 4):
        super().__init__()
        # no bias before batch norm (as in ExtremeC3Net): its true gradient is 0, so its Adam steps
        # would be float noise normalised to full steps, differing between any two summation orders
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 1))

    def forward(self, x):
        return self.body(x)


if ARCH not in MODELS:
    register(ARCH)(lambda num_classes=1, width=4: PlainNet(num_classes, width))


# ---------------------------------------------------------------- pure: the shards


@pytest.mark.parametrize("world, batch, n", [(2, 4, 8), (2, 4, 11), (4, 8, 30), (3, 6, 13)])
def test_ranks_split_every_global_batch_disjointly_and_completely(world, batch, n):
    order = list(range(100, 100 + n))
    shares = [shard_batches(order, batch, Topology(world, r, r)) for r in range(world)]
    per_rank = batch // world
    for step in range(0, n, batch):  # step k of every rank together is global batch k
        k = step // batch
        parts = [s[k * per_rank:(k + 1) * per_rank] for s in shares]
        assert sorted(sum(parts, [])) == sorted(order[step:step + batch])
    assert sorted(sum(shares, [])) == order


def test_a_last_batch_too_short_to_give_every_rank_an_image_is_left_out():
    two = Topology(2, 0, 0)
    assert trimmed_for_ranks(list(range(11)), 4, two) == list(range(11))  # 3 left: 2 + 1
    assert trimmed_for_ranks(list(range(12)), 4, two) == list(range(12))  # full batches: nothing left out
    assert trimmed_for_ranks(list(range(13)), 4, Topology(4, 0, 0)) == list(range(12))  # 1 left: 3 ranks idle
    assert trimmed_for_ranks(list(range(14)), 8, Topology(4, 0, 0)) == list(range(14))  # 6 left: 2 2 1 1
    assert trimmed_for_ranks(list(range(11)), 8, Topology(4, 0, 0)) == list(range(8))  # 3 left: one rank idle
    assert trimmed_for_ranks(list(range(11)), 4, Topology()) == list(range(11))  # one process: as before


def test_topology_from_torchrun_variables_and_refusals():
    assert topology({}) == Topology(1, 0, 0)
    assert topology({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Topology(4, 3, 1)
    assert rank_batch(8, 4) == 2
    with pytest.raises(StageError, match="batch_size 6 does not divide between 4 processes"):
        rank_batch(6, 4)
    with pytest.raises(StageError, match="0 <= RANK < WORLD_SIZE"):
        topology({"WORLD_SIZE": "2", "RANK": "2"})


def test_a_batch_that_does_not_divide_between_the_processes_is_one_line(tmp_path, monkeypatch, capsys):
    from pipeline.stages.train import main

    project = make_project(tmp_path, batch_size=3)
    monkeypatch.chdir(project)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["--params", "params.yaml", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size 3 does not divide between 2 processes" in err[0], err
    assert not (project / "models").exists()


# ---------------------------------------------------------------- real torchrun runs


def make_project(root: Path, **changes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_synthetic_set(root / "data" / "train_set", n=16)
    write_params(root / "params.yaml", {"train": {"archs": [ARCH], "model_kwargs": {ARCH: {"width": 3}},
                                                  "settings": {**TRAIN, **changes}}})
    return root


def torchrun(project: Path, record: Path, *, die_at_gather: int = 0, timeout: float = 300):
    """Run the train stage under ``torchrun --standalone --nproc-per-node 2`` (gloo, 1 thread a rank)."""
    record.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DDP_TEST_RECORD": str(record), "DDP_TEST_DIE_AT_GATHER": str(die_at_gather),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE.parent)])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(HERE), "--params", "params.yaml", "--quiet"]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def written_by(record: Path) -> dict[int, list[str]]:
    return {int(p.stem.split("rank")[1]): p.read_text().split() for p in record.glob("writes-rank*.txt")}


def model_weights(project: Path) -> dict:
    return torch.load(project / "models" / ARCH / "model.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One unbroken 2-process run (the reference of the comparisons below)."""
    project = make_project(tmp_path_factory.mktemp("ddp"))
    record = project / "record"
    done = torchrun(project, record)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return project, record, done


def test_two_processes_train_the_same_weights_and_metrics_as_one(ddp_run, tmp_path, monkeypatch):
    from pipeline.stages.train import main

    project, _, _ = ddp_run
    single = make_project(tmp_path / "single")
    monkeypatch.chdir(single)
    assert main(["--params", "params.yaml", "--quiet"]) == 0

    one, two = model_weights(single), model_weights(project)
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=0, atol=WEIGHT_ATOL), (key, (one[key] - two[key]).abs().max())
    assert any(not torch.equal(one[k], torch.zeros_like(one[k])) for k in one)
    plots_one = pd.read_csv(single / "plots" / "train" / f"{ARCH}.csv")
    plots_two = pd.read_csv(project / "plots" / "train" / f"{ARCH}.csv")
    assert plots_one["epoch"].tolist() == plots_two["epoch"].tolist() == [1, 2, 3]
    assert plots_two["train_loss"].tolist() == pytest.approx(plots_one["train_loss"].tolist(), rel=LOSS_RTOL)
    assert plots_two["val_miou"].tolist() == pytest.approx(plots_one["val_miou"].tolist(), abs=1e-3)
    metrics_one = json.loads((single / "metrics" / "train" / f"{ARCH}.json").read_text())
    metrics_two = json.loads((project / "metrics" / "train" / f"{ARCH}.json").read_text())
    assert metrics_two["best_val_miou"] == pytest.approx(metrics_one["best_val_miou"], abs=1e-3)
    assert metrics_two["exported_epoch"] == metrics_one["exported_epoch"]
    assert metrics_two["train_samples"] == metrics_one["train_samples"]


def test_only_rank_0_writes_checkpoints_and_metrics(ddp_run):
    project, record, done = ddp_run
    writes = written_by(record)
    assert set(writes) == {0}, writes  # rank 1 recorded no write at all
    names = {Path(p).name for p in writes[0]}
    assert {"stage1_last.pt", "stage1_best.pt", "model.pt", f"{ARCH}.json", f"{ARCH}.csv"} <= names
    assert done.stdout.count(f"train {ARCH}: best val mIoU") == 1  # one rank reports


def test_a_killed_rank_is_reported_and_the_rerun_resumes_to_the_same_weights(ddp_run, tmp_path):
    reference, _, _ = ddp_run
    project = make_project(tmp_path / "killed")
    # rank 1 SIGKILLs itself as epoch 2 ends, after rank 0 wrote epoch 1's checkpoint
    killed = torchrun(project, project / "record-killed", die_at_gather=2)
    assert killed.returncode != 0
    root_cause = killed.stderr[killed.stderr.find("Root Cause"):]  # torchrun's report names the dead rank
    assert "rank      : 1" in root_cause and "Signal 9 (SIGKILL)" in root_cause, killed.stderr[-3000:]
    assert not (project / "models" / ARCH / "model.pt").exists()
    saved = torch.load(project / "models" / ARCH / "checkpoints" / "stage1_last.pt", weights_only=True)
    assert saved["epoch"] == 1 and len(saved["rng"]["ranks"]) == 2  # the last complete checkpoint

    resumed = torchrun(project, project / "record-resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming from") == 1 and "after epoch 1 of 3" in resumed.stdout
    expected, got = model_weights(reference), model_weights(project)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key  # bit for bit: the same state on every rank
    history = pd.read_csv(project / "plots" / "train" / f"{ARCH}.csv")
    assert history["train_loss"].tolist() == pd.read_csv(reference / "plots" / "train" / f"{ARCH}.csv")[
        "train_loss"].tolist()


def teacher_test_job(folder: Path):
    """test_teacher's tiny teacher run, its network without the bias before batch norm (see PlainNet;
    in evaluation that bias's float-noise steps, not yet followed by the running mean, shift the logits)."""
    import dataclasses

    from test_teacher import tiny_teacher_job

    def make_model(fresh: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 1, 1))

    return dataclasses.replace(tiny_teacher_job(folder), make_model=make_model)


def test_the_teacher_trains_under_torchrun_as_in_one_process(tmp_path):
    """The teacher's run of the loop (AdamW, cosine per step, cross-entropy + Dice, a checkpoint
    every step), 10 images in batches of 4, 4, 2: the last batch gives each rank one image."""
    from pipeline.training import run

    single = run(teacher_test_job(tmp_path / "single"))
    env = {**os.environ, "DDP_TEST_MODE": "teacher", "DDP_TEST_RECORD": str(tmp_path / "record"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE.parent)])}
    (tmp_path / "record").mkdir()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(HERE), str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(tmp_path / "ddp" / "result.pt", weights_only=True)
    assert [h["step"] for h in result["history"]] == [h["step"] for h in single.history] == [3, 6, 9]
    assert [h["train_loss"] for h in result["history"]] == pytest.approx(
        [h["train_loss"] for h in single.history], rel=LOSS_RTOL)
    assert [h["val"] for h in result["history"]] == pytest.approx([h["val"] for h in single.history], abs=1e-4)
    for key, value in single.model.state_dict().items():
        assert torch.allclose(value, result["model"][key], rtol=0, atol=WEIGHT_ATOL), key
    assert set(written_by(tmp_path / "record")) == {0}  # rank 0 wrote the per-step checkpoints


# ---------------------------------------------------------------- the torchrun worker


def _teacher_worker(folder: Path) -> int:
    """One rank of the teacher's tiny run; rank 0 saves what ``run`` returned for the test to compare."""
    import pipeline.distributed as dist_helpers
    import pipeline.training as training

    rank = int(os.environ.get("RANK", "0"))
    record = Path(os.environ["DDP_TEST_RECORD"])
    save = training.save_checkpoint

    def recording(path, state):
        with open(record / f"writes-rank{rank}.txt", "a") as log:
            log.write(f"{path}\n")
        save(path, state)

    training.save_checkpoint = recording
    with dist_helpers.session("cpu"):
        result = training.run(teacher_test_job(folder))
    if rank == 0:
        torch.save({"model": result.model.state_dict(), "history": result.history}, folder / "result.pt")
    return 0



def _worker() -> int:
    """One rank of a test run: record writes per rank, optionally die, run the train stage."""
    if os.environ.get("DDP_TEST_MODE") == "teacher":
        return _teacher_worker(Path(sys.argv[1]))
    import pipeline.distributed as dist_helpers
    import pipeline.stages.train as stage
    import pipeline.training as training

    rank = int(os.environ.get("RANK", "0"))
    record = Path(os.environ["DDP_TEST_RECORD"])

    def recording(write):
        def wrapped(path, *args, **kwargs):
            with open(record / f"writes-rank{rank}.txt", "a") as log:
                log.write(f"{path}\n")
            return write(path, *args, **kwargs)
        return wrapped

    training.save_checkpoint = recording(training.save_checkpoint)
    for name in ("save_checkpoint", "write_csv", "write_json"):
        setattr(stage, name, recording(getattr(stage, name)))

    die_at = int(os.environ.get("DDP_TEST_DIE_AT_GATHER", "0"))
    if die_at and rank == 1:
        gather, calls = dist_helpers.gather_to_all, []

        def dying_gather(value):
            calls.append(1)
            if len(calls) == die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return gather(value)

        dist_helpers.gather_to_all = dying_gather
    return stage.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(_worker())
