"""pipelines.tracking.tracker: one object owns a search's MLflow runs, parent to final eval (real MLflow, SQLite)."""

from __future__ import annotations

import pickle

import pytest

from pipelines.tracking.tracker import SearchTracking, Tracker, TrialTracking


def test_ids_pickle_round_trip_through_the_run_folder_and_reach_workers_typed(tmp_path):
    ids = SearchTracking("sqlite:///x.db", "3", "abc")
    assert pickle.loads(pickle.dumps(ids)) == ids  # Ray hands it to every trial (tune.with_parameters)
    assert SearchTracking.read(tmp_path) is None  # MLflow off: no mlflow.json
    ids.write(tmp_path)
    assert SearchTracking.read(tmp_path) == ids and Tracker.in_folder(tmp_path).parent == "abc"
    (tmp_path / "mlflow.json").write_text('{"tracking_uri": "sqlite:///x.db"}')  # incomplete: treated as off
    assert SearchTracking.read(tmp_path) is None

    # a trial's run crosses to the Ray Train workers typed, never as a dict
    from pipelines.tracking.live_logging import MlflowLive

    run = TrialTracking("sqlite:///x.db", "run1")
    assert pickle.loads(pickle.dumps(run)) == run  # inside the objective payload, to the Ray Train workers
    with pytest.raises(AttributeError):
        run.run_id = "other"  # frozen
    with pytest.raises(TypeError, match="TrialTracking or None, got {'tracking_uri'"):
        MlflowLive({"tracking_uri": "sqlite:///x.db", "run_id": "run1"})
    off = MlflowLive(None)  # MLflow off: nothing is sent, nothing fails
    off.log([{"step": 1, "loss": 0.5}])
    assert off.client is None and off.logged_upto == 0


def test_tracking_off_does_nothing_and_needs_no_store(tmp_path):
    off = Tracker(None)
    assert not off.on and off.parent is None and off.child("t1") is None and off.find_child("t1") is None
    with off.child_run("final-eval") as run_id:
        assert run_id is None
    off.end(None, "FAILED", error="x")
    off.log_files(None, [tmp_path])
    off.set_tags(off.parent, {"t2vu.stage": "x"})
    off.finish(metrics={"a": 1.0}, best=("t1", None))
    with pytest.raises(RuntimeError), off.child_run("final-eval"):
        raise RuntimeError("the eval's own error goes on")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow  # a fresh SQLite store (MLflow's migrations) and ~30 calls: 10-20 s on 2 loaded cores
def test_every_run_ends_finished_failed_or_killed_and_resume_reuses_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "search"
    tracker = Tracker.start(uri, "test/tracker", "s", out, tags={"t2vu.git_sha": "x"})
    c = tracker.client
    parent = c.get_run(tracker.parent)
    assert parent.data.tags["t2vu.role"] == "search" and parent.data.tags["t2vu.git_sha"] == "x"
    assert pickle.loads(pickle.dumps(tracker)).ids == tracker.ids  # the client stays behind
    tracker.set_tags(tracker.parent, {"t2vu.stage": "screening 9x16x16 of s"})  # how screening marks its parent
    assert c.get_run(tracker.parent).data.tags["t2vu.stage"] == "screening 9x16x16 of s"

    with tracker.child_run("final-eval", params={"best_trial": "t1"}, tags={"t2vu.role": "final-eval"}) as ok:
        tracker.log_metrics(ok, {"eval/x": 0.5, "not_a_number": "y"})
    with pytest.raises(ValueError), tracker.child_run("baseline-negprompt") as failed:
        raise ValueError("the eval broke\n  badly")
    with pytest.raises(KeyboardInterrupt), tracker.child_run("t2") as killed:
        raise KeyboardInterrupt
    runs = {r: c.get_run(r) for r in (ok, failed, killed)}
    assert [runs[r].info.status for r in (ok, failed, killed)] == ["FINISHED", "FAILED", "KILLED"]
    assert runs[failed].data.tags["t2vu.error"] == "the eval broke badly"
    assert runs[ok].data.params == {"best_trial": "t1"} and runs[ok].data.metrics == {"eval/x": 0.5}
    assert runs[ok].data.tags["mlflow.parentRunId"] == tracker.parent and runs[ok].data.tags["t2vu.role"] == "final-eval"

    # a rerun of the same command: the same parent (RUNNING again), the same child per key, no duplicate
    again = Tracker.start(uri, "test/tracker", "s", out)
    assert again.ids == tracker.ids and c.get_run(again.parent).info.status == "RUNNING"
    assert again.child("final-eval") == ok and c.get_run(ok).info.status == "RUNNING"
    again.end(ok, metrics={"score": 0.25}, step=7)
    assert [(m.value, m.step) for m in c.get_metric_history(ok, "final/score")] == [(0.25, 7)]
    again.finish("FAILED", metrics={"trials_completed": 0})
    assert c.get_run(again.parent).info.status == "FAILED"
    assert len(again.children()) == 3
