#!/usr/bin/env bash
# What a user sees when they open a search's MLflow database: start the real `mlflow ui` on it
# (127.0.0.1), load the experiment page in headless Chromium and save a screenshot.
#   bash benchmarks/mlflow_ui_screenshot.sh RUN_DIR [OUT.png]
# RUN_DIR: a `t2vu tune` output folder (its mlflow.db and mlflow.json). Needs `chromium`
# (Debian: apt-get install chromium); not part of the test suite.
# Why: MLflow 3 opens an experiment by its kind; untagged ones land on the GenAI overview
# (traces, token usage) instead of the runs table. This checks the experiments t2vu makes
# (tagged mlflow.experimentKind=custom_model_development) open on the runs table.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$(cd "$1" && pwd)
OUT=${2:-docs/img/mlflow-runs.png}
PORT=${PORT:-5077}
EXP=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['experiment_id'])" "$RUN/mlflow.json")
.venv/bin/mlflow ui --backend-store-uri "sqlite:///$RUN/mlflow.db" --host 127.0.0.1 --port "$PORT" >/tmp/mlflow-ui.log 2>&1 &
UI=$!
trap 'kill $UI 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
mkdir -p "$(dirname "$OUT")"
URL="http://127.0.0.1:$PORT/#/experiments/$EXP/runs?workflowType=machine_learning"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,900 \
  --virtual-time-budget=20000 --screenshot="$OUT" "$URL" 2>/dev/null
echo "$URL -> $OUT"
