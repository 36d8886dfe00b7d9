"""The search's method baselines: training-free methods judged exactly as a trial is.

`search.objective.baselines: [negprompt, safree]` names methods of the eval stage (eval.methods) that
need no training. After the trials, each runs the objective's final eval config (same prompts, seeds,
row limit and cached base videos) with `method.name` set and no eraser, into <output>/baselines/<label>/.
Its objective values (`pipelines.objective.objective_metrics`: the method's video stands where a trial's
erased video stands) go to baselines/<label>/objective.json, and from there to the search report's rows,
results.csv, the Pareto plot, search_result.json and an MLflow child run of the search's parent run
(tag t2vu.role=baseline).

Why after the trials and in the driver: the trials hold the workers' devices while they run; once
`Tuner.fit()` returns they are free, and on a GPU cluster `final_runtime` puts the baseline evals on
Ray eval actors, as a trial's final eval. Cost: one eval per baseline (the base videos are shared with
the trials), paid once, and nothing on a rerun: the eval stage resumes row by row.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from pipelines.search_results import BASELINES_DIR, BASELINE_OBJECTIVE_FILE

LOG = logging.getLogger(__name__)


def baseline_eval_configs(cfg, objective: dict) -> dict:
    """label -> the EvalConfig of that baseline: the objective's final eval with the method set."""
    from eval.config import EvalConfig

    ecfg = EvalConfig.model_validate(objective["eval"])
    if objective.get("final_runtime"):
        ecfg = ecfg.with_overrides(objective["final_runtime"], "final eval runtime")
    return {b.key: ecfg.with_overrides(b.eval_overrides(), f"search.objective.baselines ({b.key})")
            for b in cfg.search.objective.baselines}


def check_baselines(cfg, objective: dict, out: Path) -> None:
    """Plan every baseline's eval before Ray starts (prompts, model, concept words, guidance): a bad
    baseline fails as a one-line ConfigError now, not after hours of trials. Planning writes nothing."""
    from eval.planning import plan_eval

    with contextlib.chdir(objective.get("cwd") or os.getcwd()):
        for key, ecfg in baseline_eval_configs(cfg, objective).items():
            plan_eval(ecfg, out / BASELINES_DIR / key, limit=cfg.search.objective.limit)


def run_baselines(cfg, objective: dict, out: Path, ml: dict | None, progress=LOG.info) -> list[str]:
    """Evaluate every baseline (resuming finished rows); returns one error line per failed baseline.
    A failure is reported, not raised: the trials already ran and their results must not be lost."""
    errors = []
    for key, ecfg in baseline_eval_configs(cfg, objective).items():
        try:
            progress(f"Baseline {key}: method {ecfg.method.name}, the objective's eval -> {out / BASELINES_DIR / key}")
            _run_one(cfg, objective, out, ml, key, ecfg)
        except Exception as exc:  # noqa: BLE001 - one line in the report and search_result.json
            LOG.exception("baseline %s failed", key)
            errors.append(f"baseline {key}: {type(exc).__name__}: {exc}"[:300])
    return errors


def _run_one(cfg, objective: dict, out: Path, ml: dict | None, key: str, ecfg) -> None:
    from eval.checks import DegenerateVideosError
    from pipelines import mlflow_utils as mu
    from pipelines.mlflow_eval import run_eval
    from pipelines.objective import objective_metrics
    from unlearn.fsutil import atomic_write_json

    spec = cfg.search.objective
    run_dir = out / BASELINES_DIR / key
    c = run_id = None
    if ml:
        c = mu.client(ml["tracking_uri"])
        run_id = mu.get_or_create_child(c, ml["experiment_id"], ml["parent_run_id"], f"baseline-{key}",
                                        tags={"t2vu.role": "baseline", "t2vu.method": ecfg.method.name})
        ecfg = ecfg.with_overrides({"mlflow.tracking_uri": ml["tracking_uri"]})
    t0 = time.time()
    with contextlib.chdir(objective.get("cwd") or os.getcwd()):
        try:
            summary = run_eval(ecfg, run_dir, limit=spec.limit, mlflow_run_id=run_id, progress=False)
        except DegenerateVideosError as exc:  # ranks last (worst_objective), as a destroyed trial does
            LOG.warning("baseline %s: %s", key, exc)
            summary = exc.summary
    values = objective_metrics(spec, summary)
    values["eval_s"] = round(time.time() - t0, 3)
    atomic_write_json(run_dir / BASELINE_OBJECTIVE_FILE, {"method": ecfg.method.name, **values})
    if c is not None:
        mu.log_metrics(c, run_id, {f"final/{k}": v for k, v in values.items()})
        mu.finish(c, run_id, "FINISHED")

