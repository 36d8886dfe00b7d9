"""Shared test fixtures: one local Ray per test session, one real MLflow server.

The environment is set at import, before any test module imports torch, Ray, DeepSpeed
or MLflow (they read it at import or at init):
  OMP_NUM_THREADS=1   OpenMP spin barriers collapse on a shared 2-core box (20x slower)
  DS_ACCELERATOR=cpu  DeepSpeed's CPU accelerator (gloo), no autodetect warning
  T2VU_CACHE          a session temp dir: tiny models and text embeddings built once per session
  offline vars        pipelines.runtime.env.apply_offline_env(): no hub lookups, no telemetry

Fixtures (session scope; start on first use, stop at session end):
  ray_session    pipelines.runtime.ray_session.ensure_ray(num_cpus=3, num_gpus=1): dashboard on 127.0.0.1, worker env;
                 at least 3 LOGICAL CPUs (the machine's count if more), on 2 cores:
                 a Tune trial driver (1) + two Train workers (1 each); the dashboard's State
                 API is what cleans up the placement group of a trial Tune stopped. One LOGICAL GPU
                 (no device behind it; nothing here asks for one unless a test does): a cluster with
                 fewer GPUs than an eval asks for (tests/test_eval_ray_waits.py).
  mlflow_server  `mlflow server` on a free 127.0.0.1 port with a SQLite backend; yields its
                 http:// tracking URI.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

SESSION_TMP = Path(tempfile.mkdtemp(prefix="t2vu-tests-"))
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["DS_ACCELERATOR"] = "cpu"
os.environ["T2VU_CACHE"] = str(SESSION_TMP / "cache")

from pipelines.runtime.env import apply_offline_env  # noqa: E402

apply_offline_env()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray costs ~10 s on this box), started
    the way every entry point starts it (`ensure_ray`: dashboard, worker env); stopped only if
    this fixture started it."""
    import ray

    from pipelines.runtime.ray_session import ensure_ray

    started = ensure_ray(num_cpus=3, num_gpus=1)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (test servers bind to loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server():
    """A real `mlflow server` (SQLite backend, artifact proxy) on 127.0.0.1; yields its URI."""
    root = SESSION_TMP / "mlflow-server"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
           "--workers", "1"]
    log = open(root / "server.log", "wb")
    # No job runner: it serves MLflow's GenAI jobs (unused here) and costs ~15 s of CPU at start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root, env=env)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({proc.returncode}); see {root / 'server.log'}:\n"
                                   + (root / "server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"mlflow server did not answer /health within 180 s; see {root / 'server.log'}")
            time.sleep(0.5)
        yield uri
    finally:
        # The server forks workers and a job runner: stop the process group we started, by its id.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
