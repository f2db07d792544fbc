"""MediaPipe's selfie segmenter as the peer row: evaluated on real EG1800 portraits as our models are.

The prepared data is built here from ../shared (the EG1800 loader and prepare's decoder), so
the masks are the ones ``prepare`` writes; only a few test portraits, to stay CI-sized.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from params_helpers import write_params

from pipeline.images import write_image, write_mask_png
from pipeline.manifest import ManifestRow, to_frame
from pipeline.stages import evaluate

# evaluate's keys that the quick profile may not list yet; a test names them itself.
EVAL_KEYS = {"bootstrap_resamples": 1000, "confidence_level": 0.95, "peers": ["mediapipe", "mediapipe_landscape"]}
TEST_KEYS = ["00002", "00005", "00008", "00011", "00014", "00016"]  # EG1800 test portraits present in ../shared


def write_eg1800_test_split(shared: Path, prepared: Path, keys: list[str] | None) -> int:
    """``prepared``: EG1800 test portraits (``keys``; None = all) as prepare writes them; how many."""
    from pipeline.sources import LoaderReport
    from pipeline.sources.eg1800 import iter_eg1800_original
    from pipeline.stages.prepare import decode_item

    rows = []
    for item in iter_eg1800_original(shared / "eg1800", LoaderReport()):
        if item.split != "test" or item.skip_reason or (keys is not None and item.key not in keys):
            continue
        decoded = decode_item(item, None)
        image, mask = f"images/eg1800/{item.key}.png", f"masks/eg1800/{item.key}.png"
        write_image(prepared / image, decoded.image.rgb)
        write_mask_png(prepared / mask, decoded.mask)
        h, w = decoded.mask.shape
        rows.append(ManifestRow(id=f"eg1800/{item.key}", source="eg1800", split="test", image=image, mask=mask,
                                width=w, height=h))
    to_frame(rows).to_csv(prepared / "manifest.csv", index=False)
    return len(rows)


@pytest.fixture(scope="module")
def real_project(shared_datasets, tmp_path_factory):
    root = tmp_path_factory.mktemp("peer")
    assert write_eg1800_test_split(shared_datasets, root / "data" / "prepared", TEST_KEYS) == len(TEST_KEYS)
    write_params(root / "params.yaml", {"evaluate": {**EVAL_KEYS, "batch_size": 4, "workers": 0},
                                        "complexity": {"latency_runs": 5, "warmup_runs": 1}})
    return root


@pytest.mark.realdata
def test_both_peers_evaluated_on_real_portraits_like_our_models(real_project, monkeypatch):
    monkeypatch.chdir(real_project)
    assert evaluate.main(["--params", "params.yaml", "--quiet", "--peer", "mediapipe",
                          "--peer", "mediapipe_landscape"]) == 0
    for peer, size in (("mediapipe", [256, 256]), ("mediapipe_landscape", [144, 256])):
        table = pd.read_csv(real_project / "models" / "peers" / peer / "per_image.csv", dtype={"image_key": str})
        assert list(table.columns) == evaluate.PER_IMAGE_COLUMNS
        assert table["image_key"].tolist() == TEST_KEYS
        assert (table["iou"] > 0.85).all(), table  # MediaPipe finds these portraits (96 mIoU over all 135)
        metrics = json.loads((real_project / "metrics" / "eval" / f"peer_{peer}.json").read_text())
        assert metrics["kind"] == "peer" and metrics["input_size"] == size
        assert metrics["miou"] == pytest.approx(table["iou"].mean() * 100, abs=1e-3)
        assert metrics["miou_low"] <= metrics["miou"] <= metrics["miou_high"]
        assert 100_000 < metrics["params"] < 140_000  # "about 0.12M parameters", counted from the port
        assert metrics["latency_ms"] > 0 and metrics["flops_all_ops"] > 0 and "port" in metrics["latency_runtime"]


@pytest.mark.realdata
def test_peer_masks_are_mediapipes_predict_at_the_images_size(real_project):
    """The evaluation path (dataset fit + batched forward + resize) gives MediaPipe's own predict, > 0.5."""
    import functools

    from pipeline.manifest import load_sample, read_manifest
    from pipeline.teachers.mediapipe import MediaPipeSelfieSegmenter

    prepared = real_project / "data" / "prepared"
    frame = read_manifest(prepared).iloc[:3]
    segmenter = MediaPipeSelfieSegmenter("general")
    dataset = evaluate.OriginalSizeDataset(prepared, frame,
                                           fit=functools.partial(evaluate._mediapipe_fit, size=segmenter.input_size))
    batch = evaluate.collate_original_size([dataset[i] for i in range(len(dataset))])
    masks = evaluate.predict_peer_masks(segmenter, batch["image"], [m.shape for m in batch["mask"]])
    images = [load_sample(prepared, row)[0] for _, row in frame.iterrows()]
    for mask, probability, truth in zip(masks, segmenter.predict(images, batch_size=2), batch["mask"]):
        assert mask.shape == truth.shape == probability.shape
        assert np.array_equal(mask, probability > 0.5)
