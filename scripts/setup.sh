#!/usr/bin/env bash
# Create/refresh the project venv (.venv) if needed. Idempotent: reinstalls only when
# pyproject.toml or constraints.txt changed since the last successful install.
# torch is pinned by constraints.txt (CPU build here); an unpinned torch would pull
# a multi-GB CUDA wheel. DS_BUILD_OPS=0: DeepSpeed ops JIT-compile on first use instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.t2vu-install-stamp
WANT=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [[ -x $VENV/bin/python && -f $STAMP && "$(cat $STAMP)" == "$WANT" ]]; then
  exit 0
fi
echo "[setup] installing into $VENV (first run takes ~2-3 minutes)" >&2
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# pip's and setuptools' chatter (the editable-install banner, index warnings) goes to a log, shown on failure.
LOG=$VENV/install.log
{ "$VENV/bin/pip" install -q -c constraints.txt "torch==$(sed -n 's/^torch==//p' constraints.txt)" \
  && DS_BUILD_OPS=0 "$VENV/bin/pip" install -q -c constraints.txt -e ".[test]"; } >"$LOG" 2>&1 \
  || { tail -n 40 "$LOG" >&2; echo "[setup] install failed (full log: $LOG)" >&2; exit 1; }
DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} "$VENV/bin/python" -c "import torch, diffusers, ray, deepspeed, mlflow, nudenet, unlearn" >>"$LOG" 2>&1 \
  || { tail -n 40 "$LOG" >&2; echo "[setup] install failed: the packages do not import (full log: $LOG)" >&2; exit 1; }
echo "$WANT" > "$STAMP"
