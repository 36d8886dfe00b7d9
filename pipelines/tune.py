"""Ray Tune search over eraser trainings: `t2vu tune --config configs/search/<x>.yaml --output DIR`.

    Tune driver (this process, head/CPU node)
      Tuner(trial_main, param_space = search_space.to_tune(search.space))
        OptunaSearch (TPE; multi-objective Pareto) | ASHA (scalarised score) | random
        trial_main(sample)                              one Tune trial = one Train driver
          cfg = base + sample, re-validated (PipelineConfig) before any model loads
          MLflow child run (tag mlflow.parentRunId), found again by trial id after a restore
          TorchTrainer(DeepSpeed workers, TuneReportCallback) .fit()
            rank 0 at checkpoint steps: proxy eval (few prompts) -> score   (ASHA prunes on it)
            rank 0 at the last step:    full eval (eval.runner.run_eval)    -> every objective
          eraser/, metrics.jsonl, summary.json -> <output>/trials/<trial_id>/
      report.md, results.csv, plots -> <output>/ (and the MLflow parent run)

The objective is a real evaluation of each trial's eraser (`search.objective`: an eval
config, the summary keys to optimise and their directions, a scalarisation for ASHA).
The final result of every trial carries every objective, so Optuna never records a
completed trial as pruned.

Resumable: the Tune experiment (<output>/ray/<search.name>, a stable name) is restored
with `Tuner.restore` when the same command is rerun; finished trials are not redone,
an interrupted trial resumes its Train run from its last checkpoint, and MLflow runs
are reused (no duplicate child runs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import ConfigError, ObjectiveConfig, PipelineConfig, load_pipeline_config

LOG = logging.getLogger(__name__)

TRIALS_DIR = "trials"
PROXY_TIME_ATTR = "proxy_step"  # present only in results that carry a proxy eval (what ASHA acts on)
# Evaluations inside a trial run in the rank-0 training worker, in-process (it already holds the
# trial's GPU; Ray eval actors would wait forever for resources the Train workers hold).
TRIAL_EVAL_OVERRIDES = {"runtime.num_actors": 0, "runtime.scorer": "thread", "runtime.progress": False}
# The proxy eval only needs numbers.
PROXY_EVAL_OVERRIDES = {"output.save_videos": False, "output.save_gifs": False, "output.grid_rows": 0}


# --- results ---------------------------------------------------------------------------------------

@dataclass
class TrialSummary:
    trial_id: str
    status: str  # completed | stopped_early | error | running
    params: dict[str, Any]
    metrics: dict[str, float]  # final objective values (+ baselines, score)
    eraser: str | None
    trial_dir: str
    mlflow_run_id: str | None = None
    steps_done: int = 0
    error: str | None = None


@dataclass
class SearchResult:
    """What `run_search` returns (and what `t2vu run` picks the best eraser from)."""

    output_dir: Path
    name: str
    metric_names: list[str]
    score_name: str
    trials: list[TrialSummary]
    best: TrialSummary | None  # lowest scalarised score among completed trials
    pareto: list[TrialSummary]  # non-dominated completed trials over the objective metrics
    baseline: dict[str, float]  # objective values of the base model (eraser disabled)
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    report: Path | None = None
    results_csv: Path | None = None
    wall_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def best_eraser(self) -> Path | None:
        return Path(self.best.eraser) if self.best and self.best.eraser else None


# --- the objective (runs in the rank-0 training worker) ---------------------------------------------

def resolve_eval_config(cfg: PipelineConfig, config_dir: str | Path | None):
    """The `EvalConfig` a trial is judged with (`search.objective.eval`, else the `eval` section).

    The model is always the one the eraser was trained on (`model.path`); the eraser is bound
    per trial. Validated here, in the driver, before Ray starts.
    """
    try:
        from eval.config import EvalConfig, load_eval_config
    except ImportError as exc:  # pragma: no cover - the eval stage ships with the project
        raise ConfigError(f"search.objective needs the evaluation stage (eval.config): {exc}") from None
    from unlearn.config import validate

    spec = cfg.search.objective.eval
    base_dir = Path(config_dir).resolve() if config_dir else Path.cwd()
    if isinstance(spec, str):
        path = Path(spec)
        if not path.is_absolute() and not path.exists():
            path = base_dir / spec
        ecfg = load_eval_config(path)
    elif isinstance(spec, dict):
        ecfg = validate(EvalConfig, {"config_dir": str(base_dir), **spec}, "search.objective.eval")
    elif cfg.eval is not None:
        data = cfg.eval.model_dump(mode="json") if hasattr(cfg.eval, "model_dump") else dict(cfg.eval)
        data["config_dir"] = data.get("config_dir") or str(base_dir)
        ecfg = validate(EvalConfig, data, "eval")
    else:
        raise ConfigError("search.objective.eval is not set and the config has no `eval` section: "
                          "name an eval config (e.g. eval: ../eval/tiny.yaml) or add an eval section")
    if ecfg.model.path != cfg.model.path:
        LOG.info("objective eval: model.path %s -> %s (the model the erasers are trained on)", ecfg.model.path, cfg.model.path)
    overrides = {**cfg.search.objective.eval_overrides, "model.path": cfg.model.path, "eraser": None, **TRIAL_EVAL_OVERRIDES}
    return ecfg.with_overrides(overrides, "search.objective.eval (+ eval_overrides)")


def objective_payload(cfg: PipelineConfig, config_dir: str | Path | None, output_dir: str | Path | None = None) -> dict:
    """Plain data for the worker: the objective spec + the resolved eval config."""
    ecfg = resolve_eval_config(cfg, config_dir)
    toy = cfg.search.objective.toy_prompts
    if toy is not None:
        if output_dir is None:
            raise ConfigError("search.objective.toy_prompts needs an output folder to write the prompt CSVs into")
        ecfg = ecfg.with_overrides(toy_prompt_overrides(toy, ecfg, Path(output_dir) / "eval_prompts"),
                                   "search.objective.toy_prompts")
    if output_dir is not None and ecfg.runtime.base_cache_dir is None:
        # Every trial evaluates on the same prompts and seeds: generate the base videos once.
        ecfg = ecfg.with_overrides({"runtime.base_cache_dir": str(Path(output_dir).resolve() / "base_videos")})
    obj = cfg.search.objective
    proxy_every = obj.proxy.every
    if proxy_every is None and cfg.search.algorithm == "asha":
        proxy_every = cfg.search.asha.grace_period  # ASHA needs a score at its rungs
    return {
        "spec": obj.model_dump(mode="json"),
        "eval": ecfg.to_dict(),
        "proxy_every": proxy_every,
        "cwd": os.getcwd(),
    }


def toy_prompt_overrides(toy, ecfg, directory: Path) -> dict:
    """Eval-config overrides for prompts drawn from the toy world (`toy_prompts` in a search
    objective or in `run`): the deterministic eval rows are written as two prompt CSVs (target
    sets, preserve sets) into `directory`, and the toy classifier is told the target."""
    from unlearn.toy import world

    paths = {}
    for key, sets in (("prompts", toy.sets), ("preserve", toy.preserve_sets)):
        rows = [r for s in sets for r in world.eval_rows(s, toy.n, seed=toy.seed, target=toy.target)]
        paths[key] = directory / f"{key}.csv"
        world.write_csv(rows, paths[key], with_set=True)
    sets: dict = {"prompts.path": str(paths["prompts"]), "preserve.path": str(paths["preserve"])}
    if ecfg.classifier.name == "toy":
        sets["classifier.options"] = {**ecfg.classifier.options, "target": toy.target}
    return sets


def objective_metrics(spec: ObjectiveConfig, summary: dict) -> dict[str, float]:
    """Objective values (+ their baselines and the scalarised score) from an eval summary."""
    out: dict[str, float] = {}
    for m in spec.metrics:
        if m.name not in summary:
            numeric = sorted(k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            raise KeyError(f"objective metric {m.name!r} is not in the eval summary; available: {numeric}")
        out[m.name] = float(summary[m.name])
        b = m.baseline_key()
        if b and b in summary:
            out[b] = float(summary[b])
    for c in spec.scalarize.constraints:
        if c.metric in summary:
            out.setdefault(c.metric, float(summary[c.metric]))
    out[spec.scalarize.name] = spec.scalar(out)
    out["eval_rows"] = float(summary.get("rows_total", 0))
    return out


def evaluate_objective(obj: dict, eraser_dir: str | Path, *, step: int, final: bool) -> dict[str, float]:
    """Evaluate one eraser with the evaluation stage; called by the rank-0 training worker.

    final: the full eval (objective.limit rows) into <trial>/eval, logged to the trial's MLflow
    run; otherwise the proxy eval (objective.proxy.limit rows) into <trial>/proxy/step_N.
    """
    from eval.config import EvalConfig
    from eval.runner import run_eval
    from unlearn.fsutil import atomic_copy_dir

    spec = ObjectiveConfig.model_validate(obj["spec"])
    ecfg = EvalConfig.model_validate(obj["eval"])
    out_dir = Path(obj["out_dir"])
    eraser = Path(eraser_dir)
    mlflow_run_id = None
    if final:
        eraser = atomic_copy_dir(eraser, out_dir / "eraser")
        run_dir, limit = out_dir / "eval", spec.limit
        if obj.get("mlflow"):
            ecfg = ecfg.with_overrides({"mlflow.tracking_uri": obj["mlflow"]["tracking_uri"]})
            mlflow_run_id = obj["mlflow"]["run_id"]
    else:
        ecfg = ecfg.with_overrides({**PROXY_EVAL_OVERRIDES, **spec.proxy.overrides}, "search.objective.proxy.overrides")
        run_dir, limit = out_dir / "proxy" / f"step_{step:06d}", spec.proxy.limit
    t0 = time.time()
    with contextlib.chdir(obj.get("cwd") or os.getcwd()):
        summary = run_eval(ecfg, run_dir, limit=limit, eraser=eraser, mlflow_run_id=mlflow_run_id, progress=False)
    values = objective_metrics(spec, summary)
    values["eval_s"] = round(time.time() - t0, 3)
    (run_dir / "objective.json").write_text(json.dumps({"step": step, "final": final, **values}, indent=2))
    return values


# --- one trial (a Tune function trainable that drives a TorchTrainer) --------------------------------

def trial_main(config: dict, ctx: dict) -> None:
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines import mlflow_utils as mu
    from pipelines.distributed import export_result, make_trainer
    from pipelines.search_space import apply_sample
    from unlearn.session import prepare_embeddings
    from unlearn.fsutil import atomic_write_text

    trial_id = ray.tune.get_context().get_trial_id()
    base = PipelineConfig.model_validate(ctx["base"])
    cfg = apply_sample(base, config, trial_id)  # re-validated before anything loads
    params = {k: config[k] for k in base.search.space if k in config}
    trial_dir = Path(ctx["output_dir"]) / TRIALS_DIR / trial_id
    done = _finished_trial(trial_dir, params)
    if done is not None:
        # Finished before the driver died but after Tune last saved its experiment state:
        # finish the books and report the recorded result instead of training and evaluating again.
        ml = ctx.get("mlflow")
        if ml and done.get("mlflow_run_id"):
            c = mu.client(ml["tracking_uri"])
            if c.get_run(done["mlflow_run_id"]).info.status != "FINISHED":
                _log_trial_artifacts(c, done["mlflow_run_id"], trial_dir, done["metrics"])
                mu.finish(c, done["mlflow_run_id"], "FINISHED")
        ray.tune.report({**done["metrics"], "eval_kind": "final"})
        return
    trial_dir.mkdir(parents=True, exist_ok=True)
    if not (trial_dir / "params.json").exists():  # written once: its mtime orders trials in the report
        atomic_write_text(trial_dir / "params.json", json.dumps(_plain(params), indent=2))
    standalone = cfg.to_dict()
    standalone.pop("search", None)
    atomic_write_text(trial_dir / "config.yaml", yaml.safe_dump(standalone, sort_keys=False))

    prepare_embeddings(cfg.method(), ctx["config_dir"])  # on the trial driver, never in the workers

    ml = ctx.get("mlflow")
    run_id = None
    if ml:
        c = mu.client(ml["tracking_uri"])
        run_id = mu.get_or_create_child(
            c, ml["experiment_id"], ml["parent_run_id"], trial_id, params=mu.method_params(cfg),
            tags={"t2vu.searched": json.dumps(_plain(params), sort_keys=True), "t2vu.trial_dir": str(trial_dir)},
        )
        atomic_write_text(trial_dir / "mlflow_run_id.txt", run_id + "\n")
        mu.log_file(c, run_id, trial_dir / "config.yaml")
    mlflow_spec = {"tracking_uri": ml["tracking_uri"], "run_id": run_id} if run_id else None
    objective = {**ctx["objective"], "out_dir": str(trial_dir), "mlflow": mlflow_spec}

    trainer = make_trainer(
        cfg, name=trial_id, storage_path=ctx["train_storage"], config_dir=ctx["config_dir"],
        callbacks=[TuneReportCallback()], objective=objective, mlflow_run=mlflow_spec,
    )
    try:
        result = trainer.fit()
        state = export_result(result, trial_dir)
    except BaseException as exc:
        if run_id:
            with contextlib.suppress(Exception):
                c.set_tag(run_id, "t2vu.error", str(exc)[:4000])
                mu.finish(c, run_id, "FAILED")
        raise
    err = (result.metrics or {}).get("objective_error")
    if err:
        if run_id:
            with contextlib.suppress(Exception):
                c.set_tag(run_id, "t2vu.error", err[:4000])
                mu.finish(c, run_id, "FAILED")
        raise RuntimeError(f"trial {trial_id}: the objective evaluation failed: {err}")
    metrics = {k: v for k, v in (result.metrics or {}).items() if _is_number(v)}
    summary = {
        "trial_id": trial_id, "status": "completed", "params": _plain(params), "metrics": metrics,
        "eraser": str(trial_dir / "eraser"), "steps_done": state["step"], "attempts": state["attempts"],
        "checkpoint": str(result.checkpoint.path), "mlflow_run_id": run_id,
    }
    atomic_write_text(trial_dir / "summary.json", json.dumps(summary, indent=2))
    if run_id:
        _log_trial_artifacts(c, run_id, trial_dir, metrics)
        mu.finish(c, run_id, "FINISHED")


def _finished_trial(trial_dir: Path, params: dict) -> dict | None:
    """The recorded summary of this trial if it already finished with these exact parameters."""
    path = trial_dir / "summary.json"
    if not path.exists() or not (trial_dir / "eraser" / "eraser.safetensors").exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return summary if summary.get("params") == json.loads(json.dumps(_plain(params))) else None


def _log_trial_artifacts(c, run_id: str, trial_dir: Path, metrics: dict) -> None:
    from pipelines import mlflow_utils as mu

    mu.log_metrics(c, run_id, {f"final/{k}": v for k, v in metrics.items()}, step=int(metrics.get("train_step", 0)))
    mu.log_dir(c, run_id, trial_dir / "eraser", "eraser")
    for name in ("metrics.jsonl", "summary.json", "params.json"):
        if (trial_dir / name).exists():
            mu.log_file(c, run_id, trial_dir / name)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain(d: dict) -> dict:
    from pipelines.search_space import _plain as p

    return {k: p(v) for k, v in d.items()}


# --- driver-side bookkeeping -----------------------------------------------------------------------

def _make_callback(output_dir: str, mlflow: dict | None, metric_names: list[str], score_name: str, verbose: bool):
    from ray.tune import Callback

    class TrialBookkeeping(Callback):
        """Closes the books on trials the trial function could not close itself.

        A trial stopped by ASHA (or one that errored) never reaches the end of `trial_main`:
        record its last result in <trial>/tune.json and terminate its MLflow child run.
        Stateless (Tune restores only stateless callbacks).
        """

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("eval_kind"):
                vals = ", ".join(f"{k}={result[k]:.4g}" for k in [*metric_names, score_name] if _is_number(result.get(k)))
                _say(f"  trial {trial.trial_id} step {result.get('train_step')}: {result['eval_kind']} eval {vals}", verbose)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._close(trial, error=None)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._close(trial, error=str(getattr(trial, "error_file", None) or "error"))

        def _close(self, trial, error):
            tdir = Path(output_dir) / TRIALS_DIR / trial.trial_id
            tdir.mkdir(parents=True, exist_ok=True)
            last = {k: v for k, v in (trial.last_result or {}).items() if _is_number(v) or k in ("eval_kind", "checkpoint_path")}
            completed = (tdir / "summary.json").exists()
            status = "error" if error else ("completed" if completed else "stopped_early")
            (tdir / "tune.json").write_text(json.dumps({"trial_id": trial.trial_id, "status": status, "error": error,
                                                        "last_result": last, "config": _plain(trial.config)}, indent=2))
            ckpt = last.get("checkpoint_path")
            if not (tdir / "metrics.jsonl").exists() and ckpt and Path(ckpt, "metrics.jsonl").exists():
                shutil.copyfile(Path(ckpt, "metrics.jsonl"), tdir / "metrics.jsonl")
            _say(f"  trial {trial.trial_id}: {status}", verbose)
            if not mlflow or completed:
                return
            from pipelines import mlflow_utils as mu

            try:
                c = mu.client(mlflow["tracking_uri"])
                run_id = mu.find_child(c, mlflow["experiment_id"], mlflow["parent_run_id"], trial.trial_id)
                if run_id is None:
                    return
                c.set_tag(run_id, "t2vu.trial_status", status)
                if error:
                    c.set_tag(run_id, "t2vu.error", error[:4000])
                mu.log_metrics(c, run_id, {f"final/{k}": v for k, v in last.items() if _is_number(v)},
                               step=int(last.get("train_step", 0) or 0))
                mu.finish(c, run_id, "FAILED" if error else "KILLED")
            except Exception as exc:  # bookkeeping must not fail the search
                LOG.warning("MLflow bookkeeping for trial %s failed: %s", trial.trial_id, exc)

    return TrialBookkeeping()


def _say(msg: str, verbose: bool = True) -> None:
    from pipelines.console import progress_stream

    print(msg, file=progress_stream(), flush=True)


# --- searcher / scheduler ----------------------------------------------------------------------------

def _searcher_and_scheduler(cfg: PipelineConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    s = cfg.search
    score = s.objective.scalarize.name
    if s.algorithm == "optuna":
        import optuna

        from ray.tune.search.optuna import OptunaSearch

        class _OptunaSearch(OptunaSearch):
            # Train reports without an eval (checkpoint-only) carry no objective; single-objective
            # OptunaSearch would KeyError on them. The final report always carries every objective.
            def on_trial_result(self, trial_id, result):
                if isinstance(self.metric, str) and self.metric not in result:
                    return
                super().on_trial_result(trial_id, result)

        sampler = optuna.samplers.TPESampler(seed=s.seed)
        if s.is_multi_objective():
            searcher = _OptunaSearch(metric=s.metric_names(), mode=[m.mode for m in s.objective.metrics], sampler=sampler)
        else:
            searcher = _OptunaSearch(metric=score, mode="min", sampler=sampler)
        return searcher, FIFOScheduler()
    # (a SearchGenerator takes its concurrency limit itself; TuneConfig's would be ignored)
    searcher = BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent_trials)
    if s.algorithm == "asha":
        # ASHA acts only on PROXY evals: its time attribute `proxy_step` is absent from checkpoint-only
        # reports and from the final report, so a trial is never stopped on its last step (training
        # done, final eval done), which would race the trial driver's bookkeeping (export, MLflow).
        sched = ASHAScheduler(time_attr=PROXY_TIME_ATTR, metric=score, mode="min", max_t=_max_steps(cfg),
                              grace_period=s.asha.grace_period, reduction_factor=s.asha.reduction_factor,
                              brackets=s.asha.brackets)
        return searcher, sched
    return searcher, FIFOScheduler()


def _max_steps(cfg: PipelineConfig) -> int:
    from pipelines.search_space import extremes

    spec = cfg.search.space.get("train.steps")
    return int(max(extremes(spec))) if spec else cfg.train.steps


# --- the search ----------------------------------------------------------------------------------------

def run_search(
    cfg: PipelineConfig,
    output_dir: str | Path,
    *,
    config_path: str | Path | None = None,
    resume: bool = True,
    verbose: bool = False,
    write_report: bool = True,
) -> SearchResult:
    """Run (or resume) a Tune search; returns the trials, the best one, the Pareto set and the report."""
    import ray
    from ray import tune

    from pipelines import mlflow_utils as mu
    from pipelines import search_report
    from pipelines.config import check_distributed
    from pipelines.ray_session import ensure_ray
    from pipelines.search_space import check_space, to_tune
    from pipelines.run_folder import pin_config
    from unlearn.fsutil import atomic_write_text
    from unlearn.session import prepare_embeddings

    if cfg.search is None:
        raise ConfigError("the config has no `search` section; see configs/search/tiny.yaml")
    t0 = time.time()
    s = cfg.search
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config_dir = Path(config_path).resolve().parent if config_path else Path.cwd()
    check_space(cfg)
    check_distributed(cfg)
    objective = objective_payload(cfg, config_dir, out)  # validates the eval config before Ray starts
    if resume:
        pin_config(out / "search_config.yaml", cfg.to_dict(), out)
    else:
        atomic_write_text(out / "search_config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    atomic_write_text(out / "search_space.yaml", yaml.safe_dump(s.space, sort_keys=False))
    if config_path:
        atomic_write_text(out / "command.txt", " ".join(_command_line(config_path, out)) + "\n")

    # One embedding fill for the base config; a trial whose sample changes the prompts fills the
    # rest on its own driver (never in a training worker).
    prepare_embeddings(cfg.method(), config_dir)

    # Results without eval metrics (checkpoint-only reports) are fine: ASHA ignores them and
    # _OptunaSearch skips them; Tune's strict check would reject them otherwise.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    trial_cpus = s.resources_per_trial.get("CPU", 0.0)
    per_trial = trial_cpus + cfg.distributed.worker_resources().get("CPU", 0.0) * cfg.distributed.num_workers
    ensure_ray(num_cpus=int(-(-per_trial * s.max_concurrent_trials // 1)))

    ml = None
    if cfg.mlflow.enabled:
        uri = cfg.mlflow.resolve_uri(out)
        c = mu.client(uri)
        exp_id = mu.get_or_create_experiment(c, cfg.mlflow.experiment or f"t2vu/{s.name}", out)
        parent_id, created = mu.get_or_create_parent(c, exp_id, s.name, out, tags={"t2vu.git_sha": mu.git_sha()})
        if created:
            _log_parent_start(c, parent_id, cfg, out, config_path)
        ml = {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent_id}
        atomic_write_text(out / "mlflow.json", json.dumps(ml, indent=2))

    ctx = {
        "base": cfg.to_dict(),
        "output_dir": str(out),
        "config_dir": str(config_dir),
        "train_storage": str(out / "ray" / f"{s.name}-train"),
        "objective": objective,
        "mlflow": ml,
    }
    trainable = tune.with_resources(tune.with_parameters(trial_main, ctx=ctx),
                                    tune.PlacementGroupFactory([dict(s.resources_per_trial)]))
    param_space = to_tune(s.space)
    exp_path = out / "ray" / s.name
    callback = _make_callback(str(out), ml, s.metric_names(), s.objective.scalarize.name, verbose)
    if resume and tune.Tuner.can_restore(str(exp_path)):
        _say(f"Resuming search {s.name} from {exp_path}", verbose)
        tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, param_space=param_space,
                                   resume_unfinished=True, resume_errored=True)
    else:
        if exp_path.exists():
            shutil.rmtree(exp_path)
        searcher, scheduler = _searcher_and_scheduler(cfg)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=s.num_samples,
                                        max_concurrent_trials=s.max_concurrent_trials if s.algorithm == "optuna" else None),
            run_config=tune.RunConfig(name=s.name, storage_path=str(out / "ray"),
                                      failure_config=tune.FailureConfig(max_failures=s.max_failures),
                                      callbacks=[callback], verbose=1 if verbose else 0),
        )
    _say(f"Search {s.name}: {s.num_samples} trials, {s.algorithm}, objective {s.metric_names()} -> {out}", verbose)
    grid = tuner.fit()
    errors = [str(e).splitlines()[0][:300] for e in grid.errors] if grid.errors else []

    result = collect_result(cfg, out, ml)
    result.wall_s = round(time.time() - t0, 2)
    result.extras["errors"] = errors
    result.extras["cluster"] = mu.cluster_shape()
    if write_report:
        paths = search_report.write_report(out, cfg=cfg, result=result)
        result.report, result.results_csv = paths.report, paths.results_csv
    if ml:
        c = mu.client(ml["tracking_uri"])
        _log_parent_end(c, ml["parent_run_id"], result)
    atomic_write_text(out / "search_result.json", json.dumps(search_result_json(result), indent=2))
    _say(f"Search done in {result.wall_s:.0f} s: {len(result.trials)} trials; best "
         f"{result.best.trial_id if result.best else None}; report {result.report}", verbose)
    if ray.is_initialized():
        pass  # leave Ray up for the caller (t2vu run continues with it)
    return result


def _command_line(config_path, out: Path) -> list[str]:
    return ["t2vu", "tune", "--config", str(config_path), "--output", str(out)]


def collect_result(cfg: PipelineConfig, out: Path, ml: dict | None = None) -> SearchResult:
    """Build a SearchResult from the trial folders (works without Ray, e.g. for `t2vu report`)."""
    from pipelines import search_report

    s = cfg.search
    trials = search_report.collect_trials(out)
    done = [t for t in trials if t.status == "completed" and all(_is_number(t.metrics.get(m)) for m in s.metric_names())]
    score = s.objective.scalarize.name
    scored = [t for t in done if _is_number(t.metrics.get(score)) and t.metrics[score] == t.metrics[score]]
    best = min(scored, key=lambda t: t.metrics[score]) if scored else None
    pareto_idx = search_report.pareto_indices([[t.metrics[m.name] for m in s.objective.metrics] for t in done],
                                              [m.mode for m in s.objective.metrics])
    baseline = search_report.baseline_values(s.objective, done or trials)
    ml = ml or (json.loads((out / "mlflow.json").read_text()) if (out / "mlflow.json").exists() else None)
    return SearchResult(
        output_dir=out, name=s.name, metric_names=s.metric_names(), score_name=score, trials=trials, best=best,
        pareto=[done[i] for i in pareto_idx], baseline=baseline,
        tracking_uri=(ml or {}).get("tracking_uri"), experiment_id=(ml or {}).get("experiment_id"),
        parent_run_id=(ml or {}).get("parent_run_id"),
    )


def search_result_json(r: SearchResult) -> dict:
    from dataclasses import asdict

    return {
        "output_dir": str(r.output_dir), "name": r.name, "metrics": r.metric_names, "score": r.score_name,
        "best": asdict(r.best) if r.best else None, "best_eraser": str(r.best_eraser) if r.best_eraser else None,
        "pareto": [t.trial_id for t in r.pareto], "baseline": r.baseline,
        "trials": [asdict(t) for t in r.trials], "tracking_uri": r.tracking_uri,
        "experiment_id": r.experiment_id, "parent_run_id": r.parent_run_id,
        "report": str(r.report) if r.report else None, "results_csv": str(r.results_csv) if r.results_csv else None,
        "wall_s": r.wall_s, **r.extras,
    }


def _log_parent_start(c, run_id: str, cfg: PipelineConfig, out: Path, config_path) -> None:
    from pipelines import mlflow_utils as mu

    s = cfg.search
    versions = mu.library_versions()
    cluster = mu.cluster_shape()
    params = {
        "search.algorithm": s.algorithm, "search.num_samples": str(s.num_samples),
        "search.max_concurrent_trials": str(s.max_concurrent_trials), "search.metrics": json.dumps(s.metric_names()),
        "search.modes": json.dumps([m.mode for m in s.objective.metrics]), "search.space_keys": json.dumps(sorted(s.space)),
        "distributed.num_workers": str(cfg.distributed.num_workers), "distributed.zero_stage": str(cfg.distributed.zero_stage),
        "distributed.use_gpu": str(cfg.distributed.use_gpu),
    }
    mu.log_params(c, run_id, params)
    for k, v in versions.items():
        c.set_tag(run_id, f"version.{k}", v)
    c.set_tag(run_id, "t2vu.cluster", json.dumps(cluster))
    if config_path:
        c.set_tag(run_id, "t2vu.config_path", str(config_path))
    for name in ("search_space.yaml", "search_config.yaml", "command.txt"):
        if (out / name).exists():
            mu.log_file(c, run_id, out / name)


def _log_parent_end(c, run_id: str, result: SearchResult) -> None:
    from pipelines import mlflow_utils as mu

    try:
        counts: dict[str, int] = {}
        for t in result.trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        metrics = {f"trials_{k}": v for k, v in counts.items()}
        metrics["search_wall_s"] = result.wall_s
        if result.best:
            metrics.update({f"best/{k}": v for k, v in result.best.metrics.items() if _is_number(v)})
            c.set_tag(run_id, "t2vu.best_trial", result.best.trial_id)
            if result.best.mlflow_run_id:
                c.set_tag(run_id, "t2vu.best_run_id", result.best.mlflow_run_id)
        metrics.update({f"baseline/{k}": v for k, v in result.baseline.items()})
        mu.log_metrics(c, run_id, metrics)
        mu.finish(c, run_id, "FINISHED")
    except Exception as exc:
        LOG.warning("Could not finish the MLflow parent run %s: %s", run_id, exc)


# --- CLI ---------------------------------------------------------------------------------------------

def run_tune_cli(args) -> int:
    from pipelines.commands.train import default_output

    cfg = load_pipeline_config(args.config, args.overrides)
    out = Path(args.output) if args.output else default_output("tune", args.config)
    result = run_search(cfg, out, config_path=args.config, resume=not args.no_resume, verbose=args.verbose)
    best = result.best
    print(json.dumps({
        "output": str(result.output_dir),
        "trials": len(result.trials),
        "best_trial": best.trial_id if best else None,
        "best_metrics": {k: best.metrics.get(k) for k in [*result.metric_names, result.score_name]} if best else None,
        "best_eraser": str(result.best_eraser) if result.best_eraser else None,
        "baseline": result.baseline,
        "report": str(result.report) if result.report else None,
        "tracking_uri": result.tracking_uri,
    }, indent=2))
    return 0 if best else 1
