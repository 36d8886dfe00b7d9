#!/usr/bin/env bash
# What a user sees when they open a search's MLflow database: start the real MLflow UI on it (127.0.0.1,
# a free port), load the experiment's runs table in its saved view (pipelines.tracking.mlflow_ui: searched
# parameters and objectives as the columns, best trial first) in headless Chromium and save a screenshot.
#   bash benchmarks/mlflow_ui_screenshot.sh RUN [OUT.png]
# RUN: the folder `t2vu run` prints (its summary.json), or a `t2vu tune` folder (its mlflow.json).
# OUT: default RUN/mlflow-runs.png; a file git tracks is refused (copy the PNG into docs/img/ yourself).
# Also writes OUT with .html: the page's DOM after it rendered (what tests/test_mlflow.py reads).
# Needs chromium (Debian: apt-get install chromium), driven by benchmarks/browser.py.
set -euo pipefail
[ $# -ge 1 ] && [ -d "$1" ] || { echo "usage: bash benchmarks/mlflow_ui_screenshot.sh RUN [OUT.png] (RUN: a t2vu run or tune folder)" >&2; exit 2; }
RUN=$(cd "$1" && pwd)  # both paths as the caller meant them, before the cd below
OUT=${2:-$RUN/mlflow-runs.png}
case "$OUT" in /*) ;; *) OUT=$PWD/$OUT ;; esac
for f in "$OUT" "${OUT%.png}.html"; do  # tracked by whatever git repository holds the output: refused
  if [ -d "$(dirname "$f")" ] && git -C "$(dirname "$f")" ls-files --error-unmatch -- "$(basename "$f")" >/dev/null 2>&1; then
    echo "$f is a tracked file: name another output (then copy it where it belongs)" >&2; exit 2
  fi
done
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { echo "chromium not found: apt-get install chromium" >&2; exit 2; }
PY=${PYTHON:-.venv/bin/python}; [ -x "$PY" ] || PY=$(command -v python3)  # PYTHON: the project's interpreter
# tracking URI and experiment id: summary.json (t2vu run) or mlflow.json (t2vu tune, or RUN/search of a run)
read -r URI EXP < <("$PY" - "$RUN" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
for f, pick in ((run / "summary.json", lambda d: d.get("mlflow") or {}), (run / "mlflow.json", lambda d: d),
                (run / "search" / "mlflow.json", lambda d: d)):
    if f.is_file():
        m = pick(json.loads(f.read_text()))
        if m.get("tracking_uri") and m.get("experiment_id") is not None:
            print(m["tracking_uri"], m["experiment_id"]); break
else:
    sys.exit(f"{run}: no MLflow tracking URI in summary.json or mlflow.json (was MLflow off?)")
EOF
)
case "$URI" in
  sqlite:*) ;;
  http*) BASE=$URI ;;
  *) echo "$URI: only sqlite:/// stores and http(s) servers are supported" >&2; exit 2 ;;
esac
if [ -z "${BASE:-}" ]; then
  PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  LOG=$(mktemp)
  # one worker, no GenAI job runner: a loaded machine otherwise kills workers before they answer
  MLFLOW=$(dirname "$PY")/mlflow; [ -x "$MLFLOW" ] || MLFLOW=mlflow
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$MLFLOW" server --backend-store-uri "$URI" \
    --host 127.0.0.1 --port "$PORT" --workers 1 >"$LOG" 2>&1 &
  UI=$!
  trap 'kill -- -$UI 2>/dev/null || true; rm -f "$LOG"' EXIT
  trap 'exit 130' INT TERM  # through the EXIT trap: the server never outlives the script
  for _ in $(seq 180); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "the MLflow UI did not start; its log:" >&2; tail -20 "$LOG" >&2; exit 1; }
  BASE=http://127.0.0.1:$PORT
fi
URL=$("$PY" -c "import sys; sys.path.insert(0, '.'); from pipelines.tracking.mlflow_ui import runs_view_url; print(runs_view_url(sys.argv[1], sys.argv[2]))" "$EXP" "$BASE")
mkdir -p "$(dirname "$OUT")"
# ready when the runs table has drawn its column headers; the assistant panel MLflow opens on a first visit
# is closed so the table shows whole
"$PY" benchmarks/browser.py "$URL" "$OUT" --size 1600x900 --timeout 180 \
  --until 'document.querySelectorAll(".ag-header-cell").length > 3 && document.querySelectorAll(".ag-row").length > 0' \
  --click '[data-component-id="mlflow.assistant.chat_panel.close"]'
echo "$URL -> $OUT (its DOM: ${OUT%.png}.html)"
