#!/usr/bin/env bash
# The test command (README): installs what it needs, then runs the suite on CPU.
#   bash scripts/test.sh            the full suite (what CI and .ci/run run; ~15 min on 2 cores)
#   bash scripts/test.sh --fast     the fast tier: every test not marked `slow` (a few minutes; every
#                                   test module keeps at least one fast test: tests/test_tiers.py)
# Any other arguments go to pytest (e.g. -k name, -x, a test file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
  RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
args=()
for a in "$@"; do
  if [[ $a == --fast ]]; then args+=(-m "not slow"); else args+=("$a"); fi
done
exec .venv/bin/python -m pytest -q "${args[@]}"
