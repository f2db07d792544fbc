import subprocess
import sys

from pipeline import cli
from params_helpers import write_params


def test_help_lists_every_stage(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("download", "prepare", "crop-portraits", "train", "evaluate", "bias-report"):
        assert f"  {name}" in out


def test_unknown_command_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_bad_params_value_names_the_key_and_exits_2(tmp_path):
    params = write_params(tmp_path / "params.yaml", {"prepare": {"workers": 0}})
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "prepare", "--params", str(params)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "prepare.workers" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_input_is_a_clear_error(tmp_path):
    params = write_params(tmp_path / "params.yaml",
                          {"prepare": {"datasets": [{"name": "a", "format": "ccp", "root": "nowhere"}]}})
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "prepare", "--params", str(params)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr and "did `download` run?" in proc.stderr
    assert not (tmp_path / "data" / "prepared").exists()
