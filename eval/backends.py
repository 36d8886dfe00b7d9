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

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from eval.workers import EvalWorker, WorkerSpec

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


class RayBackend:
    """N Ray actors, one pipeline each; rows go to whichever actor has a free slot."""

    def __init__(self, spec: WorkerSpec, runtime, num_rows: int | None = None):
        import ray

        if not ray.is_initialized():
            raise RuntimeError(RAY_NOT_STARTED.format(n=runtime.num_actors))
        self.ray = ray
        n = runtime.num_actors if num_rows is None else max(1, min(runtime.num_actors, num_rows))
        self.depth = runtime.queue_depth
        actor_cls = ray.remote(EvalWorker)
        opts: dict[str, Any] = dict(num_cpus=runtime.cpus_per_actor, num_gpus=1 if runtime.use_gpu else 0,
                                    max_concurrency=runtime.queue_depth)
        self.actors = [actor_cls.options(**opts).remote(spec) for _ in range(n)]
        try:
            self.workers_info = ray.get([a.ready.remote() for a in self.actors])
        except Exception:
            self.close()
            raise

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

        for _ in range(self.depth):
            for a in range(len(self.actors)):
                submit(a)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
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
        for i, a in enumerate(getattr(self, "actors", [])):
            if not abort:
                try:
                    self.workers_info[i]["peak_memory_gb"] = ray.get(a.peak_memory_gb.remote(), timeout=60)
                    ray.get(a.close.remote(), timeout=60)
                except Exception:  # noqa: BLE001 - best effort; the actor is killed next
                    pass
            ray.kill(a)


def _row_result(get: Callable[[], dict], row: dict) -> dict:
    try:
        return get()
    except Exception as exc:
        raise RuntimeError(
            f"evaluation of row {row['row_id']} ({row.get('source', '')} row {row['row_index'] + 1}) failed: {exc}"
        ) from exc


def make_backend(spec: WorkerSpec, runtime, num_rows: int | None = None, transformer=None):
    """In-process (num_actors 0) or Ray actors (never more actors than rows to do).

    transformer: generate with this loaded backbone (in-process only; it cannot cross into actors).
    """
    if runtime.num_actors == 0:
        return LocalBackend(spec, runtime.queue_depth, transformer)
    if transformer is not None:
        raise ValueError("a shared transformer can only be used in-process: set runtime.num_actors: 0")
    return RayBackend(spec, runtime, num_rows)
