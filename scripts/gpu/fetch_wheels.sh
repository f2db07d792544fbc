#!/usr/bin/env bash
# Wheels the device machine lacks (it reaches no registry): pydantic, which pipeline.models imports, for
# its Python 3.12, at the versions of this venv. Writes tmp/gpu/wheels/ (git-ignored; carried with tmp/gpu).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
versions=$("$PY" - <<'PYEOF'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("pydantic", "pydantic-core", "annotated-types",
                                                          "typing-inspection")))
PYEOF
)
mkdir -p tmp/gpu/wheels
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d tmp/gpu/wheels $versions
ls -l tmp/gpu/wheels
