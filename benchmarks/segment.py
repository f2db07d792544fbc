"""``segment``'s images/s on EG1800's test portraits: ExtremeC3Net on its native C kernels vs PyTorch.

Two figures per runtime, the runtimes interleaved round by round (a shared machine's noise
hits both alike; compare the ratio):

- ``network``: ``Segmenter.foreground_logits`` + threshold on images already decoded:
  resize to the training size, normalise, the network, bilinear upsampling back to each
  image's size, mask. What the runtime choice changes.
- ``command``: ``portrait-curation segment FOLDER --masks`` end to end (decode, the network,
  PNG encoding, atomic writes) into a fresh folder, once per round.

The model is ``models/extremec3net/model.pt`` when it exists, else an untrained ExtremeC3Net
at 224 px (the speed does not depend on the weights).

    .venv/bin/python benchmarks/segment.py --threads 2 --rounds 3 --batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# What `segment` sets (pipeline/tools/segment.py), before torch loads libgomp; run with
# OMP_WAIT_POLICY=ACTIVE to see the spinning default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.checkpoint import save_checkpoint  # noqa: E402
from pipeline.images import load_image  # noqa: E402
from pipeline.inference import Segmenter, load_trained_model  # noqa: E402
from pipeline.models import build_model  # noqa: E402

RUNTIMES = ("native", "torch")


def eg1800_test_images(shared: Path) -> list[Path]:
    from pipeline.sources.base import LoaderReport
    from pipeline.sources.eg1800 import iter_eg1800_original

    return [i.image_path for i in iter_eg1800_original(shared / "eg1800", LoaderReport())
            if i.skip_reason is None and i.split == "test"]


def model_file(workdir: Path) -> tuple[Path, str]:
    trained = REPO / "models" / "extremec3net" / "model.pt"
    if trained.is_file():
        return trained, "models/extremec3net/model.pt"
    torch.manual_seed(0)
    path = workdir / "model.pt"
    save_checkpoint(path, {"arch": "extremec3net", "config": {}, "model": build_model("extremec3net").state_dict(),
                           "input_size": 224})
    return path, "an untrained ExtremeC3Net at 224 px"


def time_network(segmenter: Segmenter, images, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        segmenter.masks(images[i:i + batch])
    return len(images) / (time.perf_counter() - start)


def time_command(folder: Path, model: Path, runtime: str, batch: int, threads: int, workdir: Path) -> float:
    from params_helpers import write_params
    from pipeline.tools import segment

    params = write_params(workdir / "params.yaml", {"segment": {"batch_size": batch, "threads": threads}})
    out = workdir / f"out_{runtime}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    # The params' paths are the project's, relative to it; the command's summary line is not wanted here.
    with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):
        code = segment.main([str(folder), "--model", str(model), "--out", str(out), "--runtime", runtime,
                             "--params", str(params), "--quiet"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"segment exited {code}")
    return len(list((out / "masks").iterdir())) / seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=0, help="use the first N test images (0 = all)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    torch.set_num_threads(args.threads)
    paths = eg1800_test_images(args.shared)[: args.images or None]
    images = [load_image(p).rgb for p in paths]
    with tempfile.TemporaryDirectory(prefix="segment_bench_") as tmp:
        workdir = Path(tmp)
        folder = workdir / "photos"
        folder.mkdir()
        for p in paths:
            shutil.copy(p, folder / p.name)
        model_path, model_name = model_file(workdir)
        trained = load_trained_model(model_path, "extremec3net")
        segmenters = {r: Segmenter(trained, r, threads=args.threads) for r in RUNTIMES}
        for segmenter in segmenters.values():  # warm-up (the native build, oneDNN's first calls)
            segmenter.masks(images[: args.batch])
        figures = {(r, kind): [] for r in RUNTIMES for kind in ("network", "command")}
        for _ in range(args.rounds):
            for runtime in RUNTIMES:
                figures[runtime, "network"].append(time_network(segmenters[runtime], images, args.batch))
                figures[runtime, "command"].append(time_command(folder, model_path, runtime, args.batch,
                                                                args.threads, workdir))
    print(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"{len(images)} EG1800 test images ({min(i.shape[0] for i in images)}..{max(i.shape[0] for i in images)} "
          f"px high), {model_name}, batch {args.batch}, {args.threads} threads, {args.rounds} interleaved rounds")
    print(f"{'':8} {'network img/s (median, min..max)':>34} {'command img/s (median, min..max)':>34}")
    for runtime in RUNTIMES:
        cells = []
        for kind in ("network", "command"):
            values = figures[runtime, kind]
            cells.append(f"{statistics.median(values):8.1f} ({min(values):.1f}..{max(values):.1f})")
        print(f"{runtime:8} {cells[0]:>34} {cells[1]:>34}")
    for kind in ("network", "command"):
        ratios = [n / t for n, t in zip(figures["native", kind], figures["torch", kind])]
        print(f"native / torch, {kind}: {statistics.median(ratios):.2f}x (per round: "
              + ", ".join(f"{r:.2f}" for r in ratios) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
