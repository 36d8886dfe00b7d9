"""The one writer to MLflow: clients (checked reachable in seconds), experiments, provenance, params,
metrics (`log_batch`) and artifacts, all through `MlflowClient` with explicit run ids.

Which runs exist and when they end (a search's parent, a child per trial, the final eval) is
pipelines.tracking.tracker; what a person sees without code (the runs table's saved view, trial names):
pipelines.tracking.mlflow_ui.

Default tracking URI: `sqlite:///<output>/mlflow.db` with artifacts under
`<output>/mlartifacts` (MLflow >= 3.13 refuses plain file stores); an `http://`
tracking server works the same (artifacts then go through its proxy).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eval.metrics import is_finite_number

LOG = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000
#: Metrics per `log_batch` request: MLflow takes at most 1000 entities (metrics + params + tags) per call.
METRICS_PER_BATCH = 500


_REACHABLE: set[str] = set()


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///path` tracking URI (None for any other URI or an in-memory one)."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    rest = tracking_uri[len("sqlite:"):]
    if not rest.startswith("///"):
        return None  # sqlite:// (in memory) or a form SQLAlchemy does not take as a file
    path = rest[3:].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_sqlite_writable(tracking_uri: str) -> None:
    """Fail in a moment, naming the file, when a SQLite tracking store cannot be written.

    MLflow retries a write to a read-only database for minutes (measured: 105 s) and then ends in
    a traceback whose last line never says "read-only". Checked: the file (opened, and a write tried
    inside a transaction that is rolled back, so nothing changes) or, for a file still to be made,
    the nearest existing folder.
    """
    import sqlite3

    from unlearn.config import ConfigError

    path = sqlite_path(tracking_uri)
    if path is None:
        return
    fix = "make it writable, or set mlflow.tracking_uri to another sqlite:///FILE (or an http:// server)"
    if path.is_dir():
        raise ConfigError(f"mlflow.tracking_uri {tracking_uri}: {path} is a folder, not a SQLite file; "
                          "name a file, e.g. sqlite:///runs/mlflow.db")
    if not path.exists():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"mlflow.tracking_uri {tracking_uri}: cannot create {path}: {parent} is read-only "
                              f"or not a folder; {fix}")
        return
    if not os.access(path, os.R_OK):
        raise ConfigError(f"mlflow.tracking_uri {tracking_uri}: {path} cannot be read (permissions); {fix}")
    try:
        con = sqlite3.connect(str(path), timeout=2.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise ConfigError(f"mlflow.tracking_uri {tracking_uri}: {path} cannot be opened ({exc}); {fix}") from None
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("CREATE TABLE t2vu_write_probe (x INTEGER)")  # rolled back below: nothing changes
        con.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:  # another writer holds it: writable, just busy now
            return
        if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
            raise ConfigError(f"mlflow.tracking_uri {tracking_uri}: the SQLite database {path} is read-only "
                              f"({msg}); {fix}") from None
        raise ConfigError(f"mlflow.tracking_uri {tracking_uri}: {path} cannot be written ({msg}); {fix}") from None
    except sqlite3.DatabaseError as exc:  # "file is not a database"
        raise ConfigError(f"mlflow.tracking_uri {tracking_uri}: {path} is not a SQLite database ({exc}); "
                          "point mlflow.tracking_uri at an MLflow SQLite file or a new path") from None
    finally:
        con.close()


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, naming the URI, when the tracking store cannot be used: an HTTP tracking
    server that does not answer, or a SQLite file that cannot be written (`check_sqlite_writable`).

    MLflow's own client retries for minutes (measured: 265 s for a silent server, 105 s for a
    read-only SQLite file) before giving up. Checked once per URI and process.
    """
    if tracking_uri in _REACHABLE:
        return
    if tracking_uri.startswith("sqlite:"):
        check_sqlite_writable(tracking_uri)
        _REACHABLE.add(tracking_uri)
        return
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    from unlearn.config import ConfigError

    url = tracking_uri.rstrip("/") + "/health"
    try:
        requests.get(url, timeout=timeout_s)
    except requests.RequestException as exc:
        raise ConfigError(
            f"mlflow.tracking_uri {tracking_uri} does not answer ({type(exc).__name__} within {timeout_s:g} s): "
            "start the server, fix the URI, or set mlflow.tracking_uri: null to log locally only"
        ) from None
    _REACHABLE.add(tracking_uri)


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    check_reachable(tracking_uri)
    return MlflowClient(tracking_uri)


#: MLflow 3's UI opens an experiment by its kind: untagged ones land on the GenAI overview (traces,
#: token usage); this kind opens the runs table, where trials compare side by side.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(c, name: str, output_dir: str | Path | None = None) -> str:
    """The experiment `name` (restored if deleted, created if missing), tagged as model training."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        if exp.tags.get("mlflow.experimentKind") is None:  # experiments made by earlier versions
            for k, v in EXPERIMENT_KIND.items():
                c.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    artifact_location = None
    if output_dir is not None and c.tracking_uri.startswith("sqlite:"):
        # Without this, a SQLite-backed experiment puts artifacts in ./mlruns of whatever cwd.
        artifact_location = (Path(output_dir).resolve() / "mlartifacts").as_uri()
    try:
        return c.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)
    except Exception:  # created concurrently
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --- provenance ------------------------------------------------------------------------------------

def git_sha(repo: str | Path | None = None) -> str:
    from pipelines.runtime.paths import project_root

    repo = Path(repo or project_root())
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "deepspeed", "ray", "diffusers", "transformers", "mlflow", "optuna", "nudenet", "t2v-unlearn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def cluster_shape() -> dict[str, Any]:
    try:
        import ray

        if ray.is_initialized():
            res = ray.cluster_resources()
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            return {"nodes": len(nodes), "CPU": res.get("CPU", 0), "GPU": res.get("GPU", 0),
                    "memory_gb": round(res.get("memory", 0) / 2**30, 1)}
    except Exception:  # provenance must not fail a search
        pass
    return {"nodes": 1, "CPU": os.cpu_count() or 0, "GPU": 0}


# --- params ----------------------------------------------------------------------------------------

def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{'loss': {'w_unlearn': 1}} -> {'loss.w_unlearn': 1} (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def param_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 3] + "..."


def method_params(cfg) -> dict[str, str]:
    """Stable, flat param names of the method sections: `loss.w_unlearn`, `eraser.rank`, ..."""
    from pipelines.config.pipeline import METHOD_SECTIONS

    data = cfg.model_dump(mode="json", include=set(METHOD_SECTIONS))
    return {k: param_value(v) for k, v in flatten(data).items()}


def log_params(c, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    existing = c.get_run(run_id).data.params
    todo = [Param(k, v) for k, v in params.items() if existing.get(k) != v]
    for i in range(0, len(todo), 90):  # MLflow caps params per batch at 100
        c.log_batch(run_id, params=todo[i : i + 90])


def log_batch(c, run_id: str, metrics: Iterable[tuple[str, float, int]] = (), tags: dict[str, str] | None = None) -> None:
    """The one way metrics reach MLflow: (name, value, step) triples at one timestamp, plus run
    tags (sent with the first request), in as few requests as MLflow's per-call cap allows."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, int(s)) for k, v, s in metrics]
    run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
    for i in range(0, max(len(ms), 1 if run_tags else 0), METRICS_PER_BATCH):
        c.log_batch(run_id, metrics=ms[i : i + METRICS_PER_BATCH], tags=run_tags if i == 0 else [])


def log_metrics(c, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
    """Numeric, finite entries of `metrics` at `step`; anything else is skipped."""
    log_batch(c, run_id, [(k, v, step) for k, v in metrics.items() if is_finite_number(v)])


def log_dir(c, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    try:
        c.log_artifacts(run_id, str(local_dir), artifact_path=artifact_path)
    except Exception as exc:  # an unreachable artifact store must not lose the search
        LOG.warning("Could not log artifacts %s to run %s: %s", local_dir, run_id, exc)


def log_file(c, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    try:
        c.log_artifact(run_id, str(path), artifact_path=artifact_path)
    except Exception as exc:
        LOG.warning("Could not log artifact %s to run %s: %s", path, run_id, exc)


def finish(c, run_id: str, status: str = "FINISHED") -> None:
    c.set_terminated(run_id, status=status)


def run_link(tracking_uri: str, exp_id: str, run_id: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"
    return f"run {run_id}"

