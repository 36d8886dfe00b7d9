"""The search objective: a real evaluation of one trial's eraser.

Runs in the rank-0 training worker (in-process: it already holds the trial's GPU; Ray eval
actors would wait forever for resources the Train workers hold). The driver resolves and
validates the eval config once (`objective_payload`) and ships it to every trial as an `ObjectivePayload`
(typed, frozen, pickled by Ray); the trial binds its folder and MLflow run (`for_trial`), the rank-0
worker calls `evaluate_or_report` at proxy points and the trial driver at the end.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config.pipeline import PipelineConfig
from eval.metrics import UNASKED, is_number
from pipelines.config.search import ObjectiveConfig
from pipelines.search.robustness import ATTACK_DIR, DEGENERATE_OK as ATTACK_DEGENERATE_OK, PREFIX as ATTACK_PREFIX
from pipelines.search.robustness import run_objective_attack
from pipelines.tracking.tracker import TrialTracking
from unlearn.config import ConfigError

if TYPE_CHECKING:
    from eval.config import EvalConfig

LOG = logging.getLogger(__name__)

PROXY_TIME_ATTR = "proxy_step"  # present only in results that carry a proxy eval (what ASHA acts on)
# Where a trial is judged. Proxy evals (ASHA rungs only: SearchConfig.proxy_every) run in the rank-0
# training worker, in-process, on the training transformer itself (erasers toggled; no second copy of the backbone). The final eval runs
# in the trial driver after `fit()` returns: on GPU clusters on Ray eval actors, one pipeline per GPU the
# trainer just freed (`final_runtime`), so no GPU sits idle in `ray.train.report` while a trial is judged.
TRIAL_EVAL_OVERRIDES = {"runtime.num_actors": 0, "runtime.scorer": "thread", "runtime.progress": False}
# The proxy eval only needs numbers.
PROXY_EVAL_OVERRIDES = {"output.save_videos": False, "output.save_gifs": False, "output.grid_rows": 0}


def load_eval_spec(spec, base_dir: Path, source: str):
    """An eval config as a pipeline config names it: a YAML path (relative to the config's
    folder unless it exists as given), an inline mapping, or the `eval` section (EvalConfig);
    relative paths inside it resolve against `base_dir` unless it says otherwise."""
    from eval.config import EvalConfig, load_eval_config
    from unlearn.config import validate

    if isinstance(spec, str):
        path = Path(spec)
        return load_eval_config(path if path.is_absolute() or path.exists() else base_dir / path)
    data = spec.model_dump(mode="json") if isinstance(spec, EvalConfig) else dict(spec)
    data["config_dir"] = data.get("config_dir") or str(base_dir)
    return validate(EvalConfig, data, source)


def resolve_eval_config(cfg: PipelineConfig, config_dir: str | Path | None):
    """The `EvalConfig` a trial is judged with (`search.objective.eval`, else the `eval` section; `t2vu run`'s
    last stage has the opposite precedence: `pipelines.run.pipeline.best_trial_eval_config`).

    The model is always the one the eraser was trained on (`model.path`); the eraser is bound
    per trial. Validated here, in the driver, before Ray starts.
    """
    spec = cfg.search.objective.eval
    base_dir = Path(config_dir).resolve() if config_dir else Path.cwd()
    if spec is not None:
        ecfg = load_eval_spec(spec, base_dir, "search.objective.eval")
    elif cfg.eval is not None:
        ecfg = load_eval_spec(cfg.eval, base_dir, "eval")
    else:
        raise ConfigError("search.objective.eval is not set and the config has no `eval` section: "
                          "name an eval config (e.g. eval: ../eval/tiny.yaml) or add an eval section")
    if ecfg.model.path != cfg.model.path:
        LOG.info("objective eval: model.path %s -> %s (the model the erasers are trained on)", ecfg.model.path, cfg.model.path)
    overrides = {**cfg.search.objective.eval_overrides, "model.path": cfg.model.path, "eraser": None, **TRIAL_EVAL_OVERRIDES}
    return ecfg.with_overrides(overrides, "search.objective.eval (+ eval_overrides)")


@dataclass(frozen=True)
class ObjectivePayload:
    """How a trial is judged, resolved once in the search driver: the objective spec, the eval config
    (validated, with the search's overrides), the final eval's runtime (`final_runtime`: Ray eval actors on
    GPU clusters), the proxy-eval interval (None unless ASHA reads proxies) and the working directory
    relative eval paths resolve against. `out_dir` and `mlflow` are bound per trial (`for_trial`)."""
    spec: ObjectiveConfig
    eval_config: EvalConfig
    final_runtime: dict
    proxy_every: int | None
    cwd: str
    out_dir: str | None = None
    mlflow: TrialTracking | None = None
    pool: str | None = None  # the search's eval pool (pipelines.search.eval_pool): final evals and baselines share it
    attack: object = None  # search.objective.attack's AttackConfig (pipelines.search.robustness), None without one

    def for_trial(self, trial_dir: Path, mlflow: TrialTracking | None) -> "ObjectivePayload":
        return replace(self, out_dir=str(trial_dir), mlflow=mlflow)


def objective_payload(cfg: PipelineConfig, config_dir: str | Path | None,
                      output_dir: str | Path | None = None) -> ObjectivePayload:
    """The objective every trial of this search is judged by (see `ObjectivePayload`)."""
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
    d = cfg.distributed
    final_runtime = ({"runtime.num_actors": d.num_workers, "runtime.use_gpu": True, "runtime.scorer": "process"}
                     if d.use_gpu else {})
    attack = None
    if cfg.search.objective.attack is not None:  # checked now, before any trial trains
        from pipelines.search.robustness import load_objective_attack

        base_dir = Path(config_dir).resolve() if config_dir else Path.cwd()
        attack = load_objective_attack(cfg.search.objective, base_dir, ecfg, output_dir)
    asked = cfg.search.objective.eval_overrides.get("runtime.num_actors")
    if not d.use_gpu and asked:  # a CPU search whose eval overrides ask for Ray eval actors (a pool can share them)
        final_runtime = {"runtime.num_actors": int(asked)}
    return ObjectivePayload(spec=cfg.search.objective, eval_config=ecfg, final_runtime=final_runtime,
                            proxy_every=cfg.search.proxy_every(),  # None unless a scheduler reads proxies (ASHA)
                            cwd=os.getcwd(), attack=attack)


def toy_prompt_overrides(toy, ecfg, directory: Path) -> dict:
    """Eval-config overrides for prompts drawn from the toy world (`toy_prompts` in a search
    objective or in `run`): the deterministic eval rows are written as two prompt CSVs (target
    sets, preserve sets) into `directory`, and the toy classifier is told the target."""
    from toyworld import world

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
    """Objective values (+ their baselines and the scalarised score) from an eval summary (+ the attack's
    attack_* figures, pipelines.search.robustness: all reported, whether the objective names them or not)."""
    if summary.get("degenerate_ok") is False or summary.get(ATTACK_DEGENERATE_OK) is False:
        return worst_objective(spec, summary)
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
    for t in spec.scalarize.tie_break:
        if isinstance(summary.get(t.name), (int, float)):
            out.setdefault(t.name, float(summary[t.name]))
    out[spec.scalarize.name] = spec.scalar(out)
    # Not an objective unless configured as one, but what every report leads with (eval.metrics): the
    # concept where it was not asked for, base and erased.
    for k in (f"{UNASKED}_erased", f"{UNASKED}_base", f"{UNASKED}_erased_se"):
        if isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool):
            out.setdefault(k, float(summary[k]))
    out.update(objective_standard_errors(spec, summary))
    out.update({k: float(v) for k, v in summary.items() if k.startswith(ATTACK_PREFIX) and is_number(v)})
    out["eval_rows"] = float(summary.get("rows_total", 0))
    return out


def objective_standard_errors(spec: ObjectiveConfig, summary: dict) -> dict[str, float]:
    """`<metric>_se` for each objective with a standard error in the summary (eval.uncertainty),
    and `<score>_se` = sqrt(sum_i w_i^2 se_i^2) when every objective has one. The score's ignores
    the correlation between objectives measured on the same videos and the constraint penalties:
    read it as the scale below which two scores are not told apart, not as an exact error."""
    out = {f"{m.name}_se": float(summary[f"{m.name}_se"]) for m in spec.metrics
           if isinstance(summary.get(f"{m.name}_se"), (int, float))}
    if len(out) == len(spec.metrics):
        w = spec.scalarize.weights
        out[f"{spec.scalarize.name}_se"] = math.sqrt(sum((w.get(m.name, 1.0) * out[f"{m.name}_se"]) ** 2
                                                         for m in spec.metrics))
    return out


def worst_objective(spec: ObjectiveConfig, summary: dict) -> dict[str, float]:
    """The values of a trial whose eval has more degenerate videos than allowed (eval.checks): the
    worst possible on every objective and the score, so it ranks last in every ordering (best
    trial, Pareto front, ASHA, Optuna). NaN or black videos score "nothing detected": erasure by
    destruction must never look like the best eraser."""
    out: dict[str, float] = {m.name: math.inf if m.mode == "min" else -math.inf for m in spec.metrics}
    for m in spec.metrics:
        b = m.baseline_key()
        if b and isinstance(summary.get(b), (int, float)):
            out[b] = float(summary[b])
    out[spec.scalarize.name] = math.inf
    out["eval_rows"] = float(summary.get("rows_total", 0))
    out["degenerate_fraction"] = float(summary.get("degenerate_fraction", 1.0))
    if ATTACK_PREFIX + "degenerate_fraction" in summary:  # the attack's videos were the degenerate ones
        out[ATTACK_PREFIX + "degenerate_fraction"] = float(summary[ATTACK_PREFIX + "degenerate_fraction"])
    return out


OBJECTIVE_FILE = "objective.json"  # the values of one judged eval, next to it in its run folder


def trial_final_eval_config(obj: ObjectivePayload):
    """The objective's eval config as a trial's final eval runs it: on `final_runtime` (Ray eval actors on
    GPU clusters, one pipeline per GPU the trials freed). Trials' final evals and the method baselines
    (pipelines.search.baselines) both start here."""
    ecfg = obj.eval_config
    return ecfg.with_overrides(obj.final_runtime, "final eval runtime") if obj.final_runtime else ecfg


def judge(ecfg, spec: ObjectiveConfig, run_dir: Path, *, limit: int | None, cwd: str | None, what: str,
          eraser: Path | None = None, mlflow_run_id: str | None = None, transformer=None,
          record: dict | None = None, pool: str | None = None, attack=None) -> dict[str, float]:
    """Run one eval into `run_dir` and turn its summary into objective values (+ `eval_s`), written to
    <run_dir>/objective.json with `record`. Degenerate videos beyond the eval's limit make the worst
    values (`worst_objective`), not an error: erasure by destruction ranks last. `pool`: the search's eval pool
    (pipelines.search.eval_pool; used where the eval runs on Ray actors). `attack`: called after a healthy eval,
    returns the attack_* figures merged into its summary (search.objective.attack; they count in `eval_s`)."""
    from eval.backends import pooled
    from eval.checks import DegenerateVideosError
    from pipelines.tracking.mlflow_eval import run_tracked_eval
    from unlearn.fsutil import atomic_write_json

    t0 = time.time()
    with contextlib.chdir(cwd or os.getcwd()), pooled(pool if ecfg.runtime.num_actors else None):
        try:
            if ecfg.runtime.num_actors:
                from pipelines.runtime.ray_session import start_eval_ray

                start_eval_ray(ecfg.runtime)  # inside a trial or a search Ray is already up: this only checks it
            summary = run_tracked_eval(ecfg, run_dir, limit=limit, eraser=eraser, mlflow_run_id=mlflow_run_id, progress=False,
                               transformer=transformer)
        except DegenerateVideosError as exc:
            LOG.warning("%s: %s", what, exc)
            summary = exc.summary
        if attack is not None and summary.get("degenerate_ok") is not False:  # a degenerate eval ranks last anyway
            summary = {**summary, **attack()}
    values = objective_metrics(spec, summary)
    values["eval_s"] = round(time.time() - t0, 3)
    atomic_write_json(run_dir / OBJECTIVE_FILE, {**(record or {}), **values})
    return values


def proxy_eval_config(obj: ObjectivePayload, pooled: bool):
    """A trial's proxy eval: the objective's eval with the proxy's overrides; `pooled`: on the final evals' runtime
    (the search's eval pool, pipelines.search.proxy_pool), else in the rank-0 training worker."""
    base = trial_final_eval_config(obj) if pooled else obj.eval_config
    return base.with_overrides({**PROXY_EVAL_OVERRIDES, **obj.spec.proxy.overrides}, "search.objective.proxy.overrides")


def evaluate_objective(obj: ObjectivePayload, eraser_dir: str | Path, *, step: int, final: bool,
                       transformer=None, proxy_pool: str | None = None) -> dict[str, float]:
    """Evaluate one eraser with the evaluation stage.

    final (the trial driver, after fit): the full eval (objective.limit rows) into <trial>/eval,
    logged to the trial's MLflow run, on `final_runtime` (Ray eval actors on GPU clusters);
    otherwise the proxy eval (objective.proxy.limit rows) into <trial>/proxy/step_N: on the search's eval pool
    `proxy_pool` (a Ray task while training goes on), or in the rank-0 worker on `transformer` (the training
    backbone, its training erasers switched off by the caller).
    """
    from unlearn.fsutil import atomic_copy_dir

    spec = obj.spec
    out_dir = Path(obj.out_dir)
    eraser = Path(eraser_dir)
    mlflow_run_id, attack = None, None
    if final:
        if eraser.resolve() != (out_dir / "eraser").resolve():
            eraser = atomic_copy_dir(eraser, out_dir / "eraser")
        run_dir, limit = out_dir / "eval", spec.limit
        ecfg = trial_final_eval_config(obj)
        if obj.mlflow is not None:
            ecfg = ecfg.with_overrides({"mlflow.tracking_uri": obj.mlflow.tracking_uri})
            mlflow_run_id = obj.mlflow.run_id
        if obj.attack is not None:  # search.objective.attack: the final eval only, never a proxy
            attack = partial(run_objective_attack, obj.attack, ecfg, {"name": "eraser", "eraser": str(eraser)},
                             out_dir / ATTACK_DIR)
    else:
        ecfg = proxy_eval_config(obj, pooled=proxy_pool is not None)
        run_dir, limit = out_dir / "proxy" / f"step_{step:06d}", spec.proxy.limit
    return judge(ecfg, spec, run_dir, limit=limit, cwd=obj.cwd, what=f"objective eval at step {step}",
                 eraser=eraser, mlflow_run_id=mlflow_run_id, transformer=transformer,
                 record={"step": step, "final": final}, pool=obj.pool if final else proxy_pool, attack=attack)


def evaluate_or_report(obj: ObjectivePayload, eraser_dir: Path, step: int, final: bool, transformer=None,
                       proxy_pool: str | None = None) -> dict:
    """The trial's evaluation. A failure is reported, not raised: retrying the worker group
    would retrain from the previous checkpoint only to hit the same (usually config) error;
    the trial driver turns `objective_error` into a failed trial instead."""
    try:
        return evaluate_objective(obj, eraser_dir, step=step, final=final, transformer=transformer,
                                  proxy_pool=proxy_pool)
    except Exception as exc:  # noqa: BLE001 - reported to the trial driver
        LOG.exception("objective evaluation failed at step %d", step)
        return {"objective_error": f"{type(exc).__name__}: {exc}"[:2000]}
