"""``portrait-curation segment`` on real EG1800 portraits: masks aligned with each image and with
the model's own prediction, a trained model's masks close to the ground truth, cut-outs and
backgrounds that keep the person, unreadable files skipped with a reason, an empty folder
refused, videos that keep their frame count, size and rate, and outputs that are never torn.

The model is an ExtremeC3Net trained here for a few dozen steps on a handful of EG1800
training portraits (about a minute on one core), so the accuracy test runs everywhere; the
same test shows that an untrained network of the same architecture stays under the floor,
so the floor cannot pass by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from params_helpers import write_params
from pipeline.checkpoint import save_checkpoint
from pipeline.images import load_image
from pipeline.metrics import iou
from pipeline.models import build_model
from pipeline.tools import segment

REPO = Path(__file__).resolve().parents[1]
INPUT_SIZE = 96
TRAIN_IMAGES, TRAIN_STEPS, TEST_IMAGES = 24, 40, 8
KWARGS = {"num_classes": 1, "p": 1, "q": 5}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

pytestmark = pytest.mark.realdata


# ---------------------------------------------------------------- fixtures


def _eg1800_items(shared: Path, split: str, count: int):
    from pipeline.sources.base import LoaderReport
    from pipeline.sources.eg1800 import iter_eg1800_original

    items = [i for i in iter_eg1800_original(shared / "eg1800", LoaderReport())
             if i.skip_reason is None and i.split == split]
    return items[:count]


@pytest.fixture(scope="module")
def eg1800(shared_datasets):
    return {"train": _eg1800_items(shared_datasets, "train", TRAIN_IMAGES),
            "test": _eg1800_items(shared_datasets, "test", TEST_IMAGES)}


def _normalised(rgb: np.ndarray, size: int) -> torch.Tensor:
    """The network's input, written out here independently of pipeline.inference."""
    resized = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float().div_(255.0)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def expected_mask(model, rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """What the model predicts for ``rgb``: logits at the training size, upsampled, > 0."""
    with torch.inference_mode():
        logit = model(_normalised(rgb, size)[None])[:, :1]
        full = F.interpolate(logit, size=rgb.shape[:2], mode="bilinear", align_corners=False)
    return (full[0, 0] > 0).numpy()


def _train_tiny_extremec3net(items) -> torch.nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine run several times slower
    try:
        images = [load_image(i.image_path).rgb for i in items]
        x_all = torch.stack([_normalised(rgb, INPUT_SIZE) for rgb in images])
        y_all = torch.stack([torch.from_numpy(cv2.resize(i.read_mask().astype(np.uint8), (INPUT_SIZE, INPUT_SIZE),
                                                         interpolation=cv2.INTER_NEAREST)).float() for i in items])
        torch.manual_seed(0)
        model = build_model("extremec3net", **KWARGS).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        generator = torch.Generator().manual_seed(0)
        for _ in range(TRAIN_STEPS):
            index = torch.randint(0, len(items), (8,), generator=generator)
            x, y = x_all[index], y_all[index]
            flip = torch.rand(8, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None], y.flip(-1), y)
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _save_model(model, path: Path) -> Path:
    save_checkpoint(path, {"arch": "extremec3net", "config": KWARGS, "model": model.state_dict(),
                           "input_size": INPUT_SIZE})
    return path


@pytest.fixture(scope="module")
def tiny_model(eg1800, tmp_path_factory):
    model = _train_tiny_extremec3net(eg1800["train"])
    return model, _save_model(model, tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (the quick profile) as the working directory."""
    root = tmp_path / "project"
    write_params(root / "params.yaml")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def photos(eg1800, tmp_path):
    """A folder of the EG1800 test portraits (copies: inputs a run must leave untouched)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for item in eg1800["test"]:
        shutil.copy(item.image_path, folder / item.image_path.name)
    return folder


def run(*argv) -> int:
    return segment.main([*map(str, argv), "--quiet"])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _read_png(path: Path, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    assert image is not None, f"{path} does not decode"
    return image


# ---------------------------------------------------------------- masks and accuracy


def test_the_network_sees_what_evaluate_shows_it(eg1800):
    """resize_for_network is eval_transform's resize, pixel for pixel (what evaluate measures)."""
    from pipeline.data import eval_transform
    from pipeline.inference import resize_for_network

    rgb = load_image(eg1800["test"][0].image_path).rgb
    assert np.array_equal(resize_for_network(rgb, 224), eval_transform(224)(image=rgb)["image"])


def test_masks_have_each_images_size_and_are_the_models_prediction(tiny_model, photos, project, tmp_path):
    """Exactly the prediction one image at a time; batched, the same up to float rounding (a
    batch may take other kernels), with images of different sizes in one batch."""
    model, model_path = tiny_model
    small = photos / "small.png"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(sorted(photos.iterdir())[0])), (301, 217)))
    inputs = _snapshot(photos)
    for batch_size in (1, 4):
        write_params(project / "params.yaml", {"segment": {"batch_size": batch_size}})
        out = tmp_path / f"batch{batch_size}"
        assert run(photos, "--model", model_path, "--out", out, "--runtime", "torch") == 0
        assert _snapshot(photos) == inputs  # inputs untouched
        for image_path in sorted(photos.iterdir()):
            rgb = load_image(image_path).rgb
            mask = _read_png(out / "masks" / f"{image_path.stem}.png")
            assert mask.dtype == np.uint8 and mask.shape == rgb.shape[:2]
            assert set(np.unique(mask).tolist()) <= {0, 255}
            differ = ((mask == 255) != expected_mask(model, rgb)).mean()
            assert differ == 0 if batch_size == 1 else differ < 1e-4, (image_path.name, batch_size, differ)


def test_a_trained_model_beats_trivial_masks_and_an_untrained_one_does_not(tiny_model, eg1800, photos, project,
                                                                           tmp_path):
    """mIoU against EG1800's ground truth above a floor that neither an all-person mask nor an
    untrained network of the same architecture reaches."""
    model, model_path = tiny_model
    truths = {i.image_path.stem: i.read_mask() for i in eg1800["test"]}
    all_person = float(np.mean([iou(np.ones_like(t), t) for t in truths.values()]))
    floor = max(0.70, all_person + 0.05)

    def miou(path: Path, out: Path) -> float:
        assert run(photos, "--model", path, "--out", out) == 0  # the default runtime (native where it builds)
        return float(np.mean([iou(_read_png(out / "masks" / f"{k}.png") == 255, t) for k, t in truths.items()]))

    torch.manual_seed(1)
    untrained = _save_model(build_model("extremec3net", **KWARGS).eval(), tmp_path / "untrained.pt")
    assert miou(untrained, tmp_path / "untrained") < floor
    trained = miou(model_path, tmp_path / "trained")
    assert trained > floor, f"mIoU {trained:.3f}, floor {floor:.3f} (all-person masks: {all_person:.3f})"


def test_native_and_torch_runtimes_agree(tiny_model, photos, project, tmp_path):
    from pipeline.native import NativeBuildError, load_library

    try:
        load_library()
    except NativeBuildError as exc:
        pytest.skip(f"native kernels do not build here: {exc}")
    _, model_path = tiny_model
    for runtime in ("torch", "native"):
        assert run(photos, "--model", model_path, "--out", tmp_path / runtime, "--runtime", runtime) == 0
    for path in sorted((tmp_path / "torch" / "masks").iterdir()):
        a, b = _read_png(path), _read_png(tmp_path / "native" / "masks" / path.name)
        assert (a != b).mean() < 1e-3, path.name  # float rounding flips at most the odd pixel at the edge


def test_cutouts_and_a_new_background_keep_the_person(tiny_model, photos, project, tmp_path):
    _, model_path = tiny_model
    out = tmp_path / "out"
    assert run(photos, "--model", model_path, "--out", out, "--masks", "--cutouts", "--background", "#00ff00") == 0
    for image_path in sorted(photos.iterdir()):
        rgb = load_image(image_path).rgb
        mask = _read_png(out / "masks" / f"{image_path.stem}.png") == 255
        bgra = _read_png(out / "cutouts" / f"{image_path.stem}.png")
        assert bgra.shape == (*rgb.shape[:2], 4)
        alpha = bgra[:, :, 3]
        assert ((alpha >= 128) != mask).mean() < 1e-3  # soft edges: alpha is the probability, > 0.5 = mask
        solid = alpha == 255
        assert np.array_equal(bgra[:, :, 2::-1][solid], rgb[solid])  # the person's own colours
        composed = cv2.cvtColor(_read_png(out / "background" / f"{image_path.stem}.jpg"), cv2.COLOR_BGR2RGB)
        assert composed.shape == rgb.shape
        if solid.any():
            assert np.abs(composed[solid].astype(int) - rgb[solid]).mean() < 4  # JPEG
        clear = alpha == 0
        if clear.any():
            assert np.abs(composed[clear].astype(int) - (0, 255, 0)).mean() < 8


# ---------------------------------------------------------------- bad input, reruns, output folders


def test_a_corrupt_file_is_skipped_with_its_reason(tiny_model, photos, project, tmp_path, capsys):
    _, model_path = tiny_model
    good = sorted(photos.iterdir())
    (photos / "broken.jpg").write_bytes(good[0].read_bytes()[:2000])  # a truncated JPEG
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert run(photos, "--model", model_path, "--out", out) == 0
    err = capsys.readouterr()
    assert "broken.jpg" in err.err and "corrupt or truncated" in err.err
    assert "1 file(s) ignored" in err.out
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(f"{p.stem}.png" for p in good)
    skipped = (out / "skipped.csv").read_text()
    assert "broken.jpg" in skipped and str(photos) not in skipped  # named relative to the input folder


def test_an_empty_folder_is_an_error(tiny_model, project, tmp_path, capsys):
    _, model_path = tiny_model
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert run(empty, "--model", model_path) == 2
    err = capsys.readouterr().err
    assert "no images to segment" in err and "--recursive" in err and "Traceback" not in err
    assert not (project / "segmented").exists()


def test_recursive_mirrors_subfolders(tiny_model, photos, project, tmp_path):
    _, model_path = tiny_model
    sub = photos / "sub"
    sub.mkdir()
    moved = sorted(photos.glob("*.jpg"))[0]
    moved.rename(sub / moved.name)
    assert run(photos, "--model", model_path, "--out", tmp_path / "flat") == 0
    assert not (tmp_path / "flat" / "masks" / "sub").exists()
    assert run(photos, "--model", model_path, "--out", tmp_path / "deep", "--recursive") == 0
    assert (tmp_path / "deep" / "masks" / "sub" / f"{moved.stem}.png").is_file()


def test_a_rerun_skips_what_is_done_and_overwrite_redoes_it(tiny_model, photos, project, tmp_path, capsys):
    _, model_path = tiny_model
    out = tmp_path / "out"
    assert run(photos, "--model", model_path, "--out", out) == 0
    first = sorted((out / "masks").iterdir())
    stale = out / "masks" / f".{first[0].name}.abcd1234.tmp"
    stale.write_bytes(b"half a file")  # what a killed run leaves
    first[0].unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in first[1:]}
    capsys.readouterr()
    assert run(photos, "--model", model_path, "--out", out) == 0
    assert f"{len(first) - 1} already done" in capsys.readouterr().out
    assert first[0].is_file() and not stale.exists()
    assert {p.name: p.stat().st_mtime_ns for p in first[1:]} == stamps
    time.sleep(0.01)
    assert run(photos, "--model", model_path, "--out", out, "--overwrite") == 0
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in first[1:])


def test_output_folders_that_overlap_the_input_or_hold_other_files_are_refused(tiny_model, photos, project,
                                                                               tmp_path, capsys):
    _, model_path = tiny_model
    inputs = _snapshot(photos)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("a user's file")
    for out, words in ((photos, "overlaps"), (photos / "out", "overlaps"), (tmp_path, "overlaps"),
                       (foreign, "did not write")):
        assert run(photos, "--model", model_path, "--out", out) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    assert _snapshot(photos) == inputs and (foreign / "keep.txt").read_text() == "a user's file"
    assert run(photos / sorted(inputs)[0], "--model", model_path, "--out", photos) == 2  # a file inside --out


def test_without_out_the_outputs_go_inside_the_project(tiny_model, photos, project):
    _, model_path = tiny_model
    assert run(photos, "--model", model_path, "--params", project / "params.yaml") == 0
    assert len(list((project / "segmented" / "photos" / "masks").iterdir())) == len(list(photos.iterdir()))


def test_a_missing_model_is_a_clear_error(photos, project, capsys):
    assert run(photos, "--arch", "extremec3net") == 2
    err = capsys.readouterr().err
    assert "no trained model" in err and "portrait-curation train --arch extremec3net" in err


def test_a_killed_run_leaves_only_complete_files(tiny_model, eg1800, project, tmp_path):
    """SIGKILL mid-run: every file left decodes in full, and the next run finishes the rest."""
    _, model_path = tiny_model
    folder = tmp_path / "many"
    folder.mkdir()
    for copy in range(6):
        for item in eg1800["test"]:
            shutil.copy(item.image_path, folder / f"{copy}_{item.image_path.name}")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.cli", "segment", str(folder), "--model", str(model_path),
               "--out", str(out), "--cutouts", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "cutouts").is_dir() and len(list((out / "cutouts").iterdir())) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for path in out.rglob("*.png"):
        assert not path.name.startswith(".")
        _read_png(path)  # complete: decodes
        assert cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED) is not None
    assert subprocess.run(command, cwd=project, env=env, capture_output=True).returncode == 0
    assert len(list((out / "cutouts").iterdir())) == len(list(folder.iterdir()))
    assert not [p for p in out.rglob(".*") if p.name != segment.SEGMENT_MARKER]


# ---------------------------------------------------------------- video


def _write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def _read_video(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames, fps


def test_a_video_keeps_its_frame_count_size_and_rate(tiny_model, eg1800, project, tmp_path):
    model, model_path = tiny_model
    portrait = cv2.resize(load_image(eg1800["test"][0].image_path).rgb, (120, 160))
    frames = [np.roll(portrait, 3 * i, axis=1) for i in range(9)]  # a slow pan
    video = tmp_path / "clip.mp4"
    _write_video(video, frames, fps=12.0)
    decoded, _ = _read_video(video)
    out = tmp_path / "out"
    write_params(project / "params.yaml", {"segment": {"batch_size": 1}})  # exact, frame by frame
    assert run(video, "--model", model_path, "--out", out, "--runtime", "torch", "--background", "blur:5",
               "--masks", "--frames") == 0
    for name in ("clip_background.mp4", "clip_mask.mp4"):
        written, fps = _read_video(out / name)
        assert len(written) == 9 and fps == pytest.approx(12.0)
        assert all(f.shape == (160, 120, 3) for f in written)
    masks = sorted((out / "clip_masks").glob("*.png"))
    assert [p.name for p in masks] == [f"{i:06d}.png" for i in range(9)]
    for path, frame in zip(masks, decoded):
        assert np.array_equal(_read_png(path) == 255, expected_mask(model, frame))


def test_an_unreadable_video_is_an_error(tiny_model, project, tmp_path, capsys):
    _, model_path = tiny_model
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00" * 4096)
    assert run(video, "--model", model_path, "--out", tmp_path / "out", "--background", "black") == 2
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "Traceback" not in err
    assert not list((tmp_path / "out").glob("*.mp4"))


# ---------------------------------------------------------------- compositing (no model)


def test_background_specs():
    from pipeline.compositing import parse_background

    assert parse_background("green", default_blur_sigma=9).colour == (0, 177, 64)
    assert parse_background("#102030", default_blur_sigma=9).colour == (16, 32, 48)
    assert parse_background("1, 2, 3", default_blur_sigma=9).colour == (1, 2, 3)
    assert parse_background("blur", default_blur_sigma=9).blur_sigma == 9
    assert parse_background("blur:2.5", default_blur_sigma=9).blur_sigma == 2.5
    for bad in ("#12345", "300,0,0", "blur:0", "no/such/file.jpg"):
        with pytest.raises(ValueError):
            parse_background(bad, default_blur_sigma=9)


def test_an_image_background_covers_the_frame_without_stretching(tmp_path):
    from pipeline.compositing import composite, cover, parse_background

    wide = np.zeros((100, 400, 3), np.uint8)
    wide[:, 150:250] = 255  # a white band in the middle
    assert cover(wide, 200, 100).shape == (200, 100, 3)
    assert (cover(wide, 200, 100)[:, 40:60] > 200).all()  # centre-cropped: the band stays in the middle
    cv2.imwrite(str(tmp_path / "bg.png"), wide)
    background = parse_background(str(tmp_path / "bg.png"), default_blur_sigma=9)
    frame = np.full((200, 100, 3), 7, np.uint8)
    alpha = np.zeros((200, 100), np.float32)
    alpha[:, :10] = 1.0
    out = composite(frame, alpha, background.canvas(frame))
    assert (out[:, :10] == 7).all() and (out[:, 45:55] > 200).all()
