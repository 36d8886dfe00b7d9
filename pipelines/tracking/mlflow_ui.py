"""What a person sees in the MLflow UI without writing code: trial runs named by what they tried, a saved
view of the runs table (searched parameters and objectives as its columns, best trial first); the best
trial's tag is pipelines.tracking.tracker.Tracker.tag_best. Checked in headless Chromium by
benchmarks/mlflow_ui_screenshot.sh and tests/test_mlflow.py.
"""

from __future__ import annotations

import json
import logging
import time

LOG = logging.getLogger(__name__)

MAX_RUN_NAME = 100  # what fits a runs-table cell; longer names are cut, the trial id kept


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def trial_run_name(params: dict, trial_id: str) -> str:
    """`eta=3.21 w_preserve=0.5 lr=0.00123 · 00002`: the searched values (last part of each key, unless two
    keys share it) and the trial's number, at most MAX_RUN_NAME characters: trials are told apart by
    what was tried, in the runs table and in every chart legend."""
    tails = [k.rsplit(".", 1)[-1] for k in params]
    parts = [f"{t if tails.count(t) == 1 else k}={_short(v)}" for k, t, v in zip(params, tails, params.values())]
    if not parts:
        return trial_id[:MAX_RUN_NAME]
    suffix = f" · {trial_id.rsplit('_', 1)[-1]}"
    text = " ".join(parts)
    room = MAX_RUN_NAME - len(suffix)
    return (text if len(text) <= room else text[: room - 1] + "…") + suffix


#: The saved view of a search's runs table: MLflow's UI (3.x, `mlflow/server/js`) keeps saved and shared views
#: as experiment tags `mlflow.sharedViewState.<key>` (an envelope {name, createdAt, updatedAt, state}, `state`
#: the table's JSON state: selectedColumns, orderByKey, ...), listed under "Saved views" and opened by the
#: URL parameter `viewStateShareKey=<key>`. There is no other per-experiment default of the columns: without
#: it the table shows the first few of every param and metric (a search logs hundreds).
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW_KEY = "t2vu-trials"


def _col(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"  # the UI's column id (its `makeCanonicalSortKey`)


def runs_view_state(metric_names: list[str], param_keys: list[str], score: str | None = None,
                    prefix: str = "final/") -> dict:
    """The runs table's state: searched params, then the objectives (final values, as trials log them),
    the best-trial tag; sorted by the score (lowest first) so the best trial leads and rows are flat."""
    metrics = [*metric_names, *([score] if score and score not in metric_names else [])]
    cols = [*[_col("params", k) for k in param_keys], *[_col("metrics", prefix + m) for m in metrics],
            _col("tags", "best_trial")]
    state = {"selectedColumns": cols, "columnOrder": cols}
    if score:
        state.update(orderByKey=_col("metrics", prefix + score), orderByAsc=True)
    return state


def set_runs_view(c, exp_id: str, state: dict, name: str = "t2vu: trials (searched parameters, objectives)") -> None:
    """Save `state` as the experiment's view RUNS_VIEW_KEY (replacing an older one of the same key)."""
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    try:
        c.set_experiment_tag(exp_id, VIEW_TAG_PREFIX + RUNS_VIEW_KEY, json.dumps(envelope))
    except Exception as exc:  # a view is a convenience: never lose a search over it
        LOG.warning("Could not save the MLflow runs view of experiment %s: %s", exp_id, exc)


def runs_view_url(exp_id, base: str = "http://127.0.0.1:5000", view: bool = True) -> str:
    """The experiment's runs table (`workflowType=machine_learning`: MLflow 3.17's UI otherwise opens its
    GenAI mode whatever the experiment's kind), in the saved view when the experiment has one."""
    url = f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    return url + (f"&viewStateShareKey={RUNS_VIEW_KEY}" if view else "")
