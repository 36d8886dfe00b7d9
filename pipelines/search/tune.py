"""Ray Tune search over eraser trainings: `t2vu tune --config configs/search/<x>.yaml --output DIR`.

    Tune driver (this process, head/CPU node)
      Tuner(trial_main, param_space = search_space.to_tune(search.space))
        OptunaSearch (TPE; multi-objective Pareto) | ASHA (scalarised score) | random
        trial_main(sample)                              one Tune trial = one Train driver
          cfg = base + sample, re-validated (PipelineConfig) before any model loads
          MLflow child run (tag mlflow.parentRunId), found again by trial id after a restore
          TorchTrainer(DeepSpeed workers, TuneReportCallback) .fit()
            rank 0 at checkpoint steps: proxy eval (few prompts) -> score   (ASHA only: it prunes on it)
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
from pipelines.search.objective import PROXY_TIME_ATTR, objective_payload
from pipelines.runtime.run_folder import remove_owned
from pipelines.search.baselines import check_baselines, run_baselines
from eval.metrics import is_number
from pipelines.search.results import SearchResult, collect_result, search_result_json
from pipelines.search.trial import TrialContext, make_bookkeeping_callback, progress, trial_main
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
    from pipelines.tracking.run_status import closes_search_parent

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
    _start_ray(cfg, config_dir)
    ml = _open_parent_run(cfg, out, config_path)
    ctx = TrialContext(base=cfg, output_dir=str(out), config_dir=str(config_dir),
                       train_storage=str(out / "ray" / f"{s.name}-train"), objective=objective, mlflow=ml)
    tuner = _make_tuner(cfg, out, ctx, ml, resume=resume, verbose=verbose, points=points)
    progress(f"Search {s.name}: {len(points or []) or s.num_samples} trials, {'fixed points' if points else s.algorithm}, objective {s.metric_names()} -> {out}")
    if s.proxy_skip_note():
        progress(f"  {s.proxy_skip_note()}")
    grid = tuner.fit()
    return _collect(cfg, out, grid, objective, ml, t0=t0, write_report=write_report)


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
    check_distributed(cfg)
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


def _start_ray(cfg: PipelineConfig, config_dir: Path) -> None:
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
    trial_cpus = s.resources_per_trial.get("CPU", 0.0)
    per_trial = trial_cpus + cfg.distributed.worker_resources().get("CPU", 0.0) * cfg.distributed.num_workers
    ensure_ray(num_cpus=int(-(-per_trial * s.max_concurrent_trials // 1)))
    check_worker_group_fits(cfg)  # each trial's Ray Train worker group; else its trials wait for ever


def _open_parent_run(cfg: PipelineConfig, out: Path, config_path) -> dict | None:
    """The search's MLflow parent run (found again on a rerun; its ids in <out>/mlflow.json); None without MLflow."""
    from pipelines.tracking import mlflow_utils as mu
    from unlearn.fsutil import atomic_write_text

    s = cfg.search
    ml = None
    if cfg.mlflow.enabled:
        uri = cfg.mlflow.resolve_uri(out)
        c = mu.client(uri)
        exp_id = mu.get_or_create_experiment(c, cfg.mlflow.experiment or f"t2vu/{s.name}", out)
        parent_id, created = mu.get_or_create_parent(c, exp_id, s.name, out, tags={"t2vu.git_sha": mu.git_sha()})
        if created:
            _log_parent_start(c, parent_id, cfg, out, config_path)
        from pipelines.tracking import mlflow_ui  # the runs table's columns: searched params and objectives

        mlflow_ui.set_runs_view(c, exp_id, mlflow_ui.runs_view_state(s.metric_names(), list(s.space), s.objective.scalarize.name))
        ml = {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent_id}
        atomic_write_text(out / "mlflow.json", json.dumps(ml, indent=2))
    return ml


def _make_tuner(cfg: PipelineConfig, out: Path, ctx: TrialContext, ml: dict | None, *, resume: bool, verbose: bool,
                points: list[dict] | None):
    """The Tuner: restored from <out>/ray/<search.name> when it can be (finished trials are not redone), else new."""
    from ray import tune

    from pipelines.search.space import to_tune

    s = cfg.search
    trainable = tune.with_resources(tune.with_parameters(trial_main, ctx=ctx),
                                    tune.PlacementGroupFactory([dict(s.resources_per_trial)]))
    param_space = to_tune(s.space)
    exp_path = out / "ray" / s.name
    callback = make_bookkeeping_callback(str(out), ml, s.metric_names(), s.objective.scalarize.name)
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


def _collect(cfg: PipelineConfig, out: Path, grid, objective, ml: dict | None, *, t0: float,
             write_report: bool) -> SearchResult:
    """After the trials: the method baselines, the result read back from the folder, the report, the MLflow
    parent run closed, search_result.json."""
    from pipelines.search import report as search_report
    from pipelines.tracking import mlflow_utils as mu
    from unlearn.fsutil import atomic_write_text

    errors = [str(e).splitlines()[0][:300] for e in grid.errors] if grid.errors else []
    errors += run_baselines(cfg, objective, out, ml, progress)  # the training-free methods, judged alike

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
    progress(f"Search done in {result.wall_s:.0f} s: {len(result.trials)} trials; best "
             f"{result.best.trial_id if result.best else None}; report {result.report}")
    return result  # Ray stays up for the caller (t2vu run continues with it)


def _command_line(config_path, out: Path) -> list[str]:
    return ["t2vu", "tune", "--config", str(config_path), "--output", str(out)]



def _log_parent_start(c, run_id: str, cfg: PipelineConfig, out: Path, config_path) -> None:
    from pipelines.tracking import mlflow_utils as mu
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
    from pipelines.search.screening import parent_params

    mu.log_params(c, run_id, {**params, **parent_params(s)})
    for k, v in versions.items():
        c.set_tag(run_id, f"version.{k}", v)
    c.set_tag(run_id, "t2vu.cluster", json.dumps(cluster))
    if config_path:
        c.set_tag(run_id, "t2vu.config_path", str(config_path))
    for name in ("search_space.yaml", "search_config.yaml", "command.txt"):
        if (out / name).exists():
            mu.log_file(c, run_id, out / name)


def _log_parent_end(c, run_id: str, result: SearchResult) -> None:
    from pipelines.tracking import mlflow_utils as mu
    try:
        counts: dict[str, int] = {}
        for t in result.trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        metrics = {f"trials_{k}": v for k, v in counts.items()}
        metrics["search_wall_s"] = result.wall_s
        if result.best:
            metrics.update({f"best/{k}": v for k, v in result.best.metrics.items() if is_number(v)})
            c.set_tag(run_id, "t2vu.best_trial", result.best.trial_id)
            if result.best.mlflow_run_id:
                from pipelines.tracking.mlflow_ui import tag_best

                c.set_tag(run_id, "t2vu.best_run_id", result.best.mlflow_run_id)
                tag_best(c, c.get_run(run_id).info.experiment_id, run_id, result.best.mlflow_run_id, result.best.trial_id)
        metrics.update({f"baseline/{k}": v for k, v in result.baseline.items()})
        metrics.update({f"baseline_{m}/{k}": v for m, vals in result.methods.items() for k, v in vals.items()})
        mu.log_metrics(c, run_id, metrics)
        mu.finish(c, run_id, "FINISHED" if result.best else "FAILED")  # no trial finished: the search failed
    except Exception as exc:
        LOG.warning("Could not finish the MLflow parent run %s: %s", run_id, exc)

