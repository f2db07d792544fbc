"""Stage complexity: metrics shape and values, params validation, main end to end (no timing asserted)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.stages.complexity import ComplexityParams, main, measure
from pipeline.params import ParamsError, parse_section
from params_helpers import quick_section, write_params


def complexity(**changes) -> ComplexityParams:
    return ComplexityParams(**quick_section("complexity", **changes))


def fake_latency(names):
    return {name: [3.0, 1.0, 2.0 + i] for i, name in enumerate(names)}


def test_metrics_have_exactly_the_shape_compare_reads():
    params = complexity(architectures=["extremec3net", "extremec3net_stage1"])
    metrics, table = measure(params, latency_fn=fake_latency, progress=False)
    assert list(metrics) == ["extremec3net", "extremec3net_stage1"]
    for row in metrics.values():
        assert set(row) == {"params", "flops_all_ops", "flops_espnetv2", "latency_ms"}
        assert isinstance(row["params"], int)
        assert all(isinstance(row[k], float) for k in ("flops_all_ops", "flops_espnetv2", "latency_ms"))
    full = metrics["extremec3net"]
    assert full["params"] == 37_738
    assert round(full["flops_espnetv2"], 3) == 0.128
    assert full["flops_all_ops"] == pytest.approx(0.286, rel=0.01)
    assert full["latency_ms"] == 2.0  # median of [3, 1, 2]
    assert metrics["extremec3net_stage1"]["latency_ms"] == 3.0
    assert metrics["extremec3net_stage1"]["flops_espnetv2"] < full["flops_espnetv2"]
    assert list(table["architecture"]) == list(metrics)
    assert list(table["latency_min_ms"]) == [1.0, 1.0]


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ParamsError, match="complexity.architectures.0: .*unknown architecture 'no_such_net'"):
        parse_section(ComplexityParams, {"complexity": quick_section("complexity", architectures=["no_such_net"])},
                      "complexity")


def test_params_reject_typos_and_duplicates():
    with pytest.raises(ParamsError, match="unknown key"):
        parse_section(ComplexityParams, {"complexity": quick_section("complexity", architecture=["extremec3net"])},
                      "complexity")
    with pytest.raises(ParamsError, match="more than once"):
        parse_section(ComplexityParams,
                      {"complexity": quick_section("complexity", architectures=["portraitnet", "portraitnet"])},
                      "complexity")


SMALL = {"architectures": ["extremec3net_stage1"], "input_size": 64, "latency_form": "train",
         "latency_runtime": "torch", "latency_runs": 2, "warmup_runs": 0, "threads": 1}


def test_main_writes_json_and_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project is the params file's folder; paths are relative to it
    params = write_params(tmp_path / "params.yaml", {"complexity": SMALL})
    out_json, out_csv = tmp_path / "m" / "complexity.json", tmp_path / "m" / "complexity.csv"
    code = main(["--params", str(params), "--metrics", str(out_json), "--table", str(out_csv), "--quiet"])
    assert code == 0
    metrics = json.loads(out_json.read_text())
    assert set(metrics) == {"extremec3net_stage1"}
    assert metrics["extremec3net_stage1"]["params"] == 33_178
    assert metrics["extremec3net_stage1"]["latency_ms"] > 0
    table = pd.read_csv(out_csv)
    assert table.loc[0, "runs"] == 2 and table.loc[0, "input_size"] == 64


def test_main_bad_params_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"complexity": {"latency_runs": 0}})
    assert main(["--params", str(params), "--metrics", str(tmp_path / "c.json")]) == 2
    assert "latency_runs" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_every_complexity_key_is_required():
    """params.yaml is the one source of these values: a section missing a key is refused, naming it."""
    section = quick_section("complexity")
    del section["latency_runtime"]
    with pytest.raises(ParamsError, match=r"complexity\.latency_runtime: Field required"):
        parse_section(ComplexityParams, {"complexity": section}, "complexity")


def test_main_writes_where_paths_metrics_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", {"paths": {"metrics": "figures"}, "complexity": SMALL})
    assert main(["--params", "params.yaml", "--quiet"]) == 0
    assert set(json.loads((tmp_path / "figures" / "complexity.json").read_text())) == {"extremec3net_stage1"}
    assert pd.read_csv(tmp_path / "figures" / "complexity.csv").loc[0, "architecture"] == "extremec3net_stage1"
    assert not (tmp_path / "metrics").exists()
