"""One Tune trial: a function trainable that trains one eraser and judges it, and its bookkeeping.

`trial_main` (in the Tune trial actor): sample -> validated config -> <output>/trials/<id>/
(params.json, config.yaml) -> MLflow child run -> the training (one worker: in this actor,
pipelines.search.trial_training; more: a Ray Train worker group, TorchTrainer(...).fit(), proxy
evals by rank 0) -> the final eval -> eraser/, metrics.jsonl, summary.json. A trial that already finished
(the driver died after it ended but before Tune saved its state) reports its recorded result.

`make_bookkeeping_callback` (in the Tune driver) closes the books on trials the trial
function could not close itself: stopped by ASHA, or errored.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from pipelines.config.pipeline import PipelineConfig
from pipelines.runtime.console import progress
from pipelines.runtime.ray_session import worker_group_deadline
from eval.metrics import is_number
from pipelines.search.objective import ObjectivePayload
from pipelines.search.results import TRIALS_DIR
from pipelines.search.space import plain_params
from pipelines.search.trial_training import train_in_trial, trains_in_trial
from pipelines.tracking.mlflow_ui import trial_run_name
from pipelines.tracking.tracker import SearchTracking, Tracker, TrialTracking
from unlearn.checkpoint import CHECKPOINT_DIR
from unlearn.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a search gets from the search driver (pickled by Ray: `tune.with_parameters`)."""
    base: PipelineConfig  # the search's config; a trial applies its sample to it
    output_dir: str  # the search folder (trials under <output_dir>/trials/<id>/)
    config_dir: str  # relative paths of the config resolve here
    train_storage: str  # the trials' Ray Train storage
    objective: ObjectivePayload  # how a trial is judged
    mlflow: SearchTracking | None  # the search's MLflow ids (None: MLflow off)


def trial_main(config: dict, ctx: TrialContext) -> None:
    import ray.tune

    from pipelines.tracking import mlflow_utils as mu
    from pipelines.train.post_training import post_training
    from pipelines.search.space import apply_sample
    from pipelines.search.screening import fidelity_label
    from unlearn.session import prepare_embeddings

    trial_id = ray.tune.get_context().get_trial_id()
    base = ctx.base
    cfg = apply_sample(base, config, trial_id)  # re-validated before anything loads
    params = plain_params({k: config[k] for k in base.search.space if k in config})
    trial_dir = Path(ctx.output_dir) / TRIALS_DIR / trial_id
    tracker = Tracker(ctx.mlflow)
    done = finished_trial(trial_dir, params)
    if done is not None:
        # Finished before the driver died but after Tune last saved its experiment state:
        # finish the books and report the recorded result instead of training and evaluating again.
        run_id = done.get("mlflow_run_id") if tracker.on else None
        if run_id and tracker.status(run_id) != "FINISHED":
            finish_trial_run(tracker, run_id, trial_dir, done["metrics"])
        ray.tune.report({**done["metrics"], "eval_kind": "final"})
        return
    trial_dir.mkdir(parents=True, exist_ok=True)
    if not (trial_dir / "params.json").exists():  # written once: its mtime orders trials in the report
        atomic_write_text(trial_dir / "params.json", json.dumps(params, indent=2))
    standalone = cfg.to_dict()
    standalone.pop("search", None)
    atomic_write_text(trial_dir / "config.yaml", yaml.safe_dump(standalone, sort_keys=False))

    prepare_embeddings(cfg.method(), ctx.config_dir)  # on the trial driver, never in the workers

    run_id = tracker.child(
        trial_id, params=mu.method_params(cfg) if tracker.on else None,
        tags={"t2vu.searched": json.dumps(params, sort_keys=True), "t2vu.trial_dir": str(trial_dir),
              "t2vu.fidelity": fidelity_label(cfg, ctx.objective)},  # search.screening: small, then full
        run_name=trial_run_name(params, trial_id),
    )
    if run_id:
        atomic_write_text(trial_dir / "mlflow_run_id.txt", run_id + "\n")
        tracker.log_files(run_id, [trial_dir / "config.yaml"])
    objective = ctx.objective.for_trial(trial_dir, TrialTracking(ctx.mlflow.tracking_uri, run_id) if run_id else None)
    objective = replace(objective, eval_config=with_grid(objective.eval_config))

    def fail(message: str) -> None:
        with contextlib.suppress(Exception):  # the trial's own error is the one to report
            tracker.end(run_id, "FAILED", error=message)

    try:
        state, trained, checkpoint = _train(cfg, ctx, trial_id, trial_dir, objective)
        post_training(cfg, trial_dir, ctx.config_dir)  # `bank:` rounds, then the `gate:` probe
    except BaseException as exc:
        fail(str(exc))
        raise
    if trains_in_trial(cfg) and cfg.distributed.use_gpu and objective.pool is None:
        # this actor holds the trial's GPU: the final eval runs here on it, not on new eval actors that would wait for
        # it (the search's pool, where it has one, holds GPUs of its own and its pipeline loaded: kept)
        objective = replace(objective, final_runtime={"runtime.num_actors": 0})
    err = trained.get("objective_error")  # a proxy eval's failure
    final = {} if err else _final_eval(objective, trial_dir, state["step"])
    err = err or final.get("objective_error")
    if err:
        fail(err)
        raise RuntimeError(f"trial {trial_id}: the objective evaluation failed: {err}")
    metrics = {k: v for k, v in {**trained, **final}.items() if is_number(v)}
    ray.tune.report({**metrics, "eval_kind": "final"})
    summary = {
        "trial_id": trial_id, "status": "completed", "params": params, "metrics": metrics,
        "eraser": str(trial_dir / "eraser"), "steps_done": state["step"], "attempts": state["attempts"],
        "checkpoint": checkpoint, "mlflow_run_id": run_id,
    }
    atomic_write_text(trial_dir / "summary.json", json.dumps(summary, indent=2))
    finish_trial_run(tracker, run_id, trial_dir, metrics)


def _train(cfg: PipelineConfig, ctx: TrialContext, trial_id: str, trial_dir: Path, objective: ObjectivePayload):
    """The trial's training: in this actor for one worker (pipelines.search.trial_training), else a Ray Train worker
    group. Returns (the final checkpoint's state, its metrics, where that checkpoint is); eraser/ and metrics.jsonl
    are then in `trial_dir`."""
    if trains_in_trial(cfg):
        state, metrics = train_in_trial(cfg, trial_dir, ctx.config_dir, objective)
        return state, metrics, str(trial_dir / CHECKPOINT_DIR)
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train.checkpoints import export_result
    from pipelines.train.driver import make_trainer

    trainer = make_trainer(cfg, name=trial_id, storage_path=ctx.train_storage, config_dir=ctx.config_dir,
                           callbacks=[TuneReportCallback()], objective=objective)
    with worker_group_deadline(cfg):  # resources that never came: one line, not a controller traceback
        result = trainer.fit()
    return export_result(result, trial_dir), dict(result.metrics or {}), str(result.checkpoint.path)


TRIAL_GRID_ROWS = 4  # rows per prompt set in a trial's grid.gif when its eval config draws none


def with_grid(ecfg):
    """The trial's final eval config with GIF previews and a base-vs-erased grid (grid.gif, logged to the
    trial's MLflow run by the eval stage): every trial can be looked at, not only scored. Proxy evals turn
    them off again (pipelines.search.objective.PROXY_EVAL_OVERRIDES)."""
    return ecfg.with_overrides({"output.save_gifs": True, "output.grid_rows": ecfg.output.grid_rows or TRIAL_GRID_ROWS},
                               "trial grid")


def _final_eval(objective: ObjectivePayload, trial_dir: Path, step: int) -> dict:
    """The trial's final evaluation, after fit() returned (the worker group's GPUs are free again)."""
    from pipelines.search.objective import evaluate_or_report

    values = evaluate_or_report(objective, trial_dir / "eraser", step, final=True)
    return {**values, "train_step": step}


def finished_trial(trial_dir: Path, params: dict) -> dict | None:
    """The recorded summary of this trial if it already finished with these exact parameters."""
    path = trial_dir / "summary.json"
    if not path.exists() or not (trial_dir / "eraser" / "eraser.safetensors").exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return summary if summary.get("params") == json.loads(json.dumps(params)) else None


def finish_trial_run(tracker: Tracker, run_id: str | None, trial_dir: Path, metrics: dict) -> None:
    """A completed trial's run: its eraser and records, its final metrics, ended FINISHED."""
    tracker.log_files(run_id, [trial_dir / n for n in ("eraser", "metrics.jsonl", "summary.json", "params.json")])
    tracker.end(run_id, metrics=metrics, step=int(metrics.get("train_step", 0)))


def make_bookkeeping_callback(output_dir: str, mlflow: SearchTracking | None, metric_names: list[str], score_name: str):
    from ray.tune import Callback

    class TrialBookkeeping(Callback):
        """Closes the books on trials the trial function could not close itself.

        A trial stopped by ASHA (or one that errored) never reaches the end of `trial_main`:
        record its last result in <trial>/tune.json and terminate its MLflow child run.
        Stateless (Tune restores only stateless callbacks).
        """

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("eval_kind"):
                vals = ", ".join(f"{k}={result[k]:.4g}" for k in [*metric_names, score_name] if is_number(result.get(k)))
                progress(f"  trial {trial.trial_id} step {result.get('train_step')}: {result['eval_kind']} eval {vals}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._close(trial, error=None)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._close(trial, error=str(getattr(trial, "error_file", None) or "error"))

        def _close(self, trial, error):
            tdir = Path(output_dir) / TRIALS_DIR / trial.trial_id
            tdir.mkdir(parents=True, exist_ok=True)
            last = {k: v for k, v in (trial.last_result or {}).items() if is_number(v) or k in ("eval_kind", "checkpoint_path")}
            completed = (tdir / "summary.json").exists()
            status = "error" if error else ("completed" if completed else "stopped_early")
            atomic_write_json(tdir / "tune.json", {"trial_id": trial.trial_id, "status": status, "error": error,
                                                   "last_result": last, "config": plain_params(trial.config)})
            ckpt = last.get("checkpoint_path")
            if not (tdir / "metrics.jsonl").exists() and ckpt and Path(ckpt, "metrics.jsonl").exists():
                atomic_write_bytes(tdir / "metrics.jsonl", Path(ckpt, "metrics.jsonl").read_bytes())
            progress(f"  trial {trial.trial_id}: {status}")
            if completed:
                return
            try:
                tracker = Tracker(mlflow)
                tracker.end(tracker.find_child(trial.trial_id), "FAILED" if error else "KILLED", error=error,
                            tags={"t2vu.trial_status": status}, step=int(last.get("train_step", 0) or 0),
                            metrics={k: v for k, v in last.items() if is_number(v)})
            except Exception as exc:  # bookkeeping must not fail the search
                LOG.warning("MLflow bookkeeping for trial %s failed: %s", trial.trial_id, exc)

    return TrialBookkeeping()
