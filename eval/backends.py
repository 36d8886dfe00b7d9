"""Where eval workers run: one in this process, or N Ray actors (one pipeline each).

Why the caller owns Ray: starting or joining a cluster (address, dashboard, the workers'
environment) is orchestration, done once by `pipelines.runtime.ray_session.ensure_ray`. RayBackend
only places actors on the Ray this process is already connected to; the actors inherit
that Ray job's runtime environment (offline/telemetry variables included).

    backend = make_backend(spec, cfg.runtime, num_rows=len(todo))
    backend.run(payloads, on_result)   # on_result(row, result) in the caller's thread, as rows finish
    backend.close()                    # close(abort=True) after an error: rows in flight are dropped
"""

from __future__ import annotations

import sys
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from eval.ray_waits import actors_that_fit, available_text, cluster_totals, resources_text, short_of, wait_all, wait_any
from eval.workers import EvalWorker, WorkerSpec
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
    so a wait for resources and a wait for a pipeline load get their own deadline and their own message."""

    def __init__(self, spec: WorkerSpec):
        self.spec, self.worker = spec, None

    def placed(self) -> bool:
        return True

    def load(self) -> dict:
        self.worker = EvalWorker(self.spec)
        return self.worker.ready()

    def process(self, row: dict) -> dict:
        return self.worker.process(row)

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

    def __init__(self, spec: WorkerSpec, runtime, num_rows: int | None = None, say: Callable[[str], None] | None = None):
        import ray

        if not ray.is_initialized():
            raise RuntimeError(RAY_NOT_STARTED.format(n=runtime.num_actors))
        self.ray, self.timeout = ray, runtime.ray_timeout_s
        self.depth = runtime.queue_depth
        self.need = {"CPU": float(runtime.cpus_per_actor), "GPU": 1.0 if runtime.use_gpu else 0.0}
        n = self._capped(runtime, num_rows, say or (lambda line: print(line, file=sys.stderr, flush=True)))
        actor_cls = ray.remote(RayEvalWorker)
        opts: dict[str, Any] = dict(num_cpus=runtime.cpus_per_actor, num_gpus=self.need["GPU"],
                                    max_concurrency=runtime.queue_depth)
        self.actors = [actor_cls.options(**opts).remote(spec) for _ in range(n)]
        try:
            wait_all([a.placed.remote() for a in self.actors], self.timeout, self._never_placed)
            self.workers_info = wait_all([a.load.remote() for a in self.actors], self.timeout,
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
        _, totals = cluster_totals()
        return (f"{len(late)} of {len(self.actors)} eval actors never got their Ray resources "
                f"({resources_text(self.need)} each) within {self.timeout:g} s (runtime.ray_timeout_s): the Ray cluster "
                f"has {resources_text({k: totals.get(k, 0.0) for k in self.need if self.need[k]})} in all and "
                f"{available_text(self.need)} free now (other jobs or trials hold the rest); free them or lower "
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
            pending[self.actors[a].process.remote(row)] = (a, row)
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
                wait_all([a.close.remote() for a in actors], 60, lambda late: "close")
            except Exception:  # noqa: BLE001
                pass
        for a in actors:
            ray.kill(a)


def _row_result(get: Callable[[], dict], row: dict) -> dict:
    try:
        return get()
    except Exception as exc:
        raise RuntimeError(
            f"evaluation of row {row['row_id']} ({row.get('source', '')} row {row['row_index'] + 1}) failed: {exc}"
        ) from exc


def make_backend(spec: WorkerSpec, runtime, num_rows: int | None = None, transformer=None,
                 say: Callable[[str], None] | None = None):
    """In-process (num_actors 0) or Ray actors (never more actors than rows to do, nor than the cluster holds).

    transformer: generate with this loaded backbone (in-process only; it cannot cross into actors).
    say: where the one line about capped actors goes (default stderr).
    """
    if runtime.num_actors == 0:
        return LocalBackend(spec, runtime.queue_depth, transformer)
    if transformer is not None:
        raise ValueError("a shared transformer can only be used in-process: set runtime.num_actors: 0")
    return RayBackend(spec, runtime, num_rows, say)
