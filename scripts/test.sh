#!/usr/bin/env bash
# The test command (README): installs what it needs, then runs the suite on CPU.
#   bash scripts/test.sh            the full suite (what CI and .ci/run run; target <= 15 min on 2 cores).
#                                   2026-12-08: 735 tests in 14.5 min and 736 in 12.8 min (idle box), after one-worker
#                                   Tune trials began to train in their own actors (no Ray Train worker group: ~25 CPU-s less per trial,
#                                   benchmarks/trial_overhead.py); 19.8 min on the tree before.
#                                   Serial it took 30.1 min for 685 tests (2026-12-07, idle); it is CPU-bound on process
#                                   start-ups (each Ray Train worker imports torch, DeepSpeed and diffusers: ~9 CPU-s).
#                                   So it runs in T2VU_TEST_WORKERS (default 2) pytest processes (pytest-xdist), each
#                                   with its own session Ray, MLflow server and tiny models (tests/conftest.py);
#                                   `--dist loadfile` keeps a module's tests (and its module-scoped fixtures) in one
#                                   process. 729 tests: 20.0 min (2026-12-07 15:29, idle) and 22.0 min (16:28, the box
#                                   94% busy: 2488 CPU-s); 3 processes were slower (21.1 min, 705 tests), and running
#                                   the heaviest modules first saved nothing measurable. 729 tests: 21.0 min (18:30);
#                                   732 tests: 20.4 min (19:03, idle) and 25.1 min (19:33, idle: the same box
#                                   varies). Where the CPU goes, per test and module:
#                                   `python benchmarks/suite_cpu.py -m slow` (serial). T2VU_TEST_WORKERS=0: serial.
#   bash scripts/test.sh --fast     the fast tier: every test not marked `slow` (target <= 5 min: 642 tests in
#                                   2.1 min in 2 processes, 2026-12-07 13:42; every module keeps a fast test:
#                                   tests/test_tiers.py)
# --durations=30 lists the 30 slowest tests at the end (what to look at when the suite grows slow).
# Any other arguments go to pytest (e.g. -k name, -x, a test file).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The project's own bytecode, written once: where PYTHONDONTWRITEBYTECODE is set (this box's shell sets it) every
# process of the suite (~hundreds: t2vu subprocesses, Ray workers, spawned ranks) recompiled the modules it imported
# from source, ~0.25 CPU-s each (measured: importing the CLI, trainer, search and eval modules 1.8-2.0 -> 1.6-1.7 CPU-s)
.venv/bin/python -m compileall -q -j 0 pipelines unlearn eval toyworld tests benchmarks >/dev/null
# RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0: Ray Train's watcher of cloud-node preemption (nothing to watch on one box)
# is one more actor process per worker-group start: ~2.5 CPU-s each (measured on the ZeRO-2/3 test: 110 -> 102 CPU-s).
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
  RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0
args=()
workers=${T2VU_TEST_WORKERS:-2}
if [[ $workers != 0 ]]; then args+=(-n "$workers" --dist loadfile); fi
for a in "$@"; do
  if [[ $a == --fast ]]; then args+=(-m "not slow"); else args+=("$a"); fi
done
exec .venv/bin/python -m pytest -q "${args[@]}"
