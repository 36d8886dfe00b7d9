"""The MLflow runs of one search (or attack benchmark), opened to closed, in one object.

    SearchTracking   the ids a search's processes share: tracking URI, experiment, parent run (frozen,
                     picklable: the Tune driver hands it to every trial; <out>/mlflow.json holds the same)
    TrialTracking    the one run a trial's rank-0 worker logs its live curve into (frozen, picklable: it
                     crosses from the trial driver to the Ray Train workers inside the objective payload)
    Tracker          the lifecycle on those ids: the parent run started or resumed (`start`), one child run
                     per key (a Tune trial id, `baseline-<m>`, `final-eval`; found again, never duplicated),
                     each child and the parent ended FINISHED, FAILED or KILLED, the best child tagged.
                     `Tracker(None)` is tracking switched off: every method does nothing, so callers
                     carry no `if mlflow:` branches.
    closes_search_parent   a failure or Ctrl-C anywhere in a search ends its parent FAILED / KILLED.

Runs are found again by tags, so a killed and restored search reuses its parent and its children:

  parent  tags t2vu.role=search, t2vu.search=<name>, t2vu.output=<abs output dir>, best_trial=<trial id>
  child   tags t2vu.role=trial, t2vu.trial_id=<key>, mlflow.parentRunId=<parent>, best_trial=true (the best one)

Everything goes through `MlflowClient` with explicit run ids (pipelines.tracking.mlflow_utils): the fluent
API keeps a per-process run stack, and a search spans the Tune driver, one process per trial driver and the
rank-0 training workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.tracking import mlflow_utils as mu
from unlearn.fsutil import atomic_write_text

LOG = logging.getLogger(__name__)

PARENT_ID_FILE = "mlflow_parent_run_id.txt"
IDS_FILE = "mlflow.json"


@dataclass(frozen=True)
class SearchTracking:
    """Where a search's runs live; as <out>/mlflow.json."""
    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def write(self, out: str | Path) -> None:
        atomic_write_text(Path(out) / IDS_FILE, json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, out: str | Path) -> SearchTracking | None:
        """The ids in <out>/mlflow.json; None when the folder has none (MLflow off) or they are incomplete."""
        try:
            data = json.loads((Path(out) / IDS_FILE).read_text())
            return cls(str(data["tracking_uri"]), str(data["experiment_id"]), str(data["parent_run_id"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class TrialTracking:
    """The MLflow run a trial logs into (live training curve: pipelines.tracking.live_logging; final eval)."""
    tracking_uri: str
    run_id: str


def _status(exc: BaseException) -> str:
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def _error_text(exc: BaseException | str) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:4000]


class Tracker:
    """The runs of one search; `Tracker(None)`: MLflow off (every method a no-op, `child` returns None)."""

    def __init__(self, ids: SearchTracking | None):
        self.ids = ids
        self._client = None

    @property
    def on(self) -> bool:
        return self.ids is not None

    @property
    def parent(self) -> str | None:
        """The parent run's id (None when off)."""
        return self.ids.parent_run_id if self.ids else None

    @property
    def client(self):
        if self._client is None:
            self._client = mu.client(self.ids.tracking_uri)
        return self._client

    def __getstate__(self):  # the ids travel; the client is made again where it is used
        return {"ids": self.ids, "_client": None}

    @classmethod
    def in_folder(cls, out: str | Path) -> Tracker:
        """The tracker of the search whose ids <out>/mlflow.json holds (off when it has none)."""
        return cls(SearchTracking.read(out))

    # --- the parent run -----------------------------------------------------------------------------

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, name: str, out: str | Path, *,
              tags: dict[str, str] | None = None, describe=None) -> Tracker:
        """The parent run of the search writing to `out`: found again on a rerun (the id file, else its tags)
        and set RUNNING, else created with `tags` and then `describe(tracker)` called (params, provenance,
        files: once per parent). Writes <out>/mlflow.json."""
        out = Path(out).resolve()
        c = mu.client(tracking_uri)
        exp_id = mu.get_or_create_experiment(c, experiment, out)
        parent_id, created = _get_or_create_parent(c, exp_id, name, out, tags)
        tracker = cls(SearchTracking(tracking_uri, exp_id, parent_id))
        tracker._client = c
        tracker.ids.write(out)
        if created and describe is not None:
            describe(tracker)
        return tracker

    def finish(self, status: str = "FINISHED", *, metrics: dict[str, Any] | None = None,
               best: tuple[str, str | None] | None = None, files=(), artifact_path: str | None = None) -> None:
        """End the parent: its final metrics, `best` = (trial id, its run id) tagged on both runs, files logged."""
        if not self.on:
            return
        pid = self.ids.parent_run_id
        if best is not None:
            self.set_tags(pid, {"t2vu.best_trial": best[0], **({"t2vu.best_run_id": best[1]} if best[1] else {})})
            if best[1]:
                self.tag_best(best[1], best[0])
        mu.log_metrics(self.client, pid, metrics or {})
        self.log_files(pid, files, artifact_path)
        mu.finish(self.client, pid, status)

    def tag_best(self, best_run_id: str, best_trial_id: str | None) -> None:
        """`best_trial=true` on the best child (and off every other: a resumed search may pick another),
        `best_trial=<trial id>` on the parent: one column in the runs table shows both."""
        c, pid = self.client, self.ids.parent_run_id
        for run in self.children():
            if run.info.run_id != best_run_id and run.data.tags.get("best_trial") == "true":
                c.delete_tag(run.info.run_id, "best_trial")
        self.set_tags(best_run_id, {"best_trial": "true"})
        self.set_tags(pid, {"best_trial": best_trial_id or best_run_id})

    # --- child runs ---------------------------------------------------------------------------------

    def child(self, key: str, *, params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
              run_name: str | None = None) -> str | None:
        """The child run `key` (a trial id, `baseline-<m>`, `final-eval`): one per key, even when its trial
        restarts; set RUNNING and named `run_name` (default: the key)."""
        if not self.on:
            return None
        c, name = self.client, run_name or key
        found = self._find(key)
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING" or found[0].info.run_name != name:
                c.update_run(run_id, status="RUNNING", name=name)
        else:
            all_tags = {"mlflow.parentRunId": self.ids.parent_run_id, "t2vu.role": "trial", "t2vu.trial_id": key,
                        "mlflow.runName": name, **(tags or {})}
            run_id = c.create_run(self.ids.experiment_id, tags=all_tags, run_name=name).info.run_id
        if params:
            mu.log_params(c, run_id, params)
        return run_id

    @contextlib.contextmanager
    def child_run(self, key: str, **kw):
        """`child(key, **kw)` for the duration: ended FINISHED, or FAILED (KILLED on Ctrl-C) with the error as
        its `t2vu.error` tag, and the exception goes on. Yields the run id (None when off)."""
        run_id = self.child(key, **kw)
        try:
            yield run_id
        except BaseException as exc:
            try:
                self.end(run_id, _status(exc), error=exc)
            except Exception as err:  # the store may be what failed: the original error is the one to raise
                LOG.warning("Could not end MLflow run %s: %s", run_id, err)
            raise
        self.end(run_id)

    def find_child(self, key: str) -> str | None:
        found = self._find(key) if self.on else []
        return found[0].info.run_id if found else None

    def children(self):
        return self.client.search_runs([self.ids.experiment_id], max_results=10000,
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.ids.parent_run_id}'")

    def _find(self, key: str):
        return _find_runs(self.client, self.ids.experiment_id,
                          f"tags.`mlflow.parentRunId` = '{self.ids.parent_run_id}' and tags.`t2vu.trial_id` = '{key}'")

    def end(self, run_id: str | None, status: str = "FINISHED", *, error: BaseException | str | None = None,
            metrics: dict[str, Any] | None = None, step: int = 0, tags: dict[str, str] | None = None) -> None:
        """End a child run: its tags, `metrics` (as `final/<name>` at `step`) and, on an error, `t2vu.error`."""
        if not self.on or run_id is None:
            return
        self.set_tags(run_id, {**(tags or {}), **({"t2vu.error": _error_text(error)} if error is not None else {})})
        if metrics:
            mu.log_metrics(self.client, run_id, {f"final/{k}": v for k, v in metrics.items()}, step=step)
        mu.finish(self.client, run_id, status)

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    # --- logging ------------------------------------------------------------------------------------

    def set_tags(self, run_id: str | None, tags: dict[str, str]) -> None:
        """`tags` on a run (the parent: `tracker.parent`), in one request."""
        if self.on and run_id is not None and tags:
            mu.log_batch(self.client, run_id, tags=tags)

    def log_metrics(self, run_id: str | None, metrics: dict[str, Any], step: int = 0) -> None:
        if self.on and run_id is not None:
            mu.log_metrics(self.client, run_id, metrics, step=step)

    def log_files(self, run_id: str | None, paths, artifact_path: str | None = None) -> None:
        """Each existing file (a folder: its contents) as an artifact; an unreachable store only warns."""
        if not self.on or run_id is None:
            return
        for p in map(Path, paths):
            if p.is_dir():
                mu.log_dir(self.client, run_id, p, artifact_path or p.name)
            elif p.is_file():
                mu.log_file(self.client, run_id, p, artifact_path)


def _find_runs(c, exp_id: str, filter_string: str):
    return c.search_runs([exp_id], filter_string=filter_string, max_results=50, order_by=["attributes.start_time ASC"])


def _get_or_create_parent(c, exp_id: str, name: str, out: Path, tags: dict[str, str] | None) -> tuple[str, bool]:
    """The parent run of `out` (reused after a restore). Returns (run_id, created)."""
    id_file = out / PARENT_ID_FILE
    if id_file.exists():
        run_id = id_file.read_text().strip()
        try:
            run = c.get_run(run_id)
            if run.info.experiment_id == exp_id:
                if run.info.status != "RUNNING":
                    c.update_run(run_id, status="RUNNING")
                return run_id, False
        except Exception:
            LOG.warning("Parent run %s from %s not found on %s; creating a new one", run_id, id_file, c.tracking_uri)
    found = _find_runs(c, exp_id, f"tags.`t2vu.role` = 'search' and tags.`t2vu.output` = '{out}'")
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
    else:
        all_tags = {"t2vu.role": "search", "t2vu.search": name, "t2vu.output": str(out), "mlflow.runName": name,
                    **(tags or {})}
        run_id = c.create_run(exp_id, tags=all_tags, run_name=name).info.run_id
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(id_file, run_id + "\n")
    return run_id, not found


def _close_parent(tracking_uri: str, out: Path, exc: BaseException) -> str | None:
    """End the RUNNING parent run named in `out` as `exc` says; returns the status set (None: none)."""
    id_file = out / PARENT_ID_FILE
    if not id_file.is_file():
        return None  # the failure came before the parent run was opened
    from mlflow.tracking import MlflowClient

    run_id = id_file.read_text().strip()
    c = MlflowClient(tracking_uri)  # not mu.client: the store's own failure may be what is being reported
    if c.get_run(run_id).info.status != "RUNNING":
        return None
    c.set_tag(run_id, "t2vu.error", _error_text(exc))
    mu.finish(c, run_id, _status(exc))
    return _status(exc)


@contextlib.contextmanager
def closes_search_parent(cfg, out: str | Path):
    """A search's parent run never stays RUNNING after the command has ended (issue 26): it is opened before
    the trials and ended FINISHED only at the very end, so a failure in between (Tune, a baseline, the
    results, the report) or a Ctrl-C ends it FAILED / KILLED here, the error as its `t2vu.error` tag; the
    exception goes on. cfg: the search's `PipelineConfig`."""
    try:
        yield
    except BaseException as exc:
        if cfg.mlflow.enabled:
            out = Path(out).resolve()
            try:
                _close_parent(cfg.mlflow.resolve_uri(out), out, exc)
            except Exception as err:  # the store itself may be what failed: the original error matters more
                LOG.warning("Could not end the MLflow parent run in %s: %s", out, err)
        raise
