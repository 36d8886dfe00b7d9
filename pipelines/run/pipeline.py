"""`t2vu run`: the whole pipeline, one command, laptop to cluster.

  1. text embeddings   fill the cache once (T5 never loads in trainers)
  2. search            Ray Tune over Ray Train + DeepSpeed trials, each judged by a real eval
  3. select            the best trial by the configured rule (`run.select`)
  4. final eval        the best eraser vs the base model on the full eval set, same seeds (on the search's eval
                       pool where it has one and the pipelines match: no second load)
  5. attack            with `run.attack`: the best eraser attacked (t2vu attack's runner, the final eval's config)
                       into <output>/attack: the robustness claim next to the clean figures
  6. report            report.md + summary.json in the run folder (pipelines.run.report); all of it in
                       MLflow (pipelines.tracking.tracker): the search's parent run, a child per trial,
                       a child for the final eval

Each stage is also a command of its own (`t2vu tune`, `t2vu eval`, `t2vu report`). A stage
whose outputs are complete is skipped, so rerunning a finished pipeline does no work and
an interrupted one continues (the search resumes through `Tuner.restore`, the eval skips
finished rows).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from pipelines.run.report import print_summary, write_pipeline_report
from pipelines.search.eval_pool import kept_pool
from pipelines.runtime.console import StageConsole, display, quiet_console, say
from pipelines.runtime.run_folder import check_pinned, pin_config
from pipelines.tracking.tracker import Tracker
from eval.metrics import is_finite_number
from unlearn.config import ConfigError
from unlearn.fsutil import atomic_write_text

LOG = logging.getLogger(__name__)
STATE_FILE = "pipeline_state.json"


def _load_state(out: Path) -> dict:
    p = out / STATE_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def _save_state(out: Path, state: dict) -> None:
    atomic_write_text(out / STATE_FILE, json.dumps(state, indent=2))


def select_best(result, rule, rank=None) -> object:
    """Pick the trial for the final eval. `rule` is `cfg.run.select` (None = lowest scalar score).

    rank: the search's ordering (`scalarize.ranking_key`: score, then its tie-breaks), which
    orders trials tied on the selection metric (0/24 red in two trials is no reason to pick either)."""
    done = [t for t in result.trials if t.status == "completed" and t.eraser]
    if not done:
        raise RuntimeError(f"no completed trial with an eraser in {result.output_dir}; see its report.md")
    metric = rule.metric if rule and rule.metric else result.score_name
    mode = rule.mode if rule and rule.metric else "min"
    eligible = []
    for t in done:
        ok = is_finite_number(t.metrics.get(metric))
        for c in (rule.constraints if rule else []):
            v = t.metrics.get(c.metric)
            ok = ok and is_finite_number(v) and (c.min is None or v >= c.min) and (c.max is None or v <= c.max)
        if ok:
            eligible.append(t)
    if not eligible:
        LOG.warning("no trial meets run.select.constraints; falling back to the best by %s", metric)
        eligible = [t for t in done if is_finite_number(t.metrics.get(metric))] or done
    sign = 1.0 if mode == "min" else -1.0
    ties = rank or (lambda m: ())
    return min(eligible, key=lambda t: (sign * t.metrics.get(metric, sign * math.inf), *ties(t.metrics)))


def best_trial_eval_config(cfg, config_dir: Path, out: Path):
    """The eval of `t2vu run`'s last stage, which judges the selected best trial on the full set: the `eval`
    section if present, else the search objective's eval config (a trial's own eval has the opposite
    precedence: `pipelines.search.objective.resolve_eval_config`), then `run.eval_overrides` and
    `run.toy_prompts` (whose prompt CSVs are written into <out>/eval_prompts)."""
    from pipelines.search.objective import load_eval_spec, toy_prompt_overrides

    spec = cfg.search.objective.eval if cfg.search else None
    if cfg.eval is not None:
        ecfg = load_eval_spec(cfg.eval, config_dir, "eval")
    elif spec is not None:
        ecfg = load_eval_spec(spec, config_dir, "search.objective.eval")
    else:
        raise ConfigError("t2vu run needs an `eval` section or search.objective.eval for the final evaluation")
    ecfg = ecfg.with_overrides({"model.path": cfg.model.path}, "final eval")
    run_cfg = cfg.run
    if run_cfg is None:
        return ecfg
    sets: dict = dict(run_cfg.eval_overrides)
    if run_cfg.toy_prompts is not None:
        sets.update(toy_prompt_overrides(run_cfg.toy_prompts, ecfg, out / "eval_prompts"))
    return ecfg.with_overrides(sets, "run.eval_overrides / run.toy_prompts") if sets else ecfg


def run_pipeline(cfg, output_dir: str | Path, *, config_path: str | Path | None = None, verbose: bool = False,
                 quiet: bool = False) -> dict:
    """Run (or continue) the pipeline into `output_dir`; library output goes to <out>/logs/run.log unless verbose."""
    out = Path(output_dir).resolve()
    log = out / "logs" / "run.log"
    with quiet_console(log, enabled=not verbose):
        if not verbose and not quiet:
            say(f"t2vu run -> {out}   (library logs: {log}; --verbose shows them here)")
        return _run_pipeline(cfg, out, config_path=config_path, verbose=verbose, quiet=quiet)


def _run_pipeline(cfg, out: Path, *, config_path, verbose: bool, quiet: bool) -> dict:
    """The stages in order; each one whose outputs are complete is skipped (see the module docstring)."""
    if cfg.search is None:
        raise ConfigError("t2vu run needs a `search` section (see configs/toy.yaml)")
    out.mkdir(parents=True, exist_ok=True)
    config_dir = Path(config_path).resolve().parent if config_path else Path.cwd()
    con = StageConsole(quiet)  # stage banners on the terminal; Ray and libraries stay in the log unless --verbose
    # One record of the config per run folder: the search stage's (it refuses another config
    # too); checked here first because a finished run returns before the search stage.
    pinned = out / "search" / "search_config.yaml"
    check_pinned(pinned, cfg.to_dict(), out)  # another config: refused before anything is written
    state = _load_state(out)
    if state.get("done") and (out / "summary.json").exists():
        con.say(f"pipeline already complete in {out}; nothing to do")
        summary = json.loads((out / "summary.json").read_text())
        print_summary(summary, quiet, earlier=True)
        return summary  # noqa: RET504
    ecfg = best_trial_eval_config(cfg, config_dir, out)  # validate before anything runs
    acfg = _attack_config(cfg, config_dir, ecfg, out)
    # pinned only now: a config refused above (a bad eval or run.attack) leaves no record that would refuse its fix
    pin_config(pinned, cfg.to_dict(), out)
    con.total = 5 if acfg is not None else 4
    _embeddings_stage(cfg, config_dir, con, ecfg)
    # the search's eval pool (where it has one) lives on for the best trial's eval: no second pipeline load (issue 22)
    with kept_pool(out / "search") as pool:
        result = _search_stage(cfg, out, state, con, config_path=config_path, verbose=verbose)
        best = _select_stage(cfg, result, con)
        ev, eval_run_id = _final_eval_stage(cfg, ecfg, out, best, result, con, quiet, pool)
    attack = _attack_stage(acfg, ecfg, out, best, con) if acfg is not None else None
    summary = _summary(out, best, result, ev, eval_run_id, con, attack)
    _finish(out, summary, ev, result, state, quiet)
    return summary


def _embeddings_stage(cfg, config_dir: Path, con: StageConsole, ecfg=None) -> None:
    """The training prompts, and the best-trial eval's (`ecfg`: its workers then load no text encoder, issue 22;
    the search fills its own evals' prompts)."""
    from eval.text_cache import fill_eval_text_cache
    from unlearn.session import prepare_embeddings

    con.stage(1, "text embeddings")
    t = time.time()
    cache = prepare_embeddings(cfg.method(), config_dir)
    n = fill_eval_text_cache([(ecfg, cfg.run.limit if cfg.run else None)])["prompts"] if ecfg is not None else 0
    con.say(f"cache {cache.dir} ({time.time() - t:.1f}s; + the final eval's {n} prompts)")


def _search_stage(cfg, out: Path, state: dict, con: StageConsole, *, config_path, verbose: bool):
    from pipelines.search.results import collect_result
    from pipelines.search.tune import run_search

    search_dir = out / "search"
    # the trials, algorithm and objective: the search's own first line (run_search) says them
    con.stage(2, "search", f"{cfg.distributed.num_workers} workers per trial")
    if state.get("search_done") and (search_dir / "search_result.json").exists():
        con.say("search already complete; reusing its results")
        result = collect_result(cfg, search_dir)
    else:
        result = run_search(cfg, search_dir, config_path=config_path, verbose=verbose)
        state["search_done"] = True
        _save_state(out, state)
    n_ok = sum(t.status == "completed" for t in result.trials)
    con.say(f"{n_ok}/{len(result.trials)} trials completed")  # the report: run_search's last line, the summary
    return result


def _select_stage(cfg, result, con: StageConsole):
    con.stage(3, "select")
    best = select_best(result, cfg.run.select if cfg.run else None, cfg.search.objective.scalarize.ranking_key)
    con.say(f"best trial {best.trial_id}: " + ", ".join(f"{k}={display(v)}" for k, v in best.params.items()))
    return best


def _final_eval_stage(cfg, ecfg, out: Path, best, result, con: StageConsole, quiet: bool,
                      pool: str | None = None) -> tuple[dict, str | None]:
    """The best eraser vs the base model on the full eval set, in its own MLflow child run ("final-eval", ended
    FINISHED, FAILED or KILLED); on the search's kept eval pool `pool` where its actors have this eval's pipeline."""
    con.stage(4, "final evaluation", f"best eraser vs base model, same seeds -> {out / 'eval'}")
    tracker = Tracker(result.tracking)
    with tracker.child_run("final-eval", params={"best_trial": best.trial_id, "eraser": str(best.eraser)},
                           tags={"t2vu.role": "final-eval"}) as eval_run_id:
        if eval_run_id:
            ecfg = ecfg.with_overrides({"mlflow.tracking_uri": tracker.ids.tracking_uri}, "final eval")
        ev = _run_final_eval(ecfg, out / "eval", best.eraser, eval_run_id, cfg.run.limit if cfg.run else None, quiet,
                             pool)
    return ev, eval_run_id


def _attack_config(cfg, config_dir: Path, ecfg, out: Path):
    """`run.attack`'s attack config, validated against the final eval's config before anything runs (None: off)."""
    if cfg.run is None or cfg.run.attack is None:
        return None
    from pipelines.search.robustness import load_attack_section

    return load_attack_section(cfg.run.attack, "run.attack", config_dir, ecfg, out / "attack")


def _attack_stage(acfg, ecfg, out: Path, best, con: StageConsole) -> dict:
    """The chosen eraser under `run.attack` (t2vu attack's runner; a rerun redoes no finished row): attack_* values
    (pipelines.search.robustness), raw and above the per-row floor, with the base model's floor."""
    from pipelines.search.robustness import run_objective_attack

    con.stage(5, "attack", f"the best eraser under {acfg.attack_names()} -> {out / 'attack'}")
    values = run_objective_attack(acfg, ecfg, {"name": "eraser", "eraser": str(best.eraser)}, out / "attack",
                                  "run.attack")
    con.say(", ".join(f"{k}={display(v)}" for k, v in values.items() if k.endswith("_asr_above_floor")))
    return {k: v for k, v in values.items() if is_finite_number(v) or isinstance(v, bool)}


def _summary(out: Path, best, result, ev: dict, eval_run_id: str | None, con: StageConsole,
             attack: dict | None = None) -> dict:
    return {
        "output": str(out),
        "best_trial": best.trial_id,
        "best_params": best.params,
        "best_eraser": best.eraser,
        "search_metrics": {k: best.metrics.get(k) for k in result.metric_names},
        "final_eval": {k: v for k, v in ev.items() if is_finite_number(v) or k.startswith("rows")
                       or k in ("eraser_energy_ok", "eraser_energy_warning")},
        **({"attack": attack, "attack_dir": str(out / "attack")} if attack is not None else {}),
        "search_report": str(out / "search" / "report.md"),
        "eval_dir": str(out / "eval"),
        "mlflow": {"tracking_uri": result.tracking_uri, "experiment_id": result.experiment_id,
                   "parent_run_id": result.parent_run_id, "final_eval_run_id": eval_run_id},
        "wall_s": round(time.time() - con.t0, 1),
    }


def _finish(out: Path, summary: dict, ev: dict, result, state: dict, quiet: bool) -> None:
    """report.md and summary.json (also to the search's MLflow parent run), then the run is marked done."""
    summary_path = out / "summary.json"
    write_pipeline_report(out, summary, ev, result)
    atomic_write_text(summary_path, json.dumps(summary, indent=2, default=str))
    tracker = Tracker(result.tracking)
    tracker.log_files(tracker.parent, [out / "report.md", summary_path], "pipeline")
    state["done"] = True
    _save_state(out, state)
    print_summary(summary, quiet)


def _run_final_eval(ecfg, out: Path, eraser, run_id, limit, quiet: bool, pool: str | None = None) -> dict:
    from eval.backends import pooled
    from pipelines.search.eval_pool import kept_pool_for
    from pipelines.tracking.mlflow_eval import run_tracked_eval
    from pipelines.runtime.console import on_terminal, progress_stream
    from pipelines.runtime.ray_session import start_eval_ray

    done = out / "summary.json"
    if done.exists():
        prev = json.loads(done.read_text())
        if prev.get("eraser") == str(eraser) and prev.get("rows_total"):
            return prev
    if ecfg.runtime.num_actors:  # eval actors run on the Ray the caller starts
        start_eval_ray(ecfg.runtime)
    with pooled(kept_pool_for(pool, ecfg, out, eraser, limit) if pool else None):
        return run_tracked_eval(ecfg, out, eraser=eraser, mlflow_run_id=run_id, limit=limit,
                                progress=not quiet and on_terminal(progress_stream()), progress_file=progress_stream())
