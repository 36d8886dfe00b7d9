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

Deadlines: every request to the Jobs API waits at most `timeout_s` (`t2vu submit --request-timeout`,
default $T2VU_SUBMIT_TIMEOUT_S or 30 s) to connect and between bytes of the answer (an upload that keeps
moving is not cut off, however long the package); the Ray SDK itself has no timeout, so a
listener that accepts and never answers used to hang the command for good. Every network failure
(no answer, refused, not a Ray Jobs API, an unsupported scheme such as ftp://, a refused token) is
a `SubmitError`: one line naming the address, the timeout where it applies, and the fix.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from pathlib import Path

from pipelines.runtime.env import runtime_env_vars
from pipelines.runtime.paths import project_root
from unlearn.config import ConfigError

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


# T2VU_SUBMIT_TIMEOUT_S sets the default (the command's --request-timeout wins).
DEFAULT_TIMEOUT_S = float(os.environ.get("T2VU_SUBMIT_TIMEOUT_S", "30"))
SCHEMES = ("http", "https")


class SubmitError(ConfigError):
    """The Jobs API could not be reached or refused the request (one line: address, timeout, fix)."""


def check_address(address: str) -> str:
    """The Jobs API URL of `address` (http:// added when it has no scheme); an unsupported scheme
    (ftp://, ray://, or any other: Ray's SDK would import a module of that name) is refused."""
    if not address or not address.strip():
        raise SubmitError("--address is empty; give the Ray dashboard address, e.g. http://HEAD:8265")
    address = address.strip().rstrip("/")
    scheme = address.split("://", 1)[0].lower() if "://" in address else "http"
    if scheme not in SCHEMES:
        raise SubmitError(f"--address {address}: the Ray Jobs API is HTTP (http:// or https://), not {scheme}://; "
                          "give the head's dashboard address, e.g. http://HEAD:8265")
    return address if "://" in address else f"http://{address}"


def _reason(exc: BaseException) -> str:
    """The few words of a requests/urllib3 connection error that say what happened."""
    import re

    text = str(exc)
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the server closed the connection without answering"
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return m.group(1).strip().lower() if m else type(exc).__name__


def _fix(address: str) -> str:
    return (f"check that --address {address} is the Ray dashboard of a running cluster (`ray start --head` "
            "prints it; default port 8265) and reachable from here")


@contextlib.contextmanager
def network(address: str, timeout_s: float, what: str = "Ray Jobs API", *, first_contact: bool = False):
    """Turn the Jobs SDK's network failures into one-line `SubmitError`s naming the address and the fix.
    first_contact: the client's version check, where an answer that is not the Jobs API's JSON
    (a web page, another service) shows up as a JSON or key error."""
    import json

    import requests
    from ray.exceptions import AuthenticationError

    def no_answer() -> SubmitError:
        return SubmitError(f"{what} at {address} did not answer within {timeout_s:g} s; {_fix(address)}, or allow "
                           "longer with --request-timeout SECONDS (or T2VU_SUBMIT_TIMEOUT_S)")

    try:
        yield
    except SubmitError:
        raise
    except requests.exceptions.Timeout:
        raise no_answer() from None
    except AuthenticationError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise SubmitError(f"{what} at {address} refused the request: {detail}; pass the cluster's token with "
                          "--auth-token-file (`ray get-auth-token` on the head)") from None
    except (requests.exceptions.ConnectionError, ConnectionError) as exc:
        cause = exc.__context__ or exc  # the SDK re-raises requests' error as a bare ConnectionError
        if isinstance(cause, requests.exceptions.Timeout):
            raise no_answer() from None
        raise SubmitError(f"{what} at {address} cannot be reached ({_reason(cause)}); {_fix(address)}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:  # requests' JSONDecodeError is a json one
        if not first_contact and not isinstance(exc, json.JSONDecodeError):
            raise
        raise SubmitError(f"{what} at {address} answered, but is not a Ray dashboard (its answer is not the Jobs "
                          f"API's JSON: {type(exc).__name__}); {_fix(address)}") from None
    except requests.exceptions.RequestException as exc:
        raise SubmitError(f"{what} at {address}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}; "
                          f"{_fix(address)}") from None
    except RuntimeError as exc:  # the SDK's own errors: an HTTP status, a job not found, the version check
        msg = " ".join(str(exc).split())
        if "Version check returned 404" in msg:
            raise SubmitError(f"{what} at {address} answered, but is not a Ray dashboard (no /api/version); "
                              f"{_fix(address)}") from None
        raise SubmitError(f"{what} at {address}: {msg[:300]}") from None


@contextlib.contextmanager
def _only_this_address():
    """Ray's SDK silently prefers $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS over the address it is given:
    hide them while the client is made, so --address (checked, and named in errors) is the one used."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def client(address: str, token_file: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
    """A Jobs API client whose every request has a deadline (connect, and each wait for bytes: `timeout_s`)."""
    if not timeout_s > 0 or timeout_s == float("inf"):
        raise SubmitError(f"--request-timeout must be a positive number of seconds, got {timeout_s}")
    url = check_address(address)
    configure_auth(token_file)
    from ray.job_submission import JobSubmissionClient

    class _Client(JobSubmissionClient):
        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", (timeout_s, timeout_s))
            return super()._do_request(method, endpoint, **kwargs)

    with network(url, timeout_s, first_contact=True), _only_this_address():
        c = _Client(url)  # checks the connection and the server's Ray version (two requests)
    c.t2vu_address, c.t2vu_timeout_s = url, timeout_s
    return c


def call(c, method: str, *args, **kwargs):
    """`c.method(*args)` with its network failures as one-line `SubmitError`s."""
    with network(c.t2vu_address, c.t2vu_timeout_s):
        return getattr(c, method)(*args, **kwargs)


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
        raise ConfigError("nothing to submit: give a t2vu command after `--`, e.g. `t2vu submit -- tune --config ...`")
    if t2vu_args[0] == "t2vu":
        t2vu_args = t2vu_args[1:]
    # `python -m pipelines.cli.entry` runs from the uploaded working_dir, whatever is installed on the cluster.
    return "python -m pipelines.cli.entry " + " ".join(shlex.quote(a) for a in t2vu_args)


def submit(address: str, t2vu_args: list[str], *, token_file=None, extra_env=None, job_id=None,
           working_dir: Path = PROJECT_ROOT, pip=None, agent_wait_s: float = 180,
           timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    entrypoint = entrypoint_for(t2vu_args)  # argument errors before any network call
    c = client(address, token_file, timeout_s)
    kwargs = dict(entrypoint=entrypoint, runtime_env=build_runtime_env(working_dir, extra_env, pip),
                  submission_id=job_id)
    # A freshly started head answers HTTP before its job agent is up ("No available agent");
    # that is transient, so retry for a while instead of failing the submission.
    deadline = time.time() + agent_wait_s
    while True:
        with network(c.t2vu_address, timeout_s):
            try:
                return c.submit_job(**kwargs)
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.time() > deadline:
                    raise
        time.sleep(2)


def follow(address: str, job_id: str, *, token_file=None, out=sys.stdout, poll_s: float = 1.0,
           timeout_s: float | None = None, request_timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Stream the job's logs until it ends; returns the final status name. timeout_s: give up on the
    job after this long (None: wait for it); request_timeout_s: each request's deadline."""
    c = client(address, token_file, request_timeout_s)
    printed = 0
    start = time.time()
    while True:
        logs = call(c, "get_job_logs", job_id)
        if len(logs) > printed:
            out.write(logs[printed:])
            out.flush()
            printed = len(logs)
        st = call(c, "get_job_status", job_id)
        status = str(getattr(st, "value", st))
        if status in TERMINAL:
            logs = call(c, "get_job_logs", job_id)
            out.write(logs[printed:])
            return status
        if timeout_s is not None and time.time() - start > timeout_s:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def status(address: str, job_id: str, token_file=None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    c = client(address, token_file, timeout_s)
    info = call(c, "get_job_info", job_id)
    return {"job_id": job_id, "status": str(info.status.value if hasattr(info.status, "value") else info.status),
            "message": info.message, "entrypoint": info.entrypoint}


def stop(address: str, job_id: str, token_file=None, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    return call(client(address, token_file, timeout_s), "stop_job", job_id)


def logs(address: str, job_id: str, token_file=None, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    return call(client(address, token_file, timeout_s), "get_job_logs", job_id)
