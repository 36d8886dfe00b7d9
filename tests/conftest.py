"""Shared test fixtures: one local Ray per test session, one real MLflow server.

The environment is set at import, before any test module imports torch, Ray, DeepSpeed
or MLflow (they read it at import or at init):
  OMP_NUM_THREADS=1   OpenMP spin barriers collapse on a shared 2-core box (20x slower)
  DS_ACCELERATOR=cpu  DeepSpeed's CPU accelerator (gloo), no autodetect warning
  RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5   Ray Train's controller polls its workers 4x as often (below)
  RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=10   one attempt to get a worker group's resources (below)
  T2VU_CACHE          a session temp dir: tiny models and text embeddings built once per session
  RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH   Ray's token auth, fixed up front with a token of the session (below)
  offline vars        pipelines.runtime.env.apply_offline_env(): no hub lookups, no telemetry

Fixtures (session scope; start on first use, stop at session end):
  tiny_model_dir, tiny_wan_dir, tiny_a14b_dir   the tiny CogVideoX / Wan / two-expert Wan of seed 0, built once;
                 the modules that only read a tiny model take these instead of building their own
  ray_session    pipelines.runtime.ray_session.ensure_ray(num_cpus=3, num_gpus=1): dashboard on 127.0.0.1, worker env;
                 at least 3 LOGICAL CPUs (the machine's count if more), on 2 cores:
                 a Tune trial driver (1) + two Train workers (1 each); the dashboard's State
                 API is what cleans up the placement group of a trial Tune stopped. One LOGICAL GPU
                 (no device behind it; nothing here asks for one unless a test does): a cluster with
                 fewer GPUs than an eval asks for (tests/test_eval_ray_waits.py).
  (autouse, per module) after each module the session's Ray holds no CPU/GPU, or what holds them is freed and
                 reported as a SessionRayLeftover warning naming the module (tests/session_ray_guard.py): one
                 module's leftovers made every later search on that pytest worker wait for ever.
  ray_env        (per test) os.environ + RAY_ADDRESS of ray_session: a `t2vu` subprocess joins it.
  mlflow_server  `mlflow server` on a free 127.0.0.1 port with a SQLite backend; yields its
                 http:// tracking URI.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

SESSION_TMP = Path(tempfile.mkdtemp(prefix="t2vu-tests-"))
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["DS_ACCELERATOR"] = "cpu"
# Ray Train's controller polls its workers every 2 s (a run's end is seen up to 2 s late, every state change waits
# for a poll); the suite runs ~35 tiny Train runs, each a few steps long. Inherited by the session's Ray and by
# every `t2vu` subprocess (and its own local Ray). A worker counts as dead only after 10 min unanswered, not here.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Ray Train waits 60 s for a worker group's resources before it retries (distributed.start_timeout_s counts in these
# attempts): 10 s here, so a test of a group that never starts waits one short attempt. Where the resources are free
# the group gets them in milliseconds.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "10")
os.environ["T2VU_CACHE"] = str(SESSION_TMP / "cache")
# Ray 2.60 turns token auth on by itself for every new local `ray.init()`: it sets RAY_AUTH_MODE=token in this
# process's environment (and its cached config) and writes ~/.ray/auth_token. Tests that run the CLI in-process restore
# os.environ after each case (mock.patch.dict), which took the mode away again under Ray's cached config: a session Ray
# started after tests/test_reliability.py in the same process failed ("Failed to start GCS ... InvalidAuthToken"; every
# serial or one-worker run). The suite fixes the mode and its token before anything imports Ray, in its own folder:
# every Ray it starts and every `t2vu` subprocess use them, and nothing is written to the real home.
os.environ["RAY_AUTH_MODE"] = "token"
(SESSION_TMP / "ray_auth_token").write_text(secrets.token_hex(32))
os.environ["RAY_AUTH_TOKEN_PATH"] = str(SESSION_TMP / "ray_auth_token")

from pipelines.runtime.env import apply_offline_env  # noqa: E402

apply_offline_env()

# The Ctrl-C tests send SIGINT to `t2vu` children as a terminal would. A suite started as a background job of a
# non-interactive shell (`cmd &`, nohup) inherits SIGINT *ignored*, which exec keeps: the children then never see the
# KeyboardInterrupt and those tests failed (seen: test_ctrl_c_kills_the_parent, the SIGINT holder of
# test_run_folder_ownership). With a handler here, every child starts with SIGINT at its default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random CogVideoX of seed 0, built once per session for the modules that only read it (its first
    build costs ~8 s of CPU). Read-only: a test that writes next to a model builds its own."""
    from unlearn.models.tiny import make_tiny_model

    return make_tiny_model(SESSION_TMP / "tiny-seed0" / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_wan_dir() -> Path:
    """The tiny Wan 2.1 (one transformer) of seed 0, once per session; read-only."""
    from unlearn.models.tiny_wan import make_tiny_wan

    return make_tiny_wan(SESSION_TMP / "tiny-wan-seed0" / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_a14b_dir() -> Path:
    """The tiny Wan 2.2 A14B (two experts) of seed 0, once per session; read-only."""
    from unlearn.models.tiny_wan import make_tiny_wan

    return make_tiny_wan(SESSION_TMP / "tiny-a14b-seed0" / "model", seed=0, experts=2)


class SessionRayLeftover(UserWarning):
    """A test module left something holding the session Ray's CPUs or GPU; the guard freed it."""


@pytest.fixture(scope="module", autouse=True)
def session_ray_left_free(request):
    yield
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    from tests.session_ray_guard import free_leftovers, wait_until_free

    busy = wait_until_free(ray, 60)
    if busy:
        freed = free_leftovers(ray)
        still = wait_until_free(ray, 30)
        warnings.warn(SessionRayLeftover(
            f"{request.module.__name__} left {busy} of the session's Ray held 60 s after its last test; freed: "
            f"{'; '.join(freed) or 'nothing found'}" + (f"; still held: {still}" if still else "")))


@pytest.fixture()
def ray_env(ray_session) -> dict[str, str]:
    """The environment for a `t2vu` subprocess that joins the session's Ray (RAY_ADDRESS) instead of starting its
    own: a local Ray start and stop costs ~10-20 s per command on 2 cores. For tests whose subject is not the
    command's own local Ray (its start-up, signals, reaper: those start one)."""
    return {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}


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
