"""The search's method baselines: training-free methods judged exactly as a trial is.

`search.objective.baselines: [negprompt, safree]` names methods of the eval stage (eval.methods) that
need no training. After the trials, each runs the objective's final eval config (same prompts, seeds,
row limit and cached base videos) with `method.name` set and no eraser, into <output>/baselines/<label>/.
Its objective values (`pipelines.search.objective.objective_metrics`: the method's video stands where a trial's
erased video stands) go to baselines/<label>/objective.json, and from there to the search report's rows,
results.csv, the Pareto plot, search_result.json and an MLflow child run of the search's parent run
(tag t2vu.role=baseline).

Why after the trials and in the driver: the trials hold the workers' devices while they run; once
`Tuner.fit()` returns they are free, and on a GPU cluster `final_runtime` puts the baseline evals on
Ray eval actors, as a trial's final eval. With `search.objective.attack` each baseline is attacked as a trial's
eraser is (pipelines.search.robustness), into baselines/<label>/attack/. Cost: one eval (+ its attack) per
baseline (the base videos are shared with the trials), paid once, and nothing on a rerun: the eval stage and the
attack resume row by row.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from pipelines.search.results import BASELINES_DIR

LOG = logging.getLogger(__name__)


def baseline_eval_configs(cfg, objective) -> dict:
    """label -> the EvalConfig of that baseline: the trials' final eval config with the method set."""
    from pipelines.search.objective import trial_final_eval_config

    ecfg = trial_final_eval_config(objective)
    return {b.key: ecfg.with_overrides(b.eval_overrides(), f"search.objective.baselines ({b.key})")
            for b in cfg.search.objective.baselines}


def check_baselines(cfg, objective, out: Path) -> None:
    """Plan every baseline's eval before Ray starts (prompts, model, concept words, guidance): a bad
    baseline fails as a one-line ConfigError now, not after hours of trials. Planning writes nothing."""
    from eval.planning import plan_eval

    with contextlib.chdir(objective.cwd or os.getcwd()):
        for key, ecfg in baseline_eval_configs(cfg, objective).items():
            plan_eval(ecfg, out / BASELINES_DIR / key, limit=cfg.search.objective.limit)


def run_baselines(cfg, objective, out: Path, tracker, progress=LOG.info) -> list[str]:
    """Evaluate every baseline (resuming finished rows); returns one error line per failed baseline.
    A failure is reported, not raised: the trials already ran and their results must not be lost."""
    errors = []
    for key, ecfg in baseline_eval_configs(cfg, objective).items():
        try:
            progress(f"Baseline {key}: method {ecfg.method.name}, the objective's eval -> {out / BASELINES_DIR / key}")
            _run_one(cfg, objective, out, tracker, key, ecfg)
        except Exception as exc:  # noqa: BLE001 - one line in the report and search_result.json
            LOG.exception("baseline %s failed", key)
            errors.append(f"baseline {key}: {type(exc).__name__}: {exc}"[:300])
    return errors


def _run_one(cfg, objective, out: Path, tracker, key: str, ecfg) -> None:
    """tracker: the search's `pipelines.tracking.tracker.Tracker`; the baseline's child run ends FAILED when it fails."""
    from functools import partial

    from pipelines.search.objective import judge
    from pipelines.search.robustness import ATTACK_DIR, run_objective_attack

    # search.objective.attack: the baseline is attacked as a trial's eraser is (its method in the eraser's place)
    attack = (partial(run_objective_attack, objective.attack, ecfg, ecfg.method.model_dump(mode="json"),
                      out / BASELINES_DIR / key / ATTACK_DIR) if objective.attack is not None else None)
    with tracker.child_run(f"baseline-{key}", tags={"t2vu.role": "baseline", "t2vu.method": ecfg.method.name}) as run_id:
        if run_id:
            ecfg = ecfg.with_overrides({"mlflow.tracking_uri": tracker.ids.tracking_uri})
        values = judge(ecfg, cfg.search.objective, out / BASELINES_DIR / key, limit=cfg.search.objective.limit,
                       cwd=objective.cwd, what=f"baseline {key}", mlflow_run_id=run_id,
                       record={"method": ecfg.method.name}, attack=attack)
        tracker.log_metrics(run_id, {f"final/{k}": v for k, v in values.items()})
