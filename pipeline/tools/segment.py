"""Command ``portrait-curation segment``: a trained model applied to your own images or a video.

    portrait-curation segment PHOTOS/ --arch extremec3net --cutouts --background blur
    portrait-curation segment clip.mp4 --model elsewhere/model.pt --background "#00b140" --masks --frames

INPUT is a folder of images (.jpg .jpeg .png .bmp .tif .tiff .webp; its subfolders too with
--recursive, mirrored in the output), one image, or a video file (.mp4 .avi .mov .mkv .webm
.m4v .mpg .mpeg). The model is --arch NAME (<paths.models>/NAME/model.pt, what `train`
wrote) or --model PATH (any model.pt `train` wrote). Each image is seen as `evaluate` sees
it: resized to the training size, its logits upsampled back to the image's own size.

Outputs (any of them; --masks when none is named), in the output folder:
  --masks            masks/<name>.png       8-bit PNG, person 255, background 0, the image's size
  --cutouts          cutouts/<name>.png     RGBA PNG: the person, the background transparent
  --background SPEC  background/<name>.jpg  the person on another background (.png for non-JPEG inputs)
For a video: --background writes <stem>_background.mp4 and --masks <stem>_mask.mp4 (same fps,
frame size and frame count as the input); --frames adds every frame's exact mask as
<stem>_masks/NNNNNN.png; --cutouts writes RGBA frames to <stem>_cutouts/NNNNNN.png (no common
video format carries transparency).

SPEC is a colour (black, white, green, blue, gray, #rrggbb or r,g,b), `blur` or `blur:SIGMA`
(the image itself blurred, SIGMA in pixels; default segment.blur_sigma), or an image file
(scaled to cover the frame and centre-cropped). With segment.soft_edges, cut-outs and
backgrounds blend the edge by the network's probability; masks are always thresholded.

Output folder: --out DIR (anywhere: your choice), else <segment.output_dir>/<input name>
inside the project. It may not overlap the input (neither inside it nor holding it), and an
existing one must be empty or written by `segment`. Every file is written under a temporary
name and renamed when complete: an interrupted run leaves no half-written output, and a
re-run skips the inputs whose outputs all exist (--overwrite redoes them). Inputs are never
written. Unreadable images are skipped with their reason, listed at the end and in
<out>/skipped.csv; a folder without any image is an error.

Settings (params.yaml, section segment): batch size, runtime (auto = ExtremeC3Net on its
native C kernels where they build, else PyTorch), threads, device, soft edges, blur sigma,
JPEG quality, video codec.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Iterator

# OpenMP threads that sleep when idle instead of spinning. This process holds two OpenMP
# runtimes (torch's bundled libgomp and the system one the native kernels link) whose
# spinning threads take the cores from each other between the small calls of a segment
# loop; on a busy 2-core machine PASSIVE made a batch of 8 portraits on the native kernels
# about 15x faster (0.3 s instead of 5 s; benchmarks/segment.py). Read by libgomp when it
# loads (the first torch import), so it must come before it; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from pydantic import AfterValidator, Field  # noqa: E402

from pipeline.atomic import atomic_dir, write_bytes, write_csv  # noqa: E402
from pipeline.devices import Device, resolve_device  # noqa: E402
from pipeline.images import IMAGE_EXTENSIONS, BadImageError, check_max_pixels, strip_root  # noqa: E402
from pipeline.inference import Runtime, RUNTIMES, Segmenter, load_trained_model, trained_model_path  # noqa: E402
from pipeline.params import OutputPath, Section, load_section  # noqa: E402
from pipeline.paths import ProjectPaths  # noqa: E402
from pipeline.stage import StageError, make_parser, run_main  # noqa: E402

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
# Every output folder holds this file: a folder without it was not written by segment, and
# segment writes into it only when it is empty (it must not mix its files with a user's).
SEGMENT_MARKER = ".portrait-curation-segment"
_MARKER_TEXT = "written by `portrait-curation segment`; a re-run adds to it, --overwrite redoes its files\n"
# What an interrupted run may leave: ".<name>.<random>.tmp" (pipeline.atomic) and
# ".<name>.<random>.tmp.mp4" (videos, whose writer needs the real suffix).
_TEMPORARY = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")
PNG_COMPRESSION = 3  # zlib level: masks compress well at any level; 3 is about 3x faster than 9


class SegmentParams(Section):
    output_dir: OutputPath = Field(description="outputs go to <output_dir>/<input name> unless --out names a folder")
    batch_size: int = Field(ge=1, le=1024, description="images (or frames) run through the network at once")
    runtime: Runtime
    threads: int = Field(ge=0, le=256, description="torch / native CPU threads; 0 = torch's default")
    device: Device
    max_image_pixels: Annotated[int, AfterValidator(check_max_pixels)]
    soft_edges: bool = Field(description="cut-outs and backgrounds blend edges by the network's probability")
    blur_sigma: float = Field(gt=0, le=1000, allow_inf_nan=False, description="--background blur's default sigma (px)")
    jpeg_quality: int = Field(ge=1, le=100)
    video_fourcc: str = Field(pattern=r"^[A-Za-z0-9]{4}$", description="codec of the output videos (mp4v: MPEG-4)")


@dataclass(frozen=True)
class Outputs:
    masks: bool
    cutouts: bool
    background: object | None  # pipeline.compositing.Background
    frames: bool

    def kinds(self) -> list[str]:
        return [k for k, on in (("masks", self.masks), ("cutouts", self.cutouts),
                                ("background", self.background is not None)) if on]


@dataclass(frozen=True)
class ImageJob:
    source: Path
    name: str  # output path inside each kind's folder, without suffix (posix, may hold subfolders)

    def targets(self, out: Path, outputs: Outputs) -> dict[str, Path]:
        found = {}
        if outputs.masks:
            found["masks"] = out / "masks" / f"{self.name}.png"
        if outputs.cutouts:
            found["cutouts"] = out / "cutouts" / f"{self.name}.png"
        if outputs.background is not None:
            suffix = ".jpg" if self.source.suffix.lower() in (".jpg", ".jpeg") else ".png"
            found["background"] = out / "background" / f"{self.name}{suffix}"
        return found


@dataclass
class Summary:
    done: int = 0
    already_done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    frames: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------- what to segment, where


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def plan_images(folder: Path, recursive: bool) -> tuple[list[ImageJob], int, int]:
    """(jobs in name order, other files ignored, subfolders not read) of an image folder.

    Output names drop the suffix; two inputs of one folder that would share a name (``a.jpg``,
    ``a.png``) keep theirs as ``a_jpg``, ``a_png``. Hidden files and folders are left out, and
    symlinked folders are not followed."""
    found: list[Path] = []
    ignored = unread_dirs = 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        if not recursive:
            unread_dirs += len(dirs)
            dirs[:] = []
        for name in sorted(files):
            if _is_hidden(name):
                continue
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(path)
            else:
                ignored += 1
    stems: dict[str, int] = {}
    for path in found:
        key = path.relative_to(folder).with_suffix("").as_posix()
        stems[key] = stems.get(key, 0) + 1
    jobs = []
    for path in found:
        key = path.relative_to(folder).with_suffix("").as_posix()
        name = key if stems[key] == 1 else f"{key}_{path.suffix.lower().lstrip('.')}"
        jobs.append(ImageJob(path, name))
    return jobs, ignored, unread_dirs


def check_no_overlap(source: Path, out: Path) -> None:
    """Refuse an output folder that is the input, lies inside it or holds it (inputs are never written)."""
    src, dst = source.resolve(), out.resolve()
    if source.is_dir():
        if dst == src or src in dst.parents or dst in src.parents:
            raise StageError(f"output folder {out} overlaps the input folder {source}; choose an output folder "
                             "outside it (--out DIR)")
    elif dst in src.parents:
        raise StageError(f"output folder {out} holds the input {source}; choose another one (--out DIR)")


def prepare_output_folder(out: Path) -> None:
    """Create ``out`` with its marker, or accept it when empty or written by segment; drop stale temporaries."""
    if out.exists() and not out.is_dir():
        raise StageError(f"{out}: exists and is not a folder; choose another output folder (--out DIR)")
    if out.is_dir() and not (out / SEGMENT_MARKER).is_file() and any(out.iterdir()):
        raise StageError(f"{out}: this folder holds files `segment` did not write (no {SEGMENT_MARKER}); "
                         "choose a new or empty output folder (--out DIR)")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / SEGMENT_MARKER).is_file():
        (out / SEGMENT_MARKER).write_text(_MARKER_TEXT)
    for root, dirs, files in os.walk(out):
        for name in [*files, *dirs]:
            if _TEMPORARY.match(name):
                path = Path(root) / name
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        dirs[:] = [d for d in dirs if not _TEMPORARY.match(d)]


# ---------------------------------------------------------------- encoding and writing


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA) uint8 array."""
    import cv2

    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise StageError("PNG encoding failed")
    return data.tobytes()


def encode_picture(rgb: np.ndarray, suffix: str, jpeg_quality: int) -> bytes:
    import cv2

    if suffix == ".png":
        return encode_png(rgb)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise StageError("JPEG encoding failed")
    return data.tobytes()


def alpha_of(logit, soft_edges: bool) -> np.ndarray:
    from pipeline.inference import person_mask, person_probability

    return person_probability(logit) if soft_edges else person_mask(logit).astype(np.float32)


def render(rgb: np.ndarray, logit, outputs: Outputs, soft_edges: bool) -> dict[str, np.ndarray]:
    """The requested outputs of one image (or frame) and its logit map, as arrays."""
    from pipeline.compositing import cutout_rgba, mask_image, replace_background
    from pipeline.inference import person_mask

    rendered = {"masks": mask_image(person_mask(logit))}
    if outputs.cutouts or outputs.background is not None:
        alpha = alpha_of(logit, soft_edges)
        if outputs.cutouts:
            rendered["cutouts"] = cutout_rgba(rgb, alpha)
        if outputs.background is not None:
            rendered["background"] = replace_background(rgb, alpha, outputs.background)
    return rendered


def write_image_outputs(job: ImageJob, rgb: np.ndarray, logit, outputs: Outputs, out: Path,
                        params: SegmentParams) -> None:
    rendered = render(rgb, logit, outputs, params.soft_edges)
    for kind, target in job.targets(out, outputs).items():
        data = (encode_picture(rendered[kind], target.suffix, params.jpeg_quality) if kind == "background"
                else encode_png(rendered[kind]))
        write_bytes(target, data)  # a temporary sibling renamed into place


# ---------------------------------------------------------------- images


def segment_images(jobs: list[ImageJob], segmenter: Segmenter, outputs: Outputs, out: Path, params: SegmentParams,
                   *, input_root: Path, progress: bool, summary: Summary) -> None:
    """Segment ``jobs`` in batches; decoding and writing overlap the network in a thread pool."""
    from tqdm import tqdm

    from pipeline.images import load_image

    def shown(text: str) -> str:
        return strip_root(text, input_root)

    ahead = max(2 * params.batch_size, 4)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="segment") as pool, \
            tqdm(total=len(jobs), unit="image", desc="segment", disable=not progress, file=sys.stderr) as bar:
        queue = iter(jobs)
        reads: deque[tuple[ImageJob, Future]] = deque()
        writes: deque[Future] = deque()

        def top_up() -> None:
            for job in queue:
                reads.append((job, pool.submit(load_image, job.source, params.max_image_pixels)))
                if len(reads) >= ahead:
                    return

        top_up()
        while reads:
            batch = []
            while reads and len(batch) < params.batch_size:
                job, future = reads.popleft()
                try:
                    batch.append((job, future.result().rgb))
                except BadImageError as exc:
                    summary.skipped.append((shown(str(job.source)), shown(str(exc))))
                    bar.update(1)
            top_up()
            if not batch:
                continue
            logits = segmenter.foreground_logits([rgb for _, rgb in batch])
            for (job, rgb), logit in zip(batch, logits):
                writes.append(pool.submit(write_image_outputs, job, rgb, logit, outputs, out, params))
            while len(writes) > ahead or (writes and writes[0].done()):
                _finish(writes.popleft())
            summary.done += len(batch)
            bar.update(len(batch))
        while writes:
            _finish(writes.popleft())


def _finish(write: Future) -> None:
    try:
        write.result()
    except OSError as exc:
        raise StageError(f"cannot write an output: {exc}") from None


# ---------------------------------------------------------------- video


@contextlib.contextmanager
def atomic_video(target: Path) -> Iterator[Path]:
    """A temporary path with ``target``'s suffix (the video writer picks the container by it),
    renamed onto ``target`` when the block ends without an exception, removed otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def video_targets(video: Path, out: Path, outputs: Outputs) -> dict[str, Path]:
    stem = video.stem
    found = {}
    if outputs.background is not None:
        found["background"] = out / f"{stem}_background.mp4"
    if outputs.masks:
        found["masks"] = out / f"{stem}_mask.mp4"
        if outputs.frames:
            found["frames"] = out / f"{stem}_masks"
    if outputs.cutouts:
        found["cutouts"] = out / f"{stem}_cutouts"
    return found


def segment_video(video: Path, segmenter: Segmenter, outputs: Outputs, out: Path, params: SegmentParams, *,
                  progress: bool, summary: Summary) -> None:
    """Every frame of ``video`` through the network; output videos keep its fps, frame size and count."""
    import cv2
    from tqdm import tqdm

    targets = video_targets(video, out, outputs)
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise StageError(f"{video}: cannot be opened as a video (unknown format or corrupt)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps or not np.isfinite(fps) or fps <= 0:
        capture.release()
        raise StageError(f"{video}: the video gives no frame rate; cannot write an output video at the same speed")
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fourcc = cv2.VideoWriter_fourcc(*params.video_fourcc)
    writers: dict[str, object] = {}
    frames = 0
    try:
        with contextlib.ExitStack() as stack, \
                tqdm(total=total, unit="frame", desc=f"segment {video.name}", disable=not progress,
                     file=sys.stderr) as bar:
            temporary = {kind: stack.enter_context(atomic_dir(path) if kind in ("frames", "cutouts")
                                                   else atomic_video(path))
                         for kind, path in targets.items()}
            try:
                while True:
                    batch = []
                    while len(batch) < params.batch_size:
                        ok, frame = capture.read()
                        if not ok:
                            break
                        batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                    if not batch:
                        break
                    if not writers:
                        height, width = batch[0].shape[:2]
                        for kind in ("background", "masks"):
                            if kind in temporary:
                                writer = cv2.VideoWriter(str(temporary[kind]), fourcc, fps, (width, height))
                                if not writer.isOpened():
                                    raise StageError(f"cannot write a {params.video_fourcc} video to "
                                                     f"{targets[kind].name} (segment.video_fourcc)")
                                writers[kind] = writer
                    for rgb, logit in zip(batch, segmenter.foreground_logits(batch)):
                        rendered = render(rgb, logit, outputs, params.soft_edges)
                        if "background" in writers:
                            writers["background"].write(cv2.cvtColor(rendered["background"], cv2.COLOR_RGB2BGR))
                        if "masks" in writers:
                            writers["masks"].write(cv2.cvtColor(rendered["masks"], cv2.COLOR_GRAY2BGR))
                        if "frames" in temporary:
                            (temporary["frames"] / f"{frames:06d}.png").write_bytes(encode_png(rendered["masks"]))
                        if "cutouts" in temporary:
                            (temporary["cutouts"] / f"{frames:06d}.png").write_bytes(encode_png(rendered["cutouts"]))
                        frames += 1
                    bar.update(len(batch))
                if frames == 0:
                    raise StageError(f"{video}: no frame could be decoded")
            finally:
                for writer in writers.values():
                    writer.release()
    finally:
        capture.release()
    summary.done += 1
    summary.frames += frames


# ---------------------------------------------------------------- the command


def _parser():
    parser = make_parser("segment", __doc__)
    parser.add_argument("input", help="a folder of images, one image, or a video file")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--arch", help="the model `train` wrote for this architecture: <paths.models>/ARCH/model.pt")
    model.add_argument("--model", help="a model.pt written by `train`, wherever it is")
    parser.add_argument("--out", help="output folder (default: <segment.output_dir>/<input name>)")
    parser.add_argument("--recursive", action="store_true", help="read the input folder's subfolders too")
    parser.add_argument("--masks", action="store_true", help="0/255 PNG masks (the default output)")
    parser.add_argument("--cutouts", action="store_true", help="RGBA PNG cut-outs of the person")
    parser.add_argument("--background", metavar="SPEC",
                        help="replace the background: a colour, blur[:SIGMA] or an image file")
    parser.add_argument("--frames", action="store_true", help="video: also each frame's exact PNG mask")
    parser.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs exist already")
    parser.add_argument("--runtime", choices=RUNTIMES, help="override segment.runtime")
    return parser


def _outputs(args, params: SegmentParams) -> Outputs:
    from pipeline.compositing import parse_background

    background = None
    if args.background is not None:
        try:
            background = parse_background(args.background, default_blur_sigma=params.blur_sigma,
                                          max_pixels=params.max_image_pixels)
        except ValueError as exc:
            raise StageError(f"--background: {exc}") from None
    masks = args.masks or not (args.cutouts or background is not None)
    return Outputs(masks=masks or args.frames, cutouts=args.cutouts, background=background, frames=args.frames)


def _input_name(source: Path) -> str:
    name = source.resolve().stem if source.is_file() else source.resolve().name
    return name or "input"


def _body(args) -> int:
    paths = load_section(ProjectPaths, "paths", args.params)
    params = load_section(SegmentParams, "segment", args.params)
    model_path = Path(args.model) if args.model else trained_model_path(paths.models, args.arch)
    if args.model and not model_path.is_file():
        raise StageError(f"{model_path}: no such model file")
    source = Path(args.input)
    if not source.exists():
        raise StageError(f"{source}: no such file or folder")
    is_video = source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS
    if source.is_dir():
        jobs, ignored, unread_dirs = plan_images(source, args.recursive)
        if not jobs:
            hints = ([f"{unread_dirs} subfolder(s) not read: --recursive reads them"] if unread_dirs else []) + \
                    ([f"{ignored} file(s) that are not images by their extension"] if ignored else [])
            raise StageError(f"{source}: no images to segment ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                             + (f"; {'; '.join(hints)}" if hints else ""))
    elif is_video:
        jobs, ignored = [], 0
    elif source.suffix.lower() in IMAGE_EXTENSIONS:
        jobs, ignored = [ImageJob(source, source.stem)], 0
    else:
        raise StageError(f"{source}: neither an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) nor a video "
                         f"({', '.join(sorted(VIDEO_EXTENSIONS))}) by its extension")
    outputs = _outputs(args, params)
    if args.frames and not is_video:
        raise StageError("--frames is for a video input (images get their masks with --masks)")
    out = Path(args.out) if args.out else Path(params.output_dir) / _input_name(source)
    check_no_overlap(source, out)
    prepare_output_folder(out)

    summary = Summary()
    if is_video:
        targets = video_targets(source, out, outputs)
        pending_video = args.overwrite or not all(t.exists() for t in targets.values())
        summary.already_done = 0 if pending_video else 1
        pending: list[ImageJob] = []
    else:
        pending = [j for j in jobs if args.overwrite or not all(t.exists() for t in j.targets(out, outputs).values())]
        summary.already_done = len(jobs) - len(pending)
        pending_video = False
    if pending or pending_video:
        trained = load_trained_model(model_path, args.arch)
        if params.threads:
            import torch

            torch.set_num_threads(params.threads)
        segmenter = Segmenter(trained, args.runtime or params.runtime, threads=params.threads,
                              device=resolve_device(params.device))
        if segmenter.note:
            print(f"segment: {segmenter.note}; running PyTorch", file=sys.stderr)
        start = time.perf_counter()
        if is_video:
            segment_video(source, segmenter, outputs, out, params, progress=not args.quiet, summary=summary)
        else:
            segment_images(pending, segmenter, outputs, out, params, input_root=source if source.is_dir()
                           else source.parent, progress=not args.quiet, summary=summary)
        summary.seconds = time.perf_counter() - start
        runtime = f"{trained.arch} on {segmenter.runtime}"
    else:
        runtime = "nothing to run"
    return _report(summary, out, outputs, runtime, len(jobs), ignored, is_video, args.overwrite)


def _report(summary: Summary, out: Path, outputs: Outputs, runtime: str, total: int, ignored: int,
            is_video: bool, overwrite: bool) -> int:
    import pandas as pd

    skipped_csv = out / "skipped.csv"
    if summary.skipped:
        write_csv(skipped_csv, pd.DataFrame(summary.skipped, columns=["input", "reason"]))
    else:
        skipped_csv.unlink(missing_ok=True)
    kinds = ", ".join(outputs.kinds() + (["frames"] if outputs.frames else []))
    rate = ""
    if summary.seconds > 0 and (summary.done or summary.frames):
        count, unit = (summary.frames, "frames") if is_video else (summary.done, "images")
        rate = f", {count / summary.seconds:.1f} {unit}/s"
    what = f"{summary.frames} frame(s) of 1 video" if is_video else f"{summary.done} of {total} image(s)"
    print(f"segment: {what} -> {out} ({kinds}; {runtime}{rate})")
    if summary.already_done:
        print(f"  {summary.already_done} already done, kept" + ("" if overwrite else " (--overwrite redoes them)"))
    if ignored:
        print(f"  {ignored} file(s) ignored: not images by their extension")
    if summary.skipped:
        print(f"  {len(summary.skipped)} skipped (listed in {skipped_csv}):", file=sys.stderr)
        for name, reason in summary.skipped[:10]:
            print(f"    {reason}" if reason.startswith(name) else f"    {name}: {reason}", file=sys.stderr)
        if len(summary.skipped) > 10:
            print(f"    ... and {len(summary.skipped) - 10} more", file=sys.stderr)
        if summary.done == 0 and summary.already_done == 0:
            raise StageError(f"none of the {len(summary.skipped)} image(s) could be read")
    return 0


def main(argv=None) -> int:
    return run_main(_body, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
