"""The comparison stage: joins complexity and accuracy, refuses gaps, writes table, metrics and plot."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from params_helpers import write_params

from pipeline.stage import StageError
from pipeline.stages.compare import build_table, main, summary_metrics, to_markdown

COMPLEXITY = {
    "tiny": {"params": 37_738, "flops_all_ops": 0.286, "flops_espnetv2": 0.128, "latency_ms": 33.5},
    "big": {"params": 12_411_204, "flops_all_ops": 5.2, "flops_espnetv2": 2.6, "latency_ms": 41.0},
    "unused": {"params": 10, "flops_all_ops": 0.0, "flops_espnetv2": 0.0, "latency_ms": 0.1},
}
EVALS = {"tiny": {"miou": 94.98, "boundary_f1": 80.0}, "big": {"miou": 95.5}}


def test_table_joins_figures_in_the_order_given():
    table = build_table(["big", "tiny"], COMPLEXITY, EVALS, {"tiny": 37_738, "big": None})
    assert list(table["arch"]) == ["big", "tiny"]
    tiny = table.set_index("arch").loc["tiny"]
    assert tiny["params"] == 37_738 and tiny["paper_params"] == 37_738
    assert tiny["gmacs_espnetv2"] == pytest.approx(0.128) and tiny["miou"] == pytest.approx(94.98)
    assert pd.isna(table.set_index("arch").loc["big", "paper_params"])


@pytest.mark.parametrize("archs, complexity, evals, message", [
    (["tiny", "ghost"], COMPLEXITY, EVALS, "complexity stage"),
    (["tiny"], {"tiny": {"params": 5, "flops_all_ops": 1.0}}, EVALS, "lack"),
    (["unused"], COMPLEXITY, EVALS, "evaluate --arch unused"),
    (["tiny"], COMPLEXITY, {"tiny": {"mean_iou": 3}}, "no 'miou'"),
    (["tiny"], {"tiny": {**COMPLEXITY["tiny"], "params": 1.5}}, EVALS, "whole number"),
    (["tiny"], {"tiny": {**COMPLEXITY["tiny"], "latency_ms": "fast"}}, EVALS, "finite number"),
    (["tiny", "tiny"], COMPLEXITY, EVALS, "twice"),
])
def test_gaps_and_bad_values_are_refused_with_the_fix(archs, complexity, evals, message):
    with pytest.raises(StageError, match=message):
        build_table(archs, complexity, evals)


def test_markdown_uses_paper_units_and_metrics_name_the_best():
    table = build_table(["tiny", "big"], COMPLEXITY, EVALS, {"tiny": 37_738})
    md = to_markdown(table).splitlines()
    assert len(md) == 4 and md[0].startswith("| Model | Params |")
    assert "| tiny | 37.7K | 37.7K | 0.286 | 0.128 | 33.5 | 94.98 | – | 80.00 |" in md
    assert "| big | 12.41M | – |" in md[3]
    metrics = summary_metrics(table)
    assert metrics["best_miou"] == {"arch": "big", "miou": 95.5}
    assert metrics["architectures"]["tiny"]["params"] == 37_738


REAL_NAMES = {"tiny": "extremec3net", "big": "portraitnet"}  # the stage takes registered architectures only


def test_main_writes_every_output(tmp_path, monkeypatch):
    """Inputs and outputs follow the paths section (paths.metrics, paths.reports)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figures" / "eval").mkdir(parents=True)
    (tmp_path / "figures" / "complexity.json").write_text(
        json.dumps({REAL_NAMES.get(k, k): v for k, v in COMPLEXITY.items()}))
    for arch, figures in EVALS.items():
        (tmp_path / "figures" / "eval" / f"{REAL_NAMES[arch]}.json").write_text(json.dumps(figures))
    params = write_params(tmp_path / "params.yaml", {"paths": {"metrics": "figures", "reports": "out"},
                                                     "compare": {"architectures": ["extremec3net", "portraitnet"],
                                                                 "peers": []}})
    assert main(["--params", str(params), "--quiet"]) == 0
    out = tmp_path / "out" / "compare"
    assert pd.read_csv(out / "table.csv")["arch"].tolist() == ["extremec3net", "portraitnet"]
    assert (out / "table.md").read_text().count("\n") == 4
    assert (out / "accuracy_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "figures" / "compare.json").read_text())["best_miou"]["arch"] == "portraitnet"


def test_main_says_which_stage_to_run_when_an_input_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"compare": {"architectures": ["extremec3net"], "peers": []}})
    assert main(["--params", str(params)]) == 2
    assert "portrait-curation complexity" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def test_a_single_architecture_still_gives_a_plot(tmp_path):
    from pipeline.stages.compare import plot_accuracy_vs_params

    table = build_table(["tiny"], COMPLEXITY, EVALS)
    plot_accuracy_vs_params(table, tmp_path / "one.png")
    assert (tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["one.png"]  # no temporary left behind


# ---------------------------------------------------------------- the peer row

PEER = {"miou": 96.07, "miou_low": 95.49, "miou_high": 96.64, "boundary_f1": 70.0, "kind": "peer",
        "label": "MediaPipe selfie (general, 256x256)", "params": 121_000, "flops_all_ops": 0.25,
        "flops_espnetv2": 0.12, "latency_ms": 2.5}


def test_a_peer_is_its_own_marked_row_and_never_our_best():
    table = build_table(["tiny", "big"], COMPLEXITY, EVALS, {"tiny": 37_738}, {"mediapipe": PEER})
    assert table["kind"].tolist() == ["trained", "trained", "peer"]
    md = to_markdown(table)
    row = next(line for line in md.splitlines() if "mediapipe" in line.lower())
    assert row.startswith("| MediaPipe selfie (general, 256x256) — peer, pretrained, not trained here | 121.0K | – |")
    assert "2.5 (port) | 96.07 | 95.49–96.64 | 70.00 |" in row
    assert "not MediaPipe's own runtime" in md
    metrics = summary_metrics(table)
    assert metrics["best_miou"]["arch"] == "big"  # the peer is more accurate, but not one of ours
    assert metrics["peers"]["mediapipe"]["miou_low"] == 95.49 and "mediapipe" not in metrics["architectures"]


@pytest.mark.parametrize("figures, message", [
    ({k: v for k, v in PEER.items() if k != "latency_ms"}, "evaluate --peer mediapipe"),
    ({**PEER, "params": 0}, "positive whole number"),
    ({**PEER, "miou_low": "low"}, "finite number"),
])
def test_a_broken_peer_evaluation_is_refused_with_the_fix(figures, message):
    with pytest.raises(StageError, match=message):
        build_table(["tiny"], COMPLEXITY, EVALS, None, {"mediapipe": figures})


def test_stage_reads_the_peer_and_plots_it_apart(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics" / "eval").mkdir(parents=True)
    (tmp_path / "metrics" / "complexity.json").write_text(json.dumps({"extremec3net": COMPLEXITY["tiny"]}))
    (tmp_path / "metrics" / "eval" / "extremec3net.json").write_text(json.dumps(EVALS["tiny"]))
    params = write_params(tmp_path / "params.yaml", {"compare": {"architectures": ["extremec3net"],
                                                                 "peers": ["mediapipe"]}})
    assert main(["--params", str(params), "--quiet"]) == 2
    assert "evaluate --peer mediapipe" in capsys.readouterr().err  # not evaluated yet: says how
    (tmp_path / "metrics" / "eval" / "peer_mediapipe.json").write_text(json.dumps(PEER))
    assert main(["--params", str(params), "--quiet"]) == 0
    table = pd.read_csv(tmp_path / "reports" / "compare" / "table.csv")
    assert table["arch"].tolist() == ["extremec3net", "mediapipe"] and table["kind"].tolist() == ["trained", "peer"]
    assert (tmp_path / "reports" / "compare" / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    compare = json.loads((tmp_path / "metrics" / "compare.json").read_text())
    assert compare["peers"]["mediapipe"]["miou"] == 96.07 and compare["best_miou"]["arch"] == "extremec3net"
