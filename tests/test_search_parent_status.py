"""A search's MLflow parent run ends FAILED (KILLED on Ctrl-C) whenever `t2vu tune` fails after opening it (issue 26).

Before the fix a late failure left the parent RUNNING for ever in the MLflow UI: a 300-character search.name
(now refused at load, reliability case tune-name-long), a trial that raises (no trial finished, yet the parent
ended FINISHED), a failure after the trials (the report could not be written), and Ctrl-C. Real CLI, real Ray
Tune and MLflow (the SQLite store in the output folder); each slow case is one search of one short trial. The two
failures and Ctrl-C join the test session's Ray (RAY_ADDRESS): the subject is the MLflow parent, not a local Ray start
(tests/test_ray_signals.py covers Ctrl-C with the command's own Ray).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEARCH = str(ROOT / "configs" / "search" / "tiny.yaml")
# one trial of one worker (what is tested is the MLflow parent, not the worker group: one worker fewer is ~8 CPU-s
# of imports and a gloo rendezvous less per run)
SHORT = ["--set", "search.num_samples=1", "--set", "train.steps=4", "--set", "train.checkpoint_every=2",
         "--set", "distributed.num_workers=1", "--set", "search.max_failures=0"]


def parent_status(out: Path) -> tuple[str, dict]:
    from mlflow.tracking import MlflowClient

    from pipelines.tracking.tracker import PARENT_ID_FILE

    run = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_run((out / PARENT_ID_FILE).read_text().strip())
    return run.info.status, run.data.tags


def t2vu(*argv: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli.entry", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_guard_ends_a_running_parent_failed_or_killed(tmp_path):
    """The guard itself, on a real MLflow SQLite store: RUNNING -> FAILED / KILLED; a finished run is left alone."""
    from mlflow.tracking import MlflowClient

    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.tracking.tracker import PARENT_ID_FILE, closes_search_parent

    cfg = load_pipeline_config(SEARCH, [])
    for exc, want in ((RuntimeError("report failed"), "FAILED"), (KeyboardInterrupt(), "KILLED")):
        out = tmp_path / want
        out.mkdir()
        c = MlflowClient(cfg.mlflow.resolve_uri(out))
        run_id = c.create_run(c.create_experiment("x", artifact_location=(out / "a").as_uri())).info.run_id
        (out / PARENT_ID_FILE).write_text(run_id + "\n")
        with pytest.raises(type(exc)):
            with closes_search_parent(cfg, out):
                raise exc
        status, tags = parent_status(out)
        assert status == want and tags["t2vu.error"] == (str(exc) or "KeyboardInterrupt")
        with pytest.raises(type(exc)):  # ended already: left as it is
            with closes_search_parent(cfg, out):
                raise exc
        assert parent_status(out)[0] == want


@pytest.mark.slow
def test_a_trial_that_raises_fails_the_parent(tmp_path, ray_env):
    out = tmp_path / "out"
    # distributed.max_failures=0: the non-finite loss would only fail again in a restarted worker group
    res = t2vu("tune", "-c", SEARCH, "-o", str(out), *SHORT, "--set", "train.lr=1e30",
               "--set", "distributed.max_failures=0", env=ray_env)
    assert res.returncode == 1, res.stderr[-2000:]
    assert parent_status(out)[0] == "FAILED"


@pytest.mark.slow
def test_a_failure_after_the_trials_fails_the_parent(tmp_path, ray_env):
    out = tmp_path / "out"
    (out / "report.md").mkdir(parents=True)  # the report cannot be written: a failure after every trial finished
    res = t2vu("tune", "-c", SEARCH, "-o", str(out), *SHORT, env=ray_env)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines[-1].startswith("error:") and "report.md" in lines[-1], lines[-5:]
    status, tags = parent_status(out)
    assert status == "FAILED" and "report.md" in tags["t2vu.error"]


@pytest.mark.slow
def test_ctrl_c_kills_the_parent(tmp_path, ray_env):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli.entry", "tune", "-c", SEARCH, "-o", str(out),
                             *SHORT[:2], *SHORT[6:8], "--set", "train.steps=400", "--set", "train.checkpoint_every=4"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, env=ray_env,
                            stderr=(tmp_path / "err").open("w"), start_new_session=True)
    try:
        deadline = time.time() + 600
        # one worker: the trial trains in its own actor, its checkpoint in <trial>/checkpoint (search/trial_training.py)
        while time.time() < deadline and not any(out.glob("trials/*/checkpoint/state.json")):
            assert proc.poll() is None, (tmp_path / "err").read_text()[-2000:]
            time.sleep(0.25)
        os.killpg(proc.pid, signal.SIGINT)  # the whole group, as Ctrl-C in a terminal
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = (tmp_path / "err").read_text().strip().splitlines()
    assert rc == 130 and lines[-1].startswith("interrupted:"), lines[-5:]
    assert parent_status(out)[0] == "KILLED"
