"""The Ray engine: the pool as a Ray dataset, the teachers as stateful actors in ``map_batches``.

Each actor builds the labeller once (the teachers load once per actor, on a GPU where
``num_gpus_per_actor`` > 0) and labels batches; results stream back to this process, which
saves each in the work folder as it arrives, so a job killed at any point keeps what it
finished. Ray itself schedules, pipelines and retries: a worker that dies is restarted up to
``max_restarts`` times and its batch retried up to ``max_task_retries`` times (bounded on
purpose: Ray Data's default of forever would loop on an image that crashes a worker every
time); past that the run stops with one line and the finished images stay in the work folder.
Ray is imported only here, so ``engine: local`` needs no Ray.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import socket
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from pipeline.errors import StageError
from pipeline.labelling.work import WorkFolder, WorkItem

ADDRESS_FORM = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+)$")


@dataclass(frozen=True)
class RaySettings:
    address: str | None  # None: start a local cluster; "auto", "host:port" or "ray://host:port": join one
    num_actors: int
    num_cpus_per_actor: float
    num_gpus_per_actor: float
    batch_size: int
    max_restarts: int
    max_task_retries: int


def check_address(address: str | None) -> None:
    if address is not None and not ADDRESS_FORM.match(address):
        raise StageError(f"pseudo_label.ray.address {address!r}: expected null (a local cluster), 'auto', "
                         "'host:port' or 'ray://host:port'")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds where nothing listens at ``host:port`` (Ray itself waits minutes for a missing GCS)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise StageError(f"pseudo_label.ray.address {address!r}: nothing answers there ({exc.strerror or exc}); "
                         "start the cluster (ray start --head) or fix the address") from None


def connect(address: str | None, quiet: bool) -> bool:
    """Join (or start) a Ray cluster unless this process already has one; True when this call connected."""
    check_address(address)
    if address not in (None, "auto"):
        check_reachable(address)
    try:
        import ray
    except ImportError as exc:
        raise StageError(f"pseudo_label.engine: ray needs the 'distributed' extra (pip install "
                         f"'portrait-curation[distributed]'): {exc}") from None
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=not quiet,
                 logging_level="WARNING" if quiet else "INFO")
    except Exception as exc:  # noqa: BLE001 -- ConnectionError, TimeoutError, RuntimeError ...: no cluster there
        where = "start a local Ray cluster" if address is None else f"connect to the Ray cluster at {address!r}"
        raise StageError(f"pseudo_label.ray.address: cannot {where} ({_first_line(exc)})") from None
    return True


class LabelActor:
    """A Ray Data actor: builds the labeller once, then labels each batch of work items."""

    def __init__(self, factory: Callable, threads: int):
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self.labeller = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [WorkItem(str(k), str(i), str(m)) for k, i, m in zip(batch["key"], batch["id"], batch["image"])]
        results = self.labeller(items)
        return {"key": np.array([r.key for r in results], dtype=object),
                "result": np.array([pickle.dumps(r) for r in results], dtype=object)}


def run_ray(factory: Callable, pending: Sequence[WorkItem], work: WorkFolder, settings: RaySettings,
            progress: bool = True) -> int:
    """Label ``pending`` on Ray; return how many items were saved. Errors are one-line StageErrors."""
    if not pending:
        return 0
    connected = connect(settings.address, quiet=not progress)
    import ray
    import ray.data

    saved = 0
    try:
        available = ray.cluster_resources()
        need_cpu, need_gpu = settings.num_cpus_per_actor, settings.num_gpus_per_actor
        if settings.address is None and (available.get("CPU", 0) < need_cpu or available.get("GPU", 0) < need_gpu):
            raise StageError(f"pseudo_label.ray: an actor needs {need_cpu} CPU and {need_gpu} GPU, the local "
                             f"cluster has {available.get('CPU', 0)} CPU and {available.get('GPU', 0)} GPU")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        if not progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        blocks = max(1, math.ceil(len(pending) / settings.batch_size))
        dataset = ray.data.from_items([asdict(item) for item in pending], override_num_blocks=blocks)
        with warnings.catch_warnings():  # max_restarts / max_task_retries have no named parameter yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            labelled = dataset.map_batches(
                LabelActor, fn_constructor_kwargs={"factory": factory, "threads": max(1, int(need_cpu))},
                batch_size=settings.batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=settings.num_actors),
                num_cpus=need_cpu, num_gpus=need_gpu or None,
                max_restarts=settings.max_restarts, max_task_retries=settings.max_task_retries)
        with tqdm(total=len(pending), desc="pseudo-label (ray)", unit="img", disable=not progress) as bar:
            for batch in labelled.iter_batches(batch_size=None, batch_format="numpy"):
                for blob in batch["result"]:
                    work.save(pickle.loads(blob))
                    saved += 1
                    bar.update(1)
    except StageError:
        raise
    except Exception as exc:  # noqa: BLE001 -- Ray's errors (ActorDiedError, RayTaskError ...) become one line
        raise StageError(f"ray engine stopped after {saved} of {len(pending)} image(s) ({_first_line(exc)}); the "
                         f"finished ones are kept in {work.folder}, a re-run redoes only the rest") from None
    finally:
        if connected:
            ray.shutdown()
    return saved
