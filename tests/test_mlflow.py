"""MLflow bookkeeping against a real `mlflow server` (SQLite backend) and a SQLite file URI."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.tracking import mlflow_utils as mu
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

    c = mu.client(mlflow_server)
    exp = mu.get_or_create_experiment(c, "test/idempotent", tmp_path)
    parent, created = mu.get_or_create_parent(c, exp, "idem", tmp_path)
    assert created
    assert mu.get_or_create_parent(c, exp, "idem", tmp_path) == (parent, False)  # via the id file
    (tmp_path / mu.PARENT_ID_FILE).unlink()
    assert mu.get_or_create_parent(c, exp, "idem", tmp_path) == (parent, False)  # via tags

    params = mu.method_params(PipelineConfig())
    a = mu.get_or_create_child(c, exp, parent, "trial_a", params=params)
    mu.finish(c, a, "KILLED")
    assert mu.get_or_create_child(c, exp, parent, "trial_a", params=params) == a  # a restarted trial
    b = mu.get_or_create_child(c, exp, parent, "trial_b")
    assert b != a and mu.find_child(c, exp, parent, "trial_b") == b

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

    c = mu.client(mlflow_server)
    exp = mu.get_or_create_experiment(c, "test/curve", tmp_path)
    run = c.create_run(exp).info.run_id
    rows = [{"step": s, "loss": 1.0 / s, "l_unlearn": 0.5 / s} for s in (2, 4, 6, 8)]
    first = MlflowLive({"tracking_uri": mlflow_server, "run_id": run})
    first.log(rows[:3])  # steps 2, 4, 6 ... then the worker dies; the checkpoint was at step 4
    second = MlflowLive({"tracking_uri": mlflow_server, "run_id": run})
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
