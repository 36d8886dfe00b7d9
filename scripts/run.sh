#!/usr/bin/env bash
# The main job (README): installs what it needs, then runs the embedded default on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
exec .venv/bin/t2vu train --config configs/tiny.yaml "$@"
