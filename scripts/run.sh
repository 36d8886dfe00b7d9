#!/usr/bin/env bash
# The main job (README): installs what it needs, then runs the whole pipeline on the embedded
# default (configs/toy.yaml: the built-in toy model, a small Optuna search of Ray Train +
# DeepSpeed trials, the best eraser evaluated against the base model, report + MLflow) into
# runs/demo. Rerunning it does no work; extra arguments are passed to `t2vu run`
# (e.g. --output runs/other, --set search.num_samples=8, --verbose).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
exec .venv/bin/t2vu run --config configs/toy.yaml --output runs/demo "$@"
