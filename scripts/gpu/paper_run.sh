#!/usr/bin/env bash
# The paper run on the device machine (one CUDA GPU): ExtremeC3Net 300 + 300 epochs at batch 60 from
# profiles/paper.yaml, then the Table 3 ablations, as far as --budget-s allows; see scripts/gpu/paper_run.py.
#
# Here, once:   python scripts/gpu/pack_data.py --profile profiles/paper.yaml   (-> tmp/gpu/pack.npz)
#               bash scripts/gpu/fetch_wheels.sh                               (-> tmp/gpu/wheels/, pydantic)
# On the device (tmp/ is git-ignored, so it travels only when named in carry):
#   run(command="bash scripts/gpu/paper_run.sh", carry=["tmp/gpu"], timeout_s=600)
# To continue after a budget stop: copy the returned checkpoints.tar and summary.json into
# tmp/gpu/resume/ here and run the same command again.
# Extra arguments go to the driver (say --runs paper or --budget-s 300).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-tmp/gpu/out}"
mkdir -p "$OUT"
if ! python3 -c "import pydantic" 2>/dev/null && compgen -G "tmp/gpu/wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/paper_site \
        tmp/gpu/wheels/*.whl
    export PYTHONPATH="/tmp/paper_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
python3 scripts/gpu/paper_run.py --pack tmp/gpu/pack.npz --out "$OUT" --resume-from tmp/gpu/resume "$@" 2>&1 \
    | tee "$OUT/log.txt" || status=$?
# 3 = the budget stopped it with every checkpoint in $OUT/checkpoints.tar: not a failure
if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then exit "$status"; fi
exit 0
