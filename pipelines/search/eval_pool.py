"""One pool of eval actors per search (issue 22): its evals share loaded pipelines, and the pool never outlives it.

    with search_eval_pool(cfg, out, objective, say) as objective:   # objective.pool: the name, or None (off)
        ... trials' final evals and the method baselines (pipelines.search.objective.judge) ...
    # left by any way (done, an error, Ctrl-C): eval.backends.release_pool ends its actors

    with kept_pool(out) as name:               # `t2vu run`: the pool outlives its search until this block ends
        run_search(cfg, out)
        pool = kept_pool_for(name, ecfg, ...)  # the best trial's eval on the same loaded actors (or None)

The pool is named after the search's run folder (`pool_name`); the search driver creates its named Ray actors
(eval.backends.start_pool) before the trials, each loading transformer + VAE once, and every eval of the search (trial
drivers are other processes: the name travels in the objective they are given) finds them and swaps its eraser in.
The actors are the driver's (not detached; it holds their handles until the release): they end with it, even when it
is killed with SIGKILL (Ray ends an actor with its owner).

When it is off (one banner line says why): the final evals run in-process (runtime.num_actors 0: nothing to pool),
or its actors would not fit beside `max_concurrent_trials` trials. Pooled actors hold their CPU/GPU between evals;
on a cluster the trials fill (8 GPUs, 2 trials x 4 workers) they would keep the next trial waiting for GPUs, and
on one whose trials use every GPU at once (4 GPUs, 1 trial x 4) for ever. Such a search evaluates on fresh actors,
as before, and still without T5 where the text-embedding cache has the prompts (eval.text_cache).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import replace
from pathlib import Path

POOL_PREFIX = "t2vu-search-"


def pool_name(out: str | Path) -> str:
    """The eval pool of the search in run folder `out` (stable across reruns of that folder)."""
    return POOL_PREFIX + hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:16]


def pool_need(runtime) -> dict[str, float]:
    """What the pool's actors hold between evals, together: runtime.num_actors x (cpus_per_actor, a GPU if used)."""
    n = runtime.num_actors
    return {"CPU": n * float(runtime.cpus_per_actor), "GPU": float(n) if runtime.use_gpu else 0.0}


def trials_need(cfg) -> dict[str, float]:
    """What `max_concurrent_trials` running trials hold: each its driver and its Ray Train worker group."""
    s, d = cfg.search, cfg.distributed
    per = dict(s.resources_per_trial)
    for k, v in d.worker_resources().items():
        per[k] = per.get(k, 0.0) + v * d.num_workers
    return {k: v * s.max_concurrent_trials for k, v in per.items()}


def pool_off_reason(cfg, runtime, totals: dict[str, float] | None = None) -> str | None:
    """None when the search's final evals can share a pool, else why not (one clause). `totals`: the cluster's
    resources (default: the live Ray cluster's)."""
    from eval.ray_waits import cluster_totals, resources_text

    if runtime.num_actors == 0:
        return "the final evals run in the trial driver (runtime.num_actors 0)"
    totals = cluster_totals()[1] if totals is None else totals
    trials, pool = trials_need(cfg), pool_need(runtime)
    short = {k: v for k, v in pool.items() if v and totals.get(k, 0.0) - trials.get(k, 0.0) < v - 1e-9}
    if short:
        return (f"its {runtime.num_actors} actors ({resources_text(pool)}) do not fit beside "
                f"{cfg.search.max_concurrent_trials} running trial(s) ({resources_text(trials)}) on this cluster "
                f"({resources_text({k: totals.get(k, 0.0) for k in pool if pool[k]})}): they would hold what the next "
                "trial waits for; add nodes or lower search.max_concurrent_trials to pool")
    return None


def search_evals(cfg, obj) -> list[tuple]:
    """(EvalConfig, row limit) of every eval the search will run: the trials' final evals, their proxies (where a
    scheduler reads them) and the method baselines. What the text-embedding cache is filled with before the trials
    (eval.text_cache)."""
    from pipelines.search.baselines import baseline_eval_configs
    from pipelines.search.objective import proxy_eval_config, trial_final_eval_config

    spec = obj.spec
    evals = [(trial_final_eval_config(obj), spec.limit)]
    if obj.proxy_every:  # in the worker or on the pool: the same prompts, model and text length (one cache entry)
        evals.append((proxy_eval_config(obj, pooled=False), spec.proxy.limit))
    evals += [(ecfg, spec.limit) for ecfg in baseline_eval_configs(cfg, obj).values()]
    return evals


def fill_text_cache(cfg, objective, say=print) -> dict:
    """Every prompt of the search's evals into the text-embedding cache, before the trials (eval.text_cache): their
    workers then load no text encoder. Returns the fill's counts."""
    import time

    from eval.text_cache import fill_eval_text_cache

    t0 = time.time()
    stats = fill_eval_text_cache(search_evals(cfg, objective), objective.cwd)
    say(f"  eval prompts: {stats['prompts']} in the text-embedding cache ({stats['encoded']} encoded now, "
        f"{time.time() - t0:.1f} s): no eval worker loads a text encoder for them (a SAFREE baseline still does: it "
        "encodes token-edited prompts)")
    return stats


@contextlib.contextmanager
def search_eval_pool(cfg, out: Path, objective, say=print):
    """The search's evals made ready: their prompts in the text-embedding cache (`fill_text_cache`), then `objective`
    with its eval pool set (or None, with one line saying why); the pool is released on the way out, whatever ends
    the search."""
    from eval.backends import pooled, release_pool, start_pool
    from eval.workers import pool_key
    from pipelines.search.objective import trial_final_eval_config

    fill_text_cache(cfg, objective, say)
    runtime = trial_final_eval_config(objective).runtime
    why = pool_off_reason(cfg, runtime)
    if why is not None:
        if runtime.num_actors:
            say(f"  eval pool off: {why}")
        yield objective
        return
    name = pool_name(out)
    try:
        spec = pool_spec(objective, out)
        workers = start_pool(name, spec, runtime, say)  # owned by this driver: dies with it
        say(f"  eval pool {name}: {len(workers)} actor(s), each loading the pipeline once for every eval of this "
            "search")
        if name in _KEPT:  # a `kept_pool` block outlives the search: it releases the pool
            _KEPT[name] = pool_key(spec)
        with pooled(name):  # this process's evals (the method baselines); trial drivers get objective.pool
            yield replace(objective, pool=name)
    finally:
        if name not in _KEPT:
            release_pool(name)


_KEPT: dict[str, str | None] = {}  # pools a `kept_pool` block holds past their search -> their actors' pool_key


@contextlib.contextmanager
def kept_pool(out: Path):
    """The eval pool of the search in run folder `out` (if it gets one) outlives that search until this block ends,
    whatever ends it: `t2vu run` judges the best trial on its loaded actors (`kept_pool_for`), with no second pipeline
    load. Yields the pool's name."""
    from eval.backends import release_pool

    name = pool_name(out)
    _KEPT[name] = None
    try:
        yield name
    finally:
        del _KEPT[name]
        release_pool(name)


def kept_pool_for(name: str, ecfg, out: Path, eraser, limit: int | None) -> str | None:
    """`name` when its kept pool has actors loaded with the pipeline of eval `ecfg` (eraser, row limit; planned, not
    run), else None: no pool (off, or a resumed search that started none), an in-process eval, or another pipeline
    (other generation settings: eval.workers.pool_key); that pool is released first, its actors would hold what the
    eval needs."""
    from eval.backends import release_pool
    from eval.planning import plan_eval, worker_spec
    from eval.workers import pool_key

    if _KEPT.get(name) is None:
        return None
    if ecfg.runtime.num_actors and pool_key(worker_spec(plan_eval(ecfg, out, limit=limit, eraser=eraser))) == _KEPT[name]:
        return name
    release_pool(name)
    _KEPT[name] = None
    return None


def pool_spec(objective, out: Path):
    """The WorkerSpec of a trial's final eval, as its driver will make it (the pipeline part: eval.workers.pool_key);
    its eraser and output folder are the trials' to swap in."""
    from eval.planning import plan_eval, worker_spec
    from pipelines.search.objective import trial_final_eval_config

    with contextlib.chdir(objective.cwd):
        return worker_spec(plan_eval(trial_final_eval_config(objective), out / "eval_pool", limit=objective.spec.limit))
