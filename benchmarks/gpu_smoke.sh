#!/usr/bin/env bash
# One-GPU smoke check (< 5 min): CogVideoX-2B-shaped transformer, random weights, bf16,
# DeepSpeed ZeRO-2, fused eraser steps at 49x480x720. Prints one JSON line.
# Needs the project installed in the active Python (the Dockerfile image has it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python )}
exec timeout 300 "$PY" benchmarks/gpu_smoke.py "$@"
