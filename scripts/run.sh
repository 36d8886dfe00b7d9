#!/usr/bin/env bash
# The main job (README): installs what it needs, then runs the whole pipeline on the embedded
# default (configs/toy.yaml: the built-in toy model, a small Optuna search of Ray Train +
# DeepSpeed trials, the best eraser evaluated against the base model, report + MLflow) into
# runs/demo. Rerunning it does no work; extra arguments are passed to `t2vu run`
# (e.g. --output runs/other, --set search.num_samples=8, --verbose).
# t2vu and mlflow live in .venv/bin, not on PATH: the last lines say how to reach them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
rc=0
.venv/bin/t2vu run --config configs/toy.yaml --output runs/demo "$@" || rc=$?
if [[ $rc -eq 0 ]]; then
  echo
  echo "t2vu and mlflow are installed in .venv, not on your PATH. To use them (and paste the 'open it' line above):"
  echo "   source $PWD/.venv/bin/activate"
  echo "or call them by path: $PWD/.venv/bin/t2vu, $PWD/.venv/bin/mlflow"
fi
exit "$rc"
