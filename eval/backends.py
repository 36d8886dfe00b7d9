"""Where eval workers run: one in this process, or N Ray actors (one pipeline each).

Why the caller owns Ray: starting or joining a cluster (address, dashboard, the workers'
environment) is orchestration, done once by `pipelines.runtime.ray_session.ensure_ray`. RayBackend
only places actors on the Ray this process is already connected to; the actors inherit
that Ray job's runtime environment (offline/telemetry variables included).

    backend = make_backend(spec, cfg.runtime, num_rows=len(todo))
    backend.run(payloads, on_result)   # on_result(row, result) in the caller's thread, as rows finish
    backend.close()                    # close(abort=True) after an error: rows in flight are dropped

A pool (`make_backend(..., pool=NAME)` or $T2VU_EVAL_POOL): the evals of one search share named actors
(one per `runtime.num_actors`, keyed by what the pipeline depends on: eval.workers.pool_key), so each actor loads
transformer + VAE (+ T5 without cached prompt embeddings) once for the whole search and every later eval swaps its
eraser (method), scorer and checks in per row. `start_pool` creates them in the process they must not outlive (a
search's driver: pipelines.search.eval_pool), `release_pool(NAME)` ends them. What it costs: the actors hold their
GPUs between evals, so a search that pools must leave them out of what its trainings use.
"""

from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from eval.ray_waits import actors_that_fit, cluster_use_text, resources_text, short_of, wait_all, wait_any
from eval.workers import EvalWorker, WorkerSpec, pool_key
from unlearn.config import ConfigError

RAY_NOT_STARTED = (
    "runtime.num_actors: {n} runs the eval on Ray actors, but Ray is not initialised in this process; "
    "start it first (pipelines.runtime.ray_session.ensure_ray(), as `t2vu eval` does) or set runtime.num_actors: 0"
)


class LocalBackend:
    """One EvalWorker in this process; `queue_depth` rows in flight on a thread pool."""

    def __init__(self, spec: WorkerSpec, queue_depth: int, transformer=None):
        self.worker = EvalWorker(spec, transformer=transformer)
        self.depth = queue_depth
        self.pool = ThreadPoolExecutor(max_workers=queue_depth, thread_name_prefix="eval-row")
        self.workers_info = [self.worker.ready()]

    def run(self, rows: list[dict], on_result: Callable[[dict, dict], None]) -> None:
        pending: dict[Future, dict] = {}
        it = iter(rows)
        try:
            for row in it:
                pending[self.pool.submit(self.worker.process, row)] = row
                if len(pending) >= self.depth:
                    break
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    row = pending.pop(fut)
                    res = _row_result(fut.result, row)
                    nxt = next(it, None)
                    if nxt is not None:
                        pending[self.pool.submit(self.worker.process, nxt)] = nxt
                    on_result(row, res)
        finally:
            for fut in pending:
                fut.cancel()

    def close(self, abort: bool = False) -> None:
        # abort (an error or Ctrl-C): do not wait for rows in flight; their results are lost
        # anyway and a rerun redoes them.
        self.pool.shutdown(wait=not abort, cancel_futures=True)
        if not abort:
            self.workers_info[0]["peak_memory_gb"] = self.worker.peak_memory_gb()
            self.worker.close()
        else:
            self.worker.detach()  # even on abort: a shared (training) backbone gets its hooks back off


class RayEvalWorker:
    """The Ray actor: placed first (its constructor only keeps the spec), then `load()` builds the EvalWorker,
    so a wait for resources and a wait for a pipeline load get their own deadline and their own message.
    A pooled actor (`pool`) outlives its eval: the next eval's `load(spec)` swaps its method (eraser) in on the
    loaded pipeline instead of loading another (`loads` counts the pipeline loads)."""

    def __init__(self, spec: WorkerSpec):
        self.spec, self.worker, self.loads = spec, None, 0

    def placed(self) -> bool:
        return True

    def load(self, spec: WorkerSpec | None = None) -> dict:
        if self.worker is not None and spec is not None:
            self.worker.set_method(spec)
        else:
            self.worker = EvalWorker(spec or self.spec)
            self.loads += 1
        return {**self.worker.ready(), "pipeline_loads": self.loads}

    def process(self, row: dict, spec: WorkerSpec | None = None) -> dict:
        return self.worker.process(row, spec)

    def peak_memory_gb(self) -> float | None:
        return self.worker.peak_memory_gb() if self.worker is not None else None

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


class RayBackend:
    """N Ray actors, one pipeline each; rows go to whichever actor has a free slot.

    N is capped at the actors the Ray cluster's live nodes can hold (one console line says so), and every wait
    on Ray ends by `runtime.ray_timeout_s` with one line naming what never came (eval.ray_waits).
    """

    def __init__(self, spec: WorkerSpec, runtime, num_rows: int | None = None, say: Callable[[str], None] | None = None,
                 pool: str | None = None):
        import ray

        if not ray.is_initialized():
            raise RuntimeError(RAY_NOT_STARTED.format(n=runtime.num_actors))
        self.ray, self.timeout, self.pool, self.spec = ray, runtime.ray_timeout_s, pool, spec
        self.depth = runtime.queue_depth
        self.need = {"CPU": float(runtime.cpus_per_actor), "GPU": 1.0 if runtime.use_gpu else 0.0}
        n = runtime.num_actors if pool is not None else None  # a pool keeps its size whatever this eval's rows
        n = self._capped(runtime, num_rows if n is None else None, say or (lambda line: print(line, file=sys.stderr, flush=True)))
        actor_cls = ray.remote(RayEvalWorker)
        # scheduling_strategy DEFAULT: never inside the caller's placement group (a Tune trial's holds only its
        # driver's CPU, so an eval actor started by a trial's final eval could never be placed; a pooled one must
        # also outlive the trial whose placement group would take it down)
        opts: dict[str, Any] = dict(num_cpus=runtime.cpus_per_actor, num_gpus=self.need["GPU"],
                                    max_concurrency=runtime.queue_depth, scheduling_strategy="DEFAULT")
        if pool is None:
            self.actors = [actor_cls.options(**opts).remote(spec) for _ in range(n)]
        else:  # named: the next eval of the search (another trial's process) finds them loaded
            # Not detached: an actor lives as long as the process that created it first. The search driver creates
            # the pool (start_pool) so it lasts the search and dies with the driver, even a SIGKILLed one (Ray's
            # owner fate-sharing); one a trial created (another pipeline key) ends with that trial.
            # A named actor still ends when no handle is left: this process holds them until release_pool.
            name = f"{pool}-{pool_key(spec)}"
            self.actors = [actor_cls.options(**opts, name=f"{name}-{i}", namespace=POOL_NAMESPACE,
                                             get_if_exists=True).remote(spec) for i in range(n)]
            _HELD.setdefault(pool, []).extend(self.actors)
        try:
            wait_all([a.placed.remote() for a in self.actors], self.timeout, self._never_placed)
            self.workers_info = wait_all([a.load.remote(spec if pool else None) for a in self.actors], self.timeout,
                                         lambda late: f"{len(late)} of {n} eval actors got their resources but did not "
                                                      f"load the pipeline of {spec.model_path} within {self.timeout:g} s "
                                                      "(runtime.ray_timeout_s); slow shared storage? raise it")
        except BaseException:
            self.close(abort=True)
            raise

    def _capped(self, runtime, num_rows: int | None, say: Callable[[str], None]) -> int:
        """Never more actors than rows to do, nor than the cluster holds; none at all is one line and exit 2."""
        want = runtime.num_actors if num_rows is None else max(1, min(runtime.num_actors, num_rows))
        fit, totals, grows = actors_that_fit(self.need)
        asked = f"runtime.num_actors={runtime.num_actors}"
        if want < runtime.num_actors:
            asked += f" ({want} for {num_rows} rows)"
        if fit < 1:
            raise ConfigError(f"{asked} asks for {short_of(1, self.need, totals, grows)} per eval actor: no eval actor "
                              "can start; set runtime.use_gpu: false (CPU actors) or runtime.num_actors: 0 "
                              "(in-process), or bring GPU nodes up first (an autoscaler Ray cannot see: min_workers)")
        if fit < want:
            say(f"{asked} asks for {short_of(want, self.need, totals, grows)}; running {fit} eval actor"
                f"{'s' if fit > 1 else ''} ({resources_text(self.need)} each)")
        return min(want, fit)

    def _never_placed(self, late: list[int]) -> str:
        return (f"{len(late)} of {len(self.actors)} eval actors never got their Ray resources "
                f"({resources_text(self.need)} each) within {self.timeout:g} s (runtime.ray_timeout_s): "
                f"{cluster_use_text(self.need)} (other jobs or trials hold the rest); free them or lower "
                "runtime.num_actors")

    def run(self, rows: list[dict], on_result: Callable[[dict, dict], None]) -> None:
        ray = self.ray
        it = iter(rows)
        pending: dict[Any, tuple[int, dict]] = {}
        load = [0] * len(self.actors)

        def submit(a: int) -> bool:
            row = next(it, None)
            if row is None:
                return False
            pending[self.actors[a].process.remote(row, self.spec if self.pool else None)] = (a, row)
            load[a] += 1
            return True

        def stuck() -> str:
            hosts = sorted({f"{w.get('host')}:{w.get('pid')}" for w in self.workers_info})
            return (f"no eval row finished within {self.timeout:g} s (runtime.ray_timeout_s) on {len(self.actors)} Ray "
                    f"actor(s) ({', '.join(hosts)}) with {len(pending)} rows in flight: a generator is stuck (a hung "
                    "GPU?) or a row takes longer than that; raise runtime.ray_timeout_s for slow rows")

        for _ in range(self.depth):
            for a in range(len(self.actors)):
                submit(a)
        try:
            while pending:
                for ref in wait_any(list(pending), self.timeout, stuck):
                    a, row = pending.pop(ref)
                    load[a] -= 1
                    res = _row_result(lambda: ray.get(ref), row)
                    submit(a)
                    on_result(row, res)
        finally:
            for ref in pending:
                ray.cancel(ref)

    def close(self, abort: bool = False) -> None:
        ray = self.ray
        actors = getattr(self, "actors", [])
        if not abort and actors:
            try:  # best effort, bounded: the actors are killed next either way
                peaks = wait_all([a.peak_memory_gb.remote() for a in actors], 60, lambda late: "peak memory")
                for info, peak in zip(self.workers_info, peaks):
                    info["peak_memory_gb"] = peak
                if self.pool is None:  # a pooled actor keeps its pipeline and scorer for the search's next eval
                    wait_all([a.close.remote() for a in actors], 60, lambda late: "close")
            except Exception:  # noqa: BLE001
                pass
        if self.pool is not None and not abort:
            return  # release_pool() ends them when the search is over
        for a in actors:
            ray.kill(a)


POOL_NAMESPACE = "t2vu-eval-pools"
_HELD: dict[str, list] = {}  # pool -> the actor handles this process keeps (the actors live while a handle does)


def start_pool(pool: str, spec: WorkerSpec, runtime, say: Callable[[str], None] | None = None) -> list[dict]:
    """Create (or find) eval pool `pool`'s actors for pipelines like `spec`'s, owned by this process, and load their
    pipelines now; returns the actors' info. The evals that later name the pool swap their erasers in."""
    return RayBackend(spec, runtime, say=say, pool=pool).workers_info


def release_pool(pool: str) -> int:
    """Kill the actors of eval pool `pool` (the search is over); returns how many. No Ray, no pool: 0."""
    import ray

    if not ray.is_initialized():
        _HELD.pop(pool, None)
        return 0
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a.get("namespace") == POOL_NAMESPACE and a["name"].startswith(f"{pool}-")]
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=POOL_NAMESPACE))
        except ValueError:  # gone meanwhile
            pass
    _HELD.pop(pool, None)  # after the kills: dropping the last handle ends an actor too, before it could be counted
    return len(names)


def _row_result(get: Callable[[], dict], row: dict) -> dict:
    try:
        return get()
    except Exception as exc:
        raise RuntimeError(
            f"evaluation of row {row['row_id']} ({row.get('source', '')} row {row['row_index'] + 1}) failed: {exc}"
        ) from exc


def make_backend(spec: WorkerSpec, runtime, num_rows: int | None = None, transformer=None,
                 say: Callable[[str], None] | None = None, pool: str | None = None):
    """In-process (num_actors 0) or Ray actors (never more actors than rows to do, nor than the cluster holds).

    transformer: generate with this loaded backbone (in-process only; it cannot cross into actors).
    say: where the one line about capped actors goes (default stderr).
    pool: a name shared by the evals of one search (default: $T2VU_EVAL_POOL): their Ray actors load the pipeline
    once and stay up between evals, each eval swapping its eraser in; `release_pool(pool)` ends them.
    """
    if runtime.num_actors == 0:
        return LocalBackend(spec, runtime.queue_depth, transformer)
    if transformer is not None:
        raise ValueError("a shared transformer can only be used in-process: set runtime.num_actors: 0")
    return RayBackend(spec, runtime, num_rows, say, pool=pool or os.environ.get(POOL_ENV) or None)


POOL_ENV = "T2VU_EVAL_POOL"


@contextlib.contextmanager
def pooled(pool: str | None):
    """Evals made in this block (this process) use eval pool `pool` (None: leave as is). How a search's driver and
    trial drivers hand the pool to eval.runner's make_backend without threading it through every caller."""
    if pool is None:
        yield
        return
    old = os.environ.get(POOL_ENV)
    os.environ[POOL_ENV] = pool
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(POOL_ENV, None)
        else:
            os.environ[POOL_ENV] = old
