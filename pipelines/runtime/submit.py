"""Submit any `t2vu` command to a Ray cluster through the Ray Jobs API.

The job's `runtime_env` uploads this project as `working_dir` (minus runs,
caches, venvs and videos) and forwards the offline/telemetry variables plus
non-secret MLflow settings, so a job behaves on the cluster exactly as on a laptop. Secrets
(MLFLOW_TRACKING_PASSWORD, tokens) are forwarded only when named with `--env-secret`, because a
job's runtime_env is readable by anyone with dashboard access; credential files are never uploaded.

Auth: Ray 2.60 clusters enable token auth by default. The client must send
the cluster's token: we turn on `RAY_AUTH_MODE=token` when a token is
available (`--auth-token-file`, `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`, or
`~/.ray/auth_token`), which is what `ray job submit` needs too.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from pipelines.runtime.env import runtime_env_vars
from pipelines.runtime.paths import project_root

# The checkout (or $T2VU_HOME in the image: configs/, benchmarks/, examples/; the packages are installed there).
PROJECT_ROOT = project_root()
# gitignore-style patterns, relative to working_dir. Keep uploads small: Ray caps a
# working_dir package at 500 MiB and every job re-uploads it when it changes.
EXCLUDES = [
    ".git", ".venv", "venv", "runs", ".cache", "**/__pycache__", "*.egg-info", ".pytest_cache",
    "**/*.mp4", "**/*.gif", "mlruns", "*.db",
    # credentials never travel with the code (the package is readable on every node)
    "**/.env", "**/*.env", "**/.netrc", "**/auth_token", "**/*_token", "**/*.token", "**/*.pem", "**/*.key",
    "**/credentials", "**/credentials.*", "**/.aws", "**/.ssh", "**/.ray",
]
# Forwarded when set locally: not secret.
FORWARDED = ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "HF_HOME", "T2VU_CACHE"]
# A job's runtime_env is readable by anyone with dashboard access: secrets go only when asked (--env-secret).
SECRET_MARKERS = ("PASSWORD", "TOKEN", "SECRET", "_KEY", "CREDENTIAL")


def is_secret_name(name: str) -> bool:
    return any(m in name.upper() for m in SECRET_MARKERS)


def parse_env(items: list[str]) -> dict[str, str]:
    """`--env KEY=VALUE` items; a secret-looking KEY is refused (use --env-secret KEY)."""
    out = {}
    for kv in items:
        key, sep, value = kv.partition("=")
        if not sep or not key.strip() or not key.replace("_", "").isalnum():
            raise ValueError(f"--env {kv!r}: expected KEY=VALUE with KEY made of letters, digits and _")
        if is_secret_name(key):
            raise ValueError(f"--env {key}=...: looks like a secret; pass it with --env-secret {key} (value from "
                             "your environment), knowing the job's runtime_env is visible on the dashboard")
        out[key] = value
    return out


def secret_env(names: list[str], warn=None) -> dict[str, str]:
    """Values of the named local variables, with a warning each (they become readable on the dashboard)."""
    out = {}
    for name in names:
        if name not in os.environ:
            raise ValueError(f"--env-secret {name}: not set in this environment")
        out[name] = os.environ[name]
        if warn is not None:
            warn(f"warning: {name} is forwarded in the job's runtime_env; anyone with access to the Ray dashboard "
                 "or Jobs API can read it")
    return out
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def configure_auth(token_file: str | None = None) -> str:
    """Set the env the Ray client reads its token from; returns the auth mode used."""
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--auth-token-file {path} does not exist (get it with `ray get-auth-token` on the head)")
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
        os.environ["RAY_AUTH_MODE"] = "token"
    elif "RAY_AUTH_MODE" not in os.environ:
        default = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
        if os.environ.get("RAY_AUTH_TOKEN") or default.is_file():
            os.environ["RAY_AUTH_MODE"] = "token"
    return os.environ.get("RAY_AUTH_MODE", "disabled")


# Every call to the Jobs API gets a deadline: Ray's client sends its HTTP requests without a timeout, so a
# listener that accepts and never answers (a wrong port, a stuck proxy) hung `t2vu submit` for good.
REQUEST_TIMEOUT_S = float(os.environ.get("T2VU_SUBMIT_TIMEOUT_S", "30"))


def bounded(what: str, address: str, fn, *args, timeout_s: float | None = None, **kwargs):
    """fn(*args, **kwargs) with a deadline; past it, one ConfigError line naming the address and the fix.

    The call runs on a daemon thread: a socket that never answers cannot be interrupted, and a daemon
    thread does not keep the process alive once the command has given up on it."""
    import threading

    from unlearn.config import ConfigError

    timeout_s = REQUEST_TIMEOUT_S if timeout_s is None else timeout_s
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    th = threading.Thread(target=target, name=f"t2vu-submit-{what}", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise ConfigError(f"{address} did not answer {what} within {timeout_s:.0f} s: is it the Ray dashboard "
                          "(http://HEAD:8265) and reachable? (raise the deadline with T2VU_SUBMIT_TIMEOUT_S)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def check_address(address: str, timeout_s: float | None = None) -> None:
    """Fail in one line, within the deadline, unless `address` is an HTTP server that looks like Ray's dashboard."""
    from urllib.parse import urlparse

    import requests

    from unlearn.config import ConfigError

    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError(f"--address {address}: the Ray Jobs API is HTTP; give the dashboard address, "
                          "e.g. --address http://HEAD:8265")
    timeout_s = REQUEST_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        r = requests.get(address.rstrip("/") + "/api/version", timeout=(min(timeout_s, 10.0), timeout_s))
    except requests.Timeout:
        raise ConfigError(f"{address} did not answer within {timeout_s:.0f} s: is it the Ray dashboard "
                          "(http://HEAD:8265)? (raise the deadline with T2VU_SUBMIT_TIMEOUT_S)") from None
    except requests.RequestException as exc:
        raise ConfigError(f"{address} cannot be reached ({type(exc).__name__}): is the Ray head up and its "
                          "dashboard port (8265) open to you?") from None
    if r.status_code in (401, 403):  # token auth: the Jobs client sends the token and says what is wrong
        return
    try:
        ok = r.ok and "ray_version" in r.json()
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{address} answered (HTTP {r.status_code}) but is not a Ray dashboard (no /api/version): "
                          "give the Ray head's dashboard address, e.g. http://HEAD:8265")


def client(address: str, token_file: str | None = None):
    configure_auth(token_file)
    check_address(address)
    from ray.job_submission import JobSubmissionClient

    c = bounded("the Jobs client's handshake", address, JobSubmissionClient, address)
    return _BoundedClient(c, address)


class _BoundedClient:
    """The Jobs client with every method call under `bounded` (same names, same results)."""

    def __init__(self, inner, address: str):
        self._inner, self._address = inner, address

    def __getattr__(self, name):
        fn = getattr(self._inner, name)
        if not callable(fn):
            return fn
        return lambda *a, **k: bounded(name, self._address, fn, *a, **k)


def build_runtime_env(working_dir: Path = PROJECT_ROOT, extra_env: dict[str, str] | None = None, pip: list[str] | None = None) -> dict:
    env = runtime_env_vars()
    env.update({k: os.environ[k] for k in FORWARDED if k in os.environ})
    env.update(extra_env or {})
    renv = {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": env}
    if pip:
        renv["pip"] = pip
    return renv


def entrypoint_for(t2vu_args: list[str]) -> str:
    if not t2vu_args:
        raise ValueError("nothing to submit: give a t2vu command after `--`, e.g. `t2vu submit -- tune --config ...`")
    if t2vu_args[0] == "t2vu":
        t2vu_args = t2vu_args[1:]
    # `python -m pipelines.cli.entry` runs from the uploaded working_dir, whatever is installed on the cluster.
    return "python -m pipelines.cli.entry " + " ".join(shlex.quote(a) for a in t2vu_args)


def submit(address: str, t2vu_args: list[str], *, token_file=None, extra_env=None, job_id=None,
           working_dir: Path = PROJECT_ROOT, pip=None, agent_wait_s: float = 180) -> str:
    c = client(address, token_file)
    kwargs = dict(entrypoint=entrypoint_for(t2vu_args), runtime_env=build_runtime_env(working_dir, extra_env, pip),
                  submission_id=job_id)
    # A freshly started head answers HTTP before its job agent is up ("No available agent");
    # that is transient, so retry for a while instead of failing the submission.
    deadline = time.time() + agent_wait_s
    while True:
        try:
            return c.submit_job(**kwargs)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(2)


def follow(address: str, job_id: str, *, token_file=None, out=sys.stdout, poll_s: float = 1.0, timeout_s: float | None = None) -> str:
    """Stream the job's logs until it ends; returns the final status name."""
    c = client(address, token_file)
    printed = 0
    start = time.time()
    while True:
        logs = c.get_job_logs(job_id)
        if len(logs) > printed:
            out.write(logs[printed:])
            out.flush()
            printed = len(logs)
        st = c.get_job_status(job_id)
        status = str(getattr(st, "value", st))
        if status in TERMINAL:
            logs = c.get_job_logs(job_id)
            out.write(logs[printed:])
            return status
        if timeout_s is not None and time.time() - start > timeout_s:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def status(address: str, job_id: str, token_file=None) -> dict:
    c = client(address, token_file)
    info = c.get_job_info(job_id)
    return {"job_id": job_id, "status": str(info.status.value if hasattr(info.status, "value") else info.status),
            "message": info.message, "entrypoint": info.entrypoint}


def stop(address: str, job_id: str, token_file=None) -> bool:
    return client(address, token_file).stop_job(job_id)
