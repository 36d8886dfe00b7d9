"""`t2vu submit` against a real `ray start --head` cluster on 127.0.0.1 (Ray Jobs API, token auth)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"


@pytest.fixture(scope="module")
def head_cluster():
    """A private head node. Started with --block in its own process group so that stopping it
    (SIGTERM to the group) cannot touch any other Ray instance of the test session (`ray stop`
    would kill every Ray process on the machine)."""
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths are length-limited
    dash = free_port()
    # PATH as in an activated venv: the job's `python` is the cluster's python (here: this venv's).
    # No drain on SIGTERM: `ray start --block` otherwise waits up to 30 s (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, for
    # Kubernetes pods) for its node to drain before stopping; the teardown below took 33 s of every suite run.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{tmp}/token",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    subprocess.run([str(RAY), "get-auth-token", "--generate"], env={**env, "HOME": tmp}, capture_output=True, timeout=60)
    token = Path(tmp) / ".ray" / "auth_token"
    if token.exists():
        Path(f"{tmp}/token").write_text(token.read_text())
    else:  # older CLIs: write one ourselves
        Path(f"{tmp}/token").write_text(os.urandom(16).hex())
    proc = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--disable-usage-stats",
         f"--temp-dir={tmp}/ray", "--include-dashboard=true",
         # Own ports for every per-node agent: the test session's shared Ray (ray_session) already
         # holds the defaults (e.g. the dashboard agent's 52365), and a head whose agent cannot bind
         # answers every submission with "No available agent".
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
         f"--object-manager-port={free_port()}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # e.g. 401 without a token: the server is up
            break
        except Exception:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {proc.stdout.read()[-3000:]}")
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("Ray dashboard did not come up within 120 s")
    yield address, f"{tmp}/token"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_submit_follow_status_and_outputs(head_cluster, tmp_path):
    address, token = head_cluster
    out = tmp_path / "job-out"
    env = {**os.environ, "T2VU_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_AUTH_MODE", None)
    cmd = [sys.executable, "-m", "pipelines.cli.entry", "submit", "--address", address, "--auth-token-file", token,
           "--follow", "--timeout", "400", "--job-id", "t2vu-test-job", "--",
           "train", "--config", "configs/tiny.yaml", "--output", str(out), "--set", "train.steps=4"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=500)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "submitted job t2vu-test-job" in r.stdout and "SUCCEEDED" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and (out / "eraser" / "eraser.safetensors").exists()
    st = subprocess.run([sys.executable, "-m", "pipelines.cli.entry", "submit", "--address", address, "--auth-token-file", token,
                         "--status", "t2vu-test-job"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert json.loads(st.stdout)["status"] == "SUCCEEDED"


@pytest.mark.slow
def test_submit_without_token_is_refused_clearly(head_cluster, tmp_path):
    address, _ = head_cluster
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong-token", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "pipelines.cli.entry", "submit", "--address", address, "--", "make-tiny-model", "x"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode != 0
    assert "token" in (r.stdout + r.stderr).lower()


def test_entrypoint_and_runtime_env(monkeypatch):
    from pipelines.runtime.submit import build_runtime_env, entrypoint_for

    assert entrypoint_for(["t2vu", "tune", "--config", "a b.yaml"]) == "python -m pipelines.cli.entry tune --config 'a b.yaml'"
    with pytest.raises(ValueError, match="nothing to submit"):
        entrypoint_for([])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    renv = build_runtime_env()
    assert renv["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert renv["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert {"runs", ".venv", ".git"} <= set(renv["excludes"])


def test_secrets_are_forwarded_only_when_asked(monkeypatch):
    from pipelines.runtime.submit import EXCLUDES, build_runtime_env, parse_env, secret_env

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    assert "MLFLOW_TRACKING_PASSWORD" not in build_runtime_env()["env_vars"]
    warnings = []
    renv = build_runtime_env(extra_env=secret_env(["MLFLOW_TRACKING_PASSWORD"], warn=warnings.append))
    assert renv["env_vars"]["MLFLOW_TRACKING_PASSWORD"] == "hunter2" and "dashboard" in warnings[0]
    with pytest.raises(ValueError, match="--env-secret MY_API_TOKEN"):
        parse_env(["MY_API_TOKEN=abc"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_env(["novalue"])
    assert parse_env(["A_B=1=2"]) == {"A_B": "1=2"}
    assert {"**/.env", "**/auth_token", "**/.netrc"} <= set(EXCLUDES)


def test_credential_files_are_not_uploaded(tmp_path):
    """The excludes are applied by Ray's own packaging code (what a job actually uploads)."""
    from ray._private.runtime_env.packaging import _get_excludes, _dir_travel

    from pipelines.runtime.submit import EXCLUDES

    for name in (".env", "auth_token", "deploy.pem", "ok.py", "unlearn/models/tokenizer.py", "conf/prod.env"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    seen = []
    _dir_travel(tmp_path, [_get_excludes(tmp_path, EXCLUDES)], lambda p: seen.append(p.relative_to(tmp_path).as_posix()),
                include_gitignore=False)
    files = {s for s in seen if (tmp_path / s).is_file()}
    assert files == {"ok.py", "unlearn/models/tokenizer.py"}


# --- deadlines and one-line errors against listeners that are not a Ray cluster ------------------------

@contextlib.contextmanager
def listener(mode: str):
    """A real TCP listener on 127.0.0.1. silent: accepts and never answers; close: closes each connection
    at once; web: answers every request with an HTML page (a web server that is not a Ray Jobs API)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop, held = threading.Event(), []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            if mode == "silent":
                held.append(conn)
                continue
            if mode == "web":
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 26\r\n"
                                 b"Connection: close\r\n\r\n<html>not ray here</html>\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        srv.close()
        for conn in held:
            conn.close()


def run_cli(argv: list[str], limit_s: float = 90) -> tuple[int | None, str, float]:
    """`t2vu ARGV` in-process, in a thread given at most limit_s (a hang fails the test, not the suite)."""
    from unittest import mock

    from pipelines.cli.entry import main

    out: dict = {}
    err = io.StringIO()

    def target():
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            out["rc"] = main(argv)

    with mock.patch.dict(os.environ):
        for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            os.environ.pop(k, None)
        t0 = time.monotonic()
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(limit_s)
        took = time.monotonic() - t0
    return out.get("rc"), err.getvalue(), took


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("args", [["--", "train", "--help"], ["--status", "some-job"], ["--logs", "some-job"]])
def test_a_listener_that_never_answers_ends_within_the_deadline(args):
    import ray.job_submission  # noqa: F401  (imported before the clock starts: the import is not the deadline)

    with listener("silent") as address:
        rc, err, took = run_cli(["submit", "--request-timeout", "2", "--address", address, *args])
    assert rc == 2, f"no exit within 90 s (before: hung for good): {err[-500:]}"
    line = one_error_line(err)
    assert address in line and "did not answer within 2 s" in line and "--request-timeout" in line
    assert 2 <= took < 30, took


@pytest.mark.parametrize("mode,expect", [("close", "cannot be reached (the server closed the connection"),
                                         ("web", "is not a Ray dashboard")])
def test_a_server_that_is_not_ray_is_one_line(mode, expect):
    with listener(mode) as address:
        rc, err, _ = run_cli(["submit", "--request-timeout", "5", "--address", address, "--", "train", "--help"])
    assert rc == 2
    line = one_error_line(err)
    assert address in line and expect in line and "--address" in line


@pytest.mark.parametrize("address", ["ftp://127.0.0.1:21", "ray://127.0.0.1:10001", "os://x"])
def test_an_address_that_is_not_http_is_refused_before_any_connection(address):
    rc, err, _ = run_cli(["submit", "--address", address, "--", "train", "--help"])
    assert rc == 2
    line = one_error_line(err)
    assert address in line and "http:// or https://" in line


def test_request_timeout_must_be_positive():
    rc, err, _ = run_cli(["submit", "--request-timeout", "0", "--address", "http://127.0.0.1:9", "--", "train"])
    assert rc == 2 and "--request-timeout" in one_error_line(err)
