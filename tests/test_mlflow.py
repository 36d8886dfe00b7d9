"""MLflow bookkeeping against a real `mlflow server` (SQLite backend) and a SQLite file URI."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.tracking import mlflow_utils as mu
from pipelines.tracking.tracker import PARENT_ID_FILE, SearchTracking, Tracker
from pipelines.config.pipeline import MlflowConfig, PipelineConfig

ROOT = Path(__file__).resolve().parent.parent


def test_params_are_flat_stable_names():
    cfg = PipelineConfig.model_validate({"loss": {"w_unlearn": 0.25}, "eraser": {"rank": 16}})
    p = mu.method_params(cfg)
    assert p["loss.w_unlearn"] == "0.25" and p["eraser.rank"] == "16"
    assert p["concept.anchors"] == "[]" and p["eraser.blocks"] == "null"
    assert not any(k.startswith(("distributed.", "search.", "mlflow.")) for k in p)


def test_default_tracking_uri_is_sqlite_in_the_run_folder(tmp_path):
    uri = MlflowConfig().resolve_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    c = mu.client(uri)
    exp = mu.get_or_create_experiment(c, "t2vu/x", tmp_path)
    assert c.get_experiment(exp).artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert mu.get_or_create_experiment(c, "t2vu/x", tmp_path) == exp
    # MLflow 3's UI opens the runs table (not the GenAI overview) for model-training experiments
    assert c.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    old = c.create_experiment("t2vu/older")  # made before the tag existed: tagged when found again
    assert mu.get_or_create_experiment(c, "t2vu/older", tmp_path) == old
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_parent_and_child_runs_are_found_again_not_duplicated(mlflow_server, tmp_path):
    import mlflow

    described = []
    tracker = Tracker.start(mlflow_server, "test/idempotent", "idem", tmp_path, describe=described.append)
    parent = tracker.parent
    assert described == [tracker]  # a new parent is described once
    assert SearchTracking.read(tmp_path) == tracker.ids  # <out>/mlflow.json
    assert Tracker.start(mlflow_server, "test/idempotent", "idem", tmp_path, describe=described.append).parent == parent
    (tmp_path / PARENT_ID_FILE).unlink()
    again = Tracker.start(mlflow_server, "test/idempotent", "idem", tmp_path, describe=described.append)
    assert again.ids == tracker.ids and len(described) == 1  # found again by its tags, not described again

    params = mu.method_params(PipelineConfig())
    a = tracker.child("trial_a", params=params)
    tracker.end(a, "KILLED")
    assert tracker.child("trial_a", params=params) == a  # a restarted trial
    b = tracker.child("trial_b")
    assert b != a and tracker.find_child("trial_b") == b and tracker.find_child("trial_c") is None

    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["test/idempotent"])
    assert len(runs) == 3
    kids = runs[runs["tags.mlflow.parentRunId"] == parent]
    assert sorted(kids["tags.t2vu.trial_id"]) == ["trial_a", "trial_b"]
    assert kids.set_index("tags.t2vu.trial_id").loc["trial_a", "status"] == "RUNNING"  # reopened
    assert kids.set_index("tags.t2vu.trial_id").loc["trial_a", "params.loss.w_unlearn"] == "1.0"


@pytest.mark.slow
def test_worker_curve_logging_skips_steps_an_earlier_attempt_logged(mlflow_server, tmp_path):
    """After a worker restart, rank 0 replays the curve from the checkpoint: no duplicate points."""
    from pipelines.tracking.live_logging import MlflowLive
    from pipelines.tracking.tracker import TrialTracking

    c = mu.client(mlflow_server)
    exp = mu.get_or_create_experiment(c, "test/curve", tmp_path)
    run = c.create_run(exp).info.run_id
    rows = [{"step": s, "loss": 1.0 / s, "l_unlearn": 0.5 / s} for s in (2, 4, 6, 8)]
    first = MlflowLive(TrialTracking(mlflow_server, run))
    first.log(rows[:3])  # steps 2, 4, 6 ... then the worker dies; the checkpoint was at step 4
    second = MlflowLive(TrialTracking(mlflow_server, run))
    assert second.logged_upto == 6
    second.log(rows)  # the restarted attempt's history (2..8)
    second.log_eval(8, {"score": 0.1, "train_step": 8, "loss": 0.1})
    assert [m.step for m in c.get_metric_history(run, "loss")] == [2, 4, 6, 8]
    assert [m.step for m in c.get_metric_history(run, "objective/score")] == [8]
    assert c.get_metric_history(run, "objective/loss") == []


def test_an_unreachable_tracking_server_fails_in_seconds():
    import socket
    import time

    from unlearn.config import ConfigError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    with pytest.raises(ConfigError, match=rf"127.0.0.1:{port} does not answer.*tracking_uri: null"):
        mu.client(f"http://127.0.0.1:{port}")
    assert time.time() - t0 < 10


def test_a_live_tracking_server_passes_the_check(mlflow_server):
    mu._REACHABLE.discard(mlflow_server)  # check it for real, not from an earlier test's memory
    mu.check_reachable(mlflow_server)
    assert mlflow_server in mu._REACHABLE  # remembered: later calls in this process cost nothing
    assert mu.client(mlflow_server).search_experiments(max_results=1) is not None  # and it really answers


# --- what a person sees in the MLflow UI (pipelines.tracking.mlflow_ui) ------------------------------

SPACE = {"loss.eta": (2.0, 4.5, 6.1), "loss.w_preserve": (0.5, 1.2, 0.3)}
OBJECTIVES = ["nudity_rate_erased", "psnr_preserve"]


def _search_runs(c, out: Path):
    """A search as trials log it (real MLflow, SQLite): a parent, three named trials with final metrics
    and 40 other params and metrics each (the columns a default table would drown in), the best tagged."""
    from pipelines.tracking import mlflow_ui as mui

    tracker = Tracker.start(c.tracking_uri, "t2vu/ui", "ui", out)
    exp, parent = tracker.ids.experiment_id, tracker.parent
    mui.set_runs_view(c, exp, mui.runs_view_state(OBJECTIVES, list(SPACE), "score"))
    runs = []
    for i, (eta, wp) in enumerate(zip(*SPACE.values())):
        params, trial = {"loss.eta": eta, "loss.w_preserve": wp}, f"abc12_0000{i}"
        rid = tracker.child(trial, run_name=mui.trial_run_name(params, trial),
                            params={**{k: str(v) for k, v in params.items()}, **{f"x.p{j}": "1" for j in range(40)}})
        tracker.log_metrics(rid, {f"other/m{j}": j for j in range(40)})
        tracker.end(rid, metrics={"nudity_rate_erased": i / 2, "psnr_preserve": 20.0 + i, "score": [0.3, -0.25, 0.7][i]})
        runs.append(rid)
    tracker.finish(best=("abc12_00001", runs[1]))
    return tracker, runs


@pytest.mark.slow  # a fresh SQLite store and ~20 MLflow calls: 30+ s on a loaded 2-core machine
def test_trials_are_named_by_their_parameters_the_view_has_their_columns_and_the_best_is_tagged(tmp_path):
    import json

    from pipelines.tracking import mlflow_ui as mui

    c = mu.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker, runs = _search_runs(c, tmp_path)
    exp, parent = tracker.ids.experiment_id, tracker.parent
    assert c.get_run(parent).info.status == "FINISHED" and c.get_run(parent).data.tags["t2vu.best_run_id"] == runs[1]
    assert [c.get_run(r).info.run_name for r in runs] == ["eta=2 w_preserve=0.5 · 00000", "eta=4.5 w_preserve=1.2 · 00001",
                                                          "eta=6.1 w_preserve=0.3 · 00002"]
    long = mui.trial_run_name({f"a{i}.loss_weight_{i}": 0.123456 for i in range(20)}, "abc12_00007")
    assert len(long) == mui.MAX_RUN_NAME and long.endswith("… · 00007")
    envelope = json.loads(c.get_experiment(exp).tags[mui.VIEW_TAG_PREFIX + mui.RUNS_VIEW_KEY])
    state = json.loads(envelope["state"])  # the envelope MLflow's UI reads (name, createdAt, updatedAt, state)
    assert envelope["name"].startswith("t2vu") and isinstance(envelope["createdAt"], int)
    assert state["selectedColumns"] == ["params.`loss.eta`", "params.`loss.w_preserve`", "metrics.`final/nudity_rate_erased`",
                                        "metrics.`final/psnr_preserve`", "metrics.`final/score`", "tags.`best_trial`"]
    assert state["orderByKey"] == "metrics.`final/score`" and state["orderByAsc"] is True
    assert mui.runs_view_url(exp).endswith(f"/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey=t2vu-trials")

    assert [c.get_run(r).data.tags.get("best_trial") for r in runs] == [None, "true", None]
    tracker.tag_best(runs[2], "abc12_00002")  # a resumed search picked another: one best only
    assert [c.get_run(r).data.tags.get("best_trial") for r in runs] == [None, None, "true"]
    assert c.get_run(parent).data.tags["best_trial"] == "abc12_00002"


@pytest.mark.slow
def test_the_mlflow_ui_opens_the_runs_view_in_chromium(tmp_path):
    """The real MLflow UI in headless Chromium (benchmarks/mlflow_ui_screenshot.sh): the saved view's columns
    are the searched parameters and the objectives, the rows are the trials by name, the best first."""
    import json
    import os
    import re
    import subprocess
    import sys

    from tests.test_report_html import chromium

    chromium()  # skip on a workstation without it; fail in CI
    c = mu.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker, _ = _search_runs(c, tmp_path)
    assert json.loads((tmp_path / "mlflow.json").read_text())["experiment_id"] == tracker.ids.experiment_id
    shot = tmp_path / "shot" / "runs.png"
    subprocess.run(["bash", str(ROOT / "benchmarks" / "mlflow_ui_screenshot.sh"), str(tmp_path), str(shot)],
                   check=True, timeout=400, capture_output=True, env={**os.environ, "PYTHON": sys.executable})
    dom = shot.with_suffix(".html").read_text()
    headers = re.findall(r'<span[^>]*class="[^"]*ag-header-cell-text[^"]*"[^>]*>([^<]*)<', dom) or dom
    for col in ("loss.eta", "loss.w_preserve", "final/nudity_rate_erased", "final/psnr_preserve", "final/score", "best_trial"):
        assert col in headers, col
    assert "other/m0" not in dom and "x.p0" not in dom  # the other 80 columns stay hidden
    names = re.findall(r"eta=[0-9.]+ w_preserve=[0-9.]+ · 0000\d", dom)
    assert names and names[0] == "eta=4.5 w_preserve=1.2 · 00001"  # sorted by score: the best trial first
    assert shot.stat().st_size > 20_000


def test_the_screenshot_script_refuses_a_tracked_output(tmp_path):
    import subprocess

    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "mlflow_ui_screenshot.sh"), str(tmp_path), "README.md"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "tracked file" in r.stderr and r.stderr.count("\n") == 1
