"""A trial's proxy evals on the search's eval pool, while its training goes on (issue 22).

Without a pool, a proxy eval (what ASHA prunes on) runs in the rank-0 training worker on the training transformer, and
every other rank waits at the checkpoint for it. Where the search has an eval pool (pipelines.search.eval_pool) whose
actors hold the proxy's pipeline, rank 0 instead copies the checkpoint's eraser to <trial>/proxy/step_N/eraser, hands
the eval to a Ray task that runs it on the pool, and goes on training; the result is reported at the next checkpoint
(ASHA's time attribute `proxy_step` is the step it judged, so the scheduler reads it as of that step), and the last
checkpoint waits for what is still running. What it costs: ASHA decides one checkpoint interval later than it could
(a trial it stops trains that much longer), and a pooled actor busy with a proxy delays another trial's final eval.

    proxies = PooledProxies.for_trial(objective)   # None: no pool, or its actors hold another pipeline
    finished = proxies.harvest(wait=last)          # at each checkpoint: the proxies finished since, oldest first
    proxies.submit(eraser_dir, step)               # at a proxy point
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def proxy_pool_for(objective) -> str | None:
    """The pool a trial's proxy evals can run on: the search's (objective.pool), when its actors were loaded with
    the proxy's pipeline (eval.workers.pool_key: model, dtype, generation, text cache); else None."""
    if objective is None or not objective.pool or not objective.proxy_every:
        return None
    from eval.planning import plan_eval, worker_spec
    from eval.workers import pool_key
    from pipelines.search.eval_pool import pool_spec
    from pipelines.search.objective import proxy_eval_config

    out = Path(objective.out_dir)
    ecfg = proxy_eval_config(objective, pooled=True)
    if not ecfg.runtime.num_actors:
        return None
    with contextlib.chdir(objective.cwd):
        proxy = worker_spec(plan_eval(ecfg, out / "proxy", limit=objective.spec.proxy.limit))
    return objective.pool if pool_key(proxy) == pool_key(pool_spec(objective, out)) else None


def _run_proxy(objective, eraser_dir: str, step: int, pool: str) -> dict:
    """The Ray task: one proxy eval on the pool (a failure comes back as `objective_error`, as in the worker)."""
    from pipelines.search.objective import evaluate_or_report

    return evaluate_or_report(objective, Path(eraser_dir), step, final=False, proxy_pool=pool)


class PooledProxies:
    """Rank 0's proxy evals of one trial, in flight on the search's eval pool."""

    def __init__(self, objective, pool: str):
        self.objective, self.pool = objective, pool
        self.pending: list[tuple[int, object]] = []  # (step, ObjectRef), oldest first

    @classmethod
    def for_trial(cls, objective) -> PooledProxies | None:
        pool = proxy_pool_for(objective)
        return cls(objective, pool) if pool else None

    def submit(self, eraser_dir: Path, step: int) -> None:
        """Copy the checkpoint's eraser out of the checkpoint folder (Ray Train moves or deletes that folder) and
        start its proxy eval. The task asks for no CPU: the pool's actors hold what the eval runs on, and a task
        waiting for a CPU the trial's workers hold would never start. Outside the trial's placement group, which
        holds only the trial's own bundles."""
        import ray

        from unlearn.fsutil import atomic_copy_dir

        copy = atomic_copy_dir(eraser_dir, Path(self.objective.out_dir) / "proxy" / f"step_{step:06d}" / "eraser")
        task = ray.remote(_run_proxy).options(num_cpus=0, scheduling_strategy="DEFAULT", max_retries=0)
        self.pending.append((step, task.remote(self.objective, str(copy), step, self.pool)))

    def harvest(self, wait: bool = False) -> list[dict]:
        """The proxies finished since the last call, oldest first (so ASHA's time attribute only grows), each with
        `eval_kind` and `proxy_step`; `wait`: wait for all (the last checkpoint). The caller logs each to MLflow and
        reports the newest to Tune (one result per checkpoint). A proxy still running when Tune stops the trial ends
        on the pool with nobody to read it (its objective.json stays)."""
        import ray

        from pipelines.search.objective import PROXY_TIME_ATTR

        done: list[dict] = []
        while self.pending:
            step, ref = self.pending[0]
            if not wait and not ray.wait([ref], timeout=0)[0]:
                break
            self.pending.pop(0)
            done.append({**ray.get(ref), "eval_kind": "proxy", PROXY_TIME_ATTR: step})
        return done
