"""`dvc repro` skips unchanged stages and reruns only what a changed param or code file touches.

The project under test is the real dvc.yaml's first two stages as they are (their
``${paths.*}`` outputs and their code deps on ``pipeline/...``), run on a copy of the
package so that editing one module of the copy is a code change DVC must see.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.stages.download import tree_sha256
from params_helpers import quick_params

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _sh(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_repro_twice_does_nothing_and_a_param_or_code_change_reruns_only_its_stage(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    mirror = tmp_path / "mirror" / "faces"
    (mirror / "images").mkdir(parents=True)
    (mirror / "masks").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 6, 3), 40 * i, np.uint8)).save(mirror / "images" / f"{i}.png")
        Image.fromarray(np.full((8, 6), 255 * (i % 2), np.uint8)).save(mirror / "masks" / f"{i}.png")
    proj = tmp_path / "proj"
    proj.mkdir()
    # the package the stages run (PYTHONPATH below) and the code deps dvc.yaml names: one copy
    shutil.copytree(REPO / "pipeline", proj / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    pipeline_yaml = {"stages": {k: stages[k] for k in ("download", "prepare")}}
    code_deps = {name: [d for d in stage["deps"] if d.startswith("pipeline/")]
                 for name, stage in pipeline_yaml["stages"].items()}
    assert "pipeline/stages/prepare.py" in code_deps["prepare"]  # the deps are kept, not stripped
    assert "pipeline/stages/prepare.py" not in code_deps["download"]
    (proj / "dvc.yaml").write_text(yaml.safe_dump(pipeline_yaml))
    params = quick_params()  # paths: as the real profile names them (dvc.yaml interpolates ${paths.*})
    params["download"] = {"mirror": str(tmp_path / "mirror"), "sources": {"faces": {
        "url": "https://example.invalid/faces.zip", "mirror": "faces", "mirror_sha256": tree_sha256(mirror)}}}
    params["prepare"] = {**params["prepare"], "workers": 1,
                         "datasets": [{"name": "faces", "format": "folder", "root": "faces"}]}
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(proj), "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    dvc = [sys.executable, "-m", "dvc"]
    _sh(["git", "init", "-q"], proj, env)
    _sh(dvc + ["init", "-q"], proj, env)
    first = _sh(dvc + ["repro"], proj, env)
    assert "Running stage 'download'" in first and "Running stage 'prepare'" in first
    raw, prepared = proj / params["paths"]["raw"], proj / params["paths"]["prepared"]
    assert (raw / "faces").is_dir() and (prepared / "manifest.csv").is_file()
    second = _sh(dvc + ["repro"], proj, env)
    assert "Running stage" not in second
    params["prepare"]["datasets"][0]["val_fraction"] = 0.5
    params["prepare"]["datasets"][0]["split"] = "train"
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    third = _sh(dvc + ["repro"], proj, env)
    assert "Running stage 'prepare'" in third and "Running stage 'download'" not in third
    # a change to a module only prepare imports reruns prepare alone
    with open(proj / "pipeline/stages/prepare.py", "a", encoding="utf-8") as fh:
        fh.write("\n# an edit\n")
    fourth = _sh(dvc + ["repro"], proj, env)
    assert "Running stage 'prepare'" in fourth and "Running stage 'download'" not in fourth
    assert "Running stage" not in _sh(dvc + ["repro"], proj, env)
