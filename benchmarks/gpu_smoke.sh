#!/usr/bin/env bash
# GPU smoke check through the real entry points (target < 5 min on one H100/H200):
#   random-weight CogVideoX-2B-shaped model directory (public 2B transformer config, bf16; public VAE config;
#   a 1-layer T5 of T5-XXL's width 4096 -- T5-XXL itself is 4.76B parameters; the offline tokenizer)
#   -> t2vu plan -> t2vu train (xt_source trajectory, bf16, gradient checkpointing, train.device cuda)
#   -> 2-worker Ray Train + DeepSpeed ZeRO-2 training when >= 2 GPUs -> t2vu eval (2 rows, with the eraser)
#   -> t2vu tune, one trial (proxy eval in the training worker on its transformer, final eval after fit()).
# Prints each stage's FLOP/time budget first (stderr; eval/search sized to fit 5 min by it: benchmarks/smoke_budget.py),
# then ONE JSON line: step time, peak memory per GPU next to the plan's prediction, MFU, eval s/video, the budget.
# Stage logs: <workdir>/logs/*.log (workdir is printed in the JSON; pass --workdir DIR to choose it).
# Extra arguments go to benchmarks/gpu_smoke.py (e.g. --steps 6, --distributed off, --mask-layers 0 15 29).
# CPU rehearsal of the same sequence (the test suite runs it): --preset tiny --device cpu
# Needs the project installed in the active Python (the Dockerfile image has it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python )}
# A safety net well above the target: a slow stage should still report where the time went.
exec timeout "${GPU_SMOKE_TIMEOUT:-900}" "$PY" benchmarks/gpu_smoke.py "$@"
