"""Ray Tune search over eraser trainings: `t2vu tune --config configs/search/<x>.yaml --output DIR`.

    Tune driver (this process, head/CPU node)
      Tuner(trial_main, param_space = search_space.to_tune(search.space))
        OptunaSearch (TPE; multi-objective Pareto) | ASHA (scalarised score) | random
        trial_main(sample)                              one Tune trial = one Train driver
          cfg = base + sample, re-validated (PipelineConfig) before any model loads
          MLflow child run (tag mlflow.parentRunId), found again by trial id after a restore
          one worker: the loop in this actor (pipelines.search.trial_training: no worker group to start)
          more:       TorchTrainer(DeepSpeed workers, TuneReportCallback) .fit()
            (rank 0) at checkpoint steps: proxy eval (few prompts) -> score   (ASHA only: it prunes on it)
          after training: full eval (eval.runner.run_eval)                   -> every objective
          eraser/, metrics.jsonl, summary.json -> <output>/trials/<trial_id>/
      report.md, results.csv, plots -> <output>/ (and the MLflow parent run)

The objective is a real evaluation of each trial's eraser (`search.objective`: an eval
config, the summary keys to optimise and their directions, a scalarisation for ASHA).
The final result of every trial carries every objective, so Optuna never records a
completed trial as pruned.

Resumable: the Tune experiment (<output>/ray/<search.name>, a stable name) is restored
with `Tuner.restore` when the same command is rerun; finished trials are not redone,
an interrupted trial resumes from its last checkpoint, and MLflow runs
are reused (no duplicate child runs).

Layout: the objective is `pipelines.search.objective`, one trial `pipelines.search.trial`, the results
read back from the run folder `pipelines.search.results`; this module builds the searcher
and scheduler and runs the Tuner.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import yaml

from pipelines.config.pipeline import PipelineConfig
from pipelines.search.objective import PROXY_TIME_ATTR, objective_payload, trial_final_eval_config
from pipelines.runtime.run_folder import remove_owned
from pipelines.search.baselines import check_baselines, run_baselines
from pipelines.search.eval_pool import pool_need, search_eval_pool
from eval.metrics import is_number
from pipelines.search.results import SearchResult, collect_result, search_result_json
from pipelines.search.trial import TrialContext, make_bookkeeping_callback, trial_main
from pipelines.search.trial_training import trial_bundle, trial_cpus
from pipelines.runtime.console import progress
from pipelines.tracking.tracker import Tracker
from unlearn.config import ConfigError

LOG = logging.getLogger(__name__)


# --- searcher / scheduler ----------------------------------------------------------------------------

def _searcher_and_scheduler(cfg: PipelineConfig, points: list[dict] | None = None):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    s = cfg.search
    if points:  # search.screening's full-size stage: the best screened samples as fixed points, run to their end
        return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=s.max_concurrent_trials), FIFOScheduler()
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
    from pipelines.search.space import extremes

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
    points: list[dict] | None = None,
) -> SearchResult:
    """Run (or resume) a Tune search; returns the trials, the best one, the Pareto set and the report.
    `points`: evaluate these samples instead of searching (search.screening's full-size stage)."""
    from pipelines.tracking.tracker import closes_search_parent

    with closes_search_parent(cfg, output_dir):  # a late failure or Ctrl-C ends the parent run FAILED / KILLED
        return _run_search(cfg, output_dir, config_path=config_path, resume=resume, verbose=verbose,
                           write_report=write_report, points=points)


def _run_search(cfg: PipelineConfig, output_dir: str | Path, *, config_path, resume: bool, verbose: bool,
                write_report: bool, points: list[dict] | None) -> SearchResult:
    if cfg.search is not None and cfg.search.screening is not None and points is None:
        from pipelines.search.screening import run_screened  # screen all trials small, re-run the best k full size

        return run_screened(cfg, Path(output_dir), run_search, config_path=config_path, resume=resume,
                            verbose=verbose, write_report=write_report)
    if cfg.search is None:
        raise ConfigError("the config has no `search` section; see configs/search/tiny.yaml")
    t0 = time.time()
    s = cfg.search
    out = Path(output_dir).resolve()
    config_dir = Path(config_path).resolve().parent if config_path else Path.cwd()
    objective = _prepare(cfg, out, config_dir, config_path=config_path, resume=resume)
    _start_ray(cfg, config_dir, objective)
    tracker = _open_parent_run(cfg, out, config_path)
    # one pool of eval actors and the eval prompts' text embeddings for every eval of the search (issue 22); the
    # pool is released however the search ends
    with search_eval_pool(cfg, out, objective, progress) as objective:
        ctx = TrialContext(base=cfg, output_dir=str(out), config_dir=str(config_dir),
                           train_storage=str(out / "ray" / f"{s.name}-train"), objective=objective, mlflow=tracker.ids)
        tuner = _make_tuner(cfg, out, ctx, resume=resume, verbose=verbose, points=points)
        progress(f"Search {s.name}: {len(points or []) or s.num_samples} trials, {'fixed points' if points else s.algorithm}, objective {s.metric_names()} -> {out}")
        if s.proxy_skip_note():
            progress(f"  {s.proxy_skip_note()}")
        grid = tuner.fit()
        return _collect(cfg, out, grid, objective, tracker, t0=t0, write_report=write_report)


def _prepare(cfg: PipelineConfig, out: Path, config_dir: Path, *, config_path, resume: bool):
    """Check everything that can be checked before Ray starts, then pin the config in the search folder and
    write its records; returns the objective every trial is judged by."""
    from pipelines.config.distributed import check_distributed
    from pipelines.runtime.run_folder import pin_config
    from pipelines.search.space import check_space
    from pipelines.tracking import mlflow_utils as mu
    from unlearn.fsutil import atomic_write_text

    s = cfg.search
    check_space(cfg)  # a bad space or eval config fails before the output folder exists
    check_distributed(cfg, config_path)
    objective = objective_payload(cfg, config_dir, out)  # validates the eval config before Ray starts
    check_baselines(cfg, objective, out)
    if cfg.mlflow.enabled:  # a read-only SQLite file or a silent server: one line now, not minutes later
        mu.check_reachable(cfg.mlflow.resolve_uri(out))
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        pin_config(out / "search_config.yaml", cfg.to_dict(), out)
    else:
        atomic_write_text(out / "search_config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    atomic_write_text(out / "search_space.yaml", yaml.safe_dump(s.space, sort_keys=False))
    if config_path:
        atomic_write_text(out / "command.txt", " ".join(_command_line(config_path, out)) + "\n")
    return objective


def _start_ray(cfg: PipelineConfig, config_dir: Path, objective=None) -> None:
    """The text embeddings of the base config, then Ray sized for the concurrent trials and their worker groups."""
    from pipelines.runtime.ray_session import check_worker_group_fits, ensure_ray
    from unlearn.session import prepare_embeddings

    s = cfg.search
    # One embedding fill for the base config; a trial whose sample changes the prompts fills the
    # rest on its own driver (never in a training worker).
    prepare_embeddings(cfg.method(), config_dir)

    # Results without eval metrics (checkpoint-only reports) are fine: ASHA ignores them and
    # _OptunaSearch skips them; Tune's strict check would reject them otherwise.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Ctrl-C is a KeyboardInterrupt (exit 130, parent run KILLED, a rerun resumes): Tune's own handler instead ended
    # the search "done" with no best trial, wrote a report of it and exited 1 (tests/test_search_parent_status.py)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    per_trial = trial_cpus(cfg)  # a one-worker trial trains in its own actor: no worker group beside it
    pool = pool_need(trial_final_eval_config(objective).runtime)["CPU"] if objective is not None else 0.0
    ensure_ray(num_cpus=int(-(-(per_trial * s.max_concurrent_trials + pool) // 1)))  # + the eval pool's actors
    check_worker_group_fits(cfg)  # each trial's Ray Train worker group; else its trials wait for ever


def _open_parent_run(cfg: PipelineConfig, out: Path, config_path) -> Tracker:
    """The search's MLflow parent run (found again on a rerun; its ids in <out>/mlflow.json); off without MLflow."""
    from pipelines.tracking import mlflow_ui, mlflow_utils as mu

    s = cfg.search
    if not cfg.mlflow.enabled:
        return Tracker(None)
    tracker = Tracker.start(cfg.mlflow.resolve_uri(out), cfg.mlflow.experiment or f"t2vu/{s.name}", s.name, out,
                            tags={"t2vu.git_sha": mu.git_sha()},
                            describe=lambda t: _log_parent_start(t, cfg, out, config_path))
    # the runs table's columns: searched params and objectives
    mlflow_ui.set_runs_view(tracker.client, tracker.ids.experiment_id,
                            mlflow_ui.runs_view_state(s.metric_names(), list(s.space), s.objective.scalarize.name))
    return tracker


def _make_tuner(cfg: PipelineConfig, out: Path, ctx: TrialContext, *, resume: bool, verbose: bool,
                points: list[dict] | None):
    """The Tuner: restored from <out>/ray/<search.name> when it can be (finished trials are not redone), else new."""
    from ray import tune

    from pipelines.search.space import to_tune

    s = cfg.search
    trainable = tune.with_resources(tune.with_parameters(trial_main, ctx=ctx),
                                    tune.PlacementGroupFactory([trial_bundle(cfg)]))
    param_space = to_tune(s.space)
    exp_path = out / "ray" / s.name
    callback = make_bookkeeping_callback(str(out), ctx.mlflow, s.metric_names(), s.objective.scalarize.name)
    if resume and tune.Tuner.can_restore(str(exp_path)):
        progress(f"Resuming search {s.name} from {exp_path}")
        return tune.Tuner.restore(str(exp_path), trainable=trainable, param_space=param_space,
                                  resume_unfinished=True, resume_errored=True)
    else:
        if exp_path.exists():
            remove_owned(exp_path, out)
        searcher, scheduler = _searcher_and_scheduler(cfg, points)
        return tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=len(points or []) or s.num_samples,
                                        max_concurrent_trials=s.max_concurrent_trials if s.algorithm == "optuna" else None),
            run_config=tune.RunConfig(name=s.name, storage_path=str(out / "ray"),
                                      failure_config=tune.FailureConfig(max_failures=s.max_failures),
                                      callbacks=[callback], verbose=1 if verbose else 0),
        )


def _collect(cfg: PipelineConfig, out: Path, grid, objective, tracker: Tracker, *, t0: float,
             write_report: bool) -> SearchResult:
    """After the trials: the method baselines, the result read back from the folder, the report, the MLflow
    parent run closed, search_result.json."""
    from pipelines.search import report as search_report
    from pipelines.tracking import mlflow_utils as mu
    from unlearn.fsutil import atomic_write_text

    errors = [str(e).splitlines()[0][:300] for e in grid.errors] if grid.errors else []
    errors += run_baselines(cfg, objective, out, tracker, progress)  # the training-free methods, judged alike

    result = collect_result(cfg, out, tracker.ids)
    result.wall_s = round(time.time() - t0, 2)
    result.extras["errors"] = errors
    result.extras["cluster"] = mu.cluster_shape()
    if write_report:
        paths = search_report.write_report(out, cfg=cfg, result=result)
        result.report, result.results_csv = paths.report, paths.results_csv
    _log_parent_end(tracker, result)
    atomic_write_text(out / "search_result.json", json.dumps(search_result_json(result), indent=2))
    progress(f"Search done in {result.wall_s:.0f} s: {len(result.trials)} trials; best "
             f"{result.best.trial_id if result.best else None}; report {result.report}")
    return result  # Ray stays up for the caller (t2vu run continues with it)


def _command_line(config_path, out: Path) -> list[str]:
    return ["t2vu", "tune", "--config", str(config_path), "--output", str(out)]



def _log_parent_start(tracker: Tracker, cfg: PipelineConfig, out: Path, config_path) -> None:
    """A new parent run's params (the search's settings), provenance tags and the search's records."""
    from pipelines.search.screening import parent_params
    from pipelines.tracking import mlflow_utils as mu

    s, c, run_id = cfg.search, tracker.client, tracker.ids.parent_run_id
    params = {
        "search.algorithm": s.algorithm, "search.num_samples": str(s.num_samples),
        "search.max_concurrent_trials": str(s.max_concurrent_trials), "search.metrics": json.dumps(s.metric_names()),
        "search.modes": json.dumps([m.mode for m in s.objective.metrics]), "search.space_keys": json.dumps(sorted(s.space)),
        "distributed.num_workers": str(cfg.distributed.num_workers), "distributed.zero_stage": str(cfg.distributed.zero_stage),
        "distributed.use_gpu": str(cfg.distributed.use_gpu),
    }
    mu.log_params(c, run_id, {**params, **parent_params(s)})
    tags = {**{f"version.{k}": v for k, v in mu.library_versions().items()}, "t2vu.cluster": json.dumps(mu.cluster_shape()),
            **({"t2vu.config_path": str(config_path)} if config_path else {})}
    mu.log_batch(c, run_id, tags=tags)
    tracker.log_files(run_id, [out / n for n in ("search_space.yaml", "search_config.yaml", "command.txt")])


def _log_parent_end(tracker: Tracker, result: SearchResult) -> None:
    """The parent's trial counts, best and baseline values; FINISHED, or FAILED when no trial finished."""
    try:
        counts: dict[str, int] = {}
        for t in result.trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        metrics = {f"trials_{k}": v for k, v in counts.items()}
        metrics["search_wall_s"] = result.wall_s
        if result.best:
            metrics.update({f"best/{k}": v for k, v in result.best.metrics.items() if is_number(v)})
        metrics.update({f"baseline/{k}": v for k, v in result.baseline.items()})
        metrics.update({f"baseline_{m}/{k}": v for m, vals in result.methods.items() for k, v in vals.items()})
        best = (result.best.trial_id, result.best.mlflow_run_id) if result.best else None
        tracker.finish("FINISHED" if result.best else "FAILED", metrics=metrics, best=best)
    except Exception as exc:
        LOG.warning("Could not finish the MLflow parent run of %s: %s", result.output_dir, exc)
