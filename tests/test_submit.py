"""`t2vu submit` against a real `ray start --head` cluster on 127.0.0.1 (Ray Jobs API, token auth)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
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
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{tmp}/token",
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
