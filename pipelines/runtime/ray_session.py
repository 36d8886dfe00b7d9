"""The one way this project starts or joins Ray (trainers, searches, eval actors, benchmarks).

`ensure_ray` connects to RAY_ADDRESS / an explicit address or starts a local Ray with the
dashboard, and hands every worker the offline/telemetry environment (`pipelines.runtime.env`):
Ray workers do not inherit the driver's environment on a cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os

from pipelines.runtime.env import apply_offline_env, runtime_env_vars
from pipelines.runtime.ray_reaper import mark_environment, watch_local_session


def worker_env_vars() -> dict[str, str]:
    """Environment every Ray worker needs (their env is not the driver's)."""
    apply_offline_env()
    env = runtime_env_vars()
    for key in ("T2VU_CACHE", "T2VU_HOME", "TORCH_EXTENSIONS_DIR", "TUNE_DISABLE_STRICT_METRIC_CHECKING"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def ensure_ray(num_cpus: int | None = None, address: str | None = None, num_gpus: int | None = None) -> bool:
    """Connect to (RAY_ADDRESS / `address`) or start a local Ray; returns True if started here.

    Local Ray always runs with the dashboard: without the State API, a trial stopped by Tune
    leaks its Train placement group and the next trial hangs (stack-probe §6).
    `num_cpus` is LOGICAL CPUs: on a 2-core box 3 are needed (1 trial driver + 2 workers).
    `num_gpus`: a local Ray's GPUs (None = the ones it detects; tests give a CPU box logical ones).
    """
    import ray

    if ray.is_initialized():
        return False
    env = worker_env_vars()
    address = address or os.environ.get("RAY_ADDRESS")
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        # Inside a Ray Job (`t2vu submit`): the job's runtime env already carries env vars, and Ray
        # refuses to merge a driver runtime env that sets the same keys. Add only what is missing.
        try:
            have = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        except (ValueError, AttributeError):
            have = {}
        env = {k: v for k, v in env.items() if k not in have}
    # Worker output and Ray's own start-up lines ("Started a local Ray instance", the token-authentication
    # notice) reach the console only with `t2vu -v` (root logger at INFO): ray.init sets its driver logger's
    # level itself, so the CLI's setting of the "ray" logger does not hold.
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    quiet = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, **quiet)
        return True
    mark_environment()  # the session's processes die with this one, even on SIGKILL (ray_reaper)
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=max(num_cpus or 0, os.cpu_count() or 1), num_gpus=num_gpus, include_dashboard=True,
                     dashboard_host="127.0.0.1", runtime_env={"env_vars": env}, **quiet)
            break
        except Exception as exc:
            # Ray gives its raylet a fixed 30 s to register; on an overloaded machine (measured: load average 40 on
            # 2 cores) that is not enough, and the search died in a traceback. One more try, then one line.
            if "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            if attempt == 2:
                raise TimeoutError(f"the local Ray did not start within Ray's 30 s, twice (load average "
                                   f"{os.getloadavg()[0]:.0f} on {os.cpu_count()} CPUs); rerun when the machine is "
                                   "less busy, or join a running Ray with RAY_ADDRESS") from None
    node = getattr(ray._private.worker, "_global_node", None)  # private, but the one place Ray names its folder
    watch_local_session(node.get_session_dir_path() if node else None)
    return True


def on_one_gpu(fn, *args):
    """fn(*args) in a Ray task holding one GPU; its result. Scheduled DEFAULT, never in the caller's placement group:
    Tune puts a trial's child tasks into the trial's group, which holds only its driver's CPU, so a GPU task started
    by a trial (its bank rounds, gate probe, objective attack) cannot fit there and fails the trial
    (Ray 2.60: "cannot fit into any bundles for the placement group"; tests/test_eval_ray_waits.py).
    No retries: the steps it runs resume from their own files when the command is rerun."""
    import ray

    task = ray.remote(fn).options(num_gpus=1, scheduling_strategy="DEFAULT", max_retries=0)
    return ray.get(task.remote(*args))


def fit_trainer(trainer):
    """`trainer.fit()` of a Ray Train `TorchTrainer`, where Ctrl-C is a KeyboardInterrupt (exit 130, one line).

    Ray Train installs its own SIGINT handler in `fit()` (main thread only): it aborts the run gracefully, then
    calls `sys.exit(0)` inside a `ray.get`, which Ray turns into `SystemExit(1)`: `t2vu train --distributed`
    exited 1 with no message. A SystemExit out of `fit()` comes only from that handler (the workers are other
    processes), so it is an interrupt; the checkpoints already reported stay, and a rerun resumes from them.
    """
    import signal

    before = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    except SystemExit as exc:
        raise KeyboardInterrupt from exc
    finally:
        signal.signal(signal.SIGINT, before)  # Ray's handler would abort a controller that is gone


def start_eval_ray(runtime) -> bool:
    """Start or join the Ray the eval actors run on (eval itself never starts Ray).

    A local Ray gets enough logical CPUs for every actor (they mostly wait on each other);
    `runtime.ray_address` (else RAY_ADDRESS) joins a cluster instead. True if started here.
    runtime: `eval.config.RuntimeConfig`.
    """
    return ensure_ray(num_cpus=math.ceil(runtime.num_actors * runtime.cpus_per_actor), address=runtime.ray_address)


def check_worker_group_fits(cfg) -> None:
    """Refuse a Ray Train worker group the cluster can never hold, in one line, before Ray Train waits for it:
    it retries a worker group that does not start every 60 s for ever (FailureConfig.controller_failure_limit
    -1), so `distributed.num_workers: 2` with a GPU each hung on a 1-GPU machine. Call after Ray is up.
    cfg: `pipelines.config.pipeline.PipelineConfig`."""
    from eval.ray_waits import actors_that_fit, resources_text, short_of
    from unlearn.config import ConfigError

    d = cfg.distributed
    need = d.worker_resources()
    fit, totals, grows = actors_that_fit(need)
    if fit < d.num_workers:
        raise ConfigError(f"distributed.num_workers={d.num_workers} asks for {short_of(d.num_workers, need, totals, grows)} "
                          f"({resources_text(need)} per worker): Ray Train would wait for them for ever; lower "
                          "distributed.num_workers (train.batch_size stays the global batch) or "
                          "distributed.resources_per_worker")


# Ray Train's wait for a worker group's placement group, per attempt (its default; the controller reads this variable
# from the environment the job's processes inherit, as this process does)
START_ATTEMPT_ENV, START_ATTEMPT_DEFAULT_S = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", 60.0


def start_retries(timeout_s: float | None) -> int:
    """`FailureConfig.controller_failure_limit` for a worker group that may wait `timeout_s` in all for its
    resources (distributed.start_timeout_s): Ray Train retries one that did not start, each attempt waiting
    RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S; -1 (None) = for ever."""
    if timeout_s is None:
        return -1
    attempt = float(os.environ.get(START_ATTEMPT_ENV) or START_ATTEMPT_DEFAULT_S)
    return max(0, math.ceil(timeout_s / attempt) - 1)


@contextlib.contextmanager
def worker_group_deadline(cfg):
    """Around `TorchTrainer.fit()`: Ray Train giving up on a worker group that never got its resources (after
    distributed.start_timeout_s, `start_retries`) ends in one line naming what the cluster has free (RayWaitTimeout:
    the CLI's exit 2), not in a controller traceback. cfg: `pipelines.config.pipeline.PipelineConfig`."""
    from eval.ray_waits import RayWaitTimeout, cluster_use_text, resources_text

    try:
        yield
    except Exception as exc:
        if not _never_started(exc):
            raise
        d = cfg.distributed
        need = d.worker_resources()
        raise RayWaitTimeout(
            f"the Ray Train worker group ({d.num_workers} x {resources_text(need)}) did not get its Ray resources "
            f"within {d.start_timeout_s:g} s (distributed.start_timeout_s): {cluster_use_text(need)} (other jobs, "
            "trials or leftovers hold the rest); free them, or raise "
            "distributed.start_timeout_s (null: wait for ever)") from None


def _never_started(exc: BaseException | None) -> bool:
    """Whether Ray Train's error is its give-up on starting the worker group (the controller's failure, wrapped)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "controller_failure", None)
        if "WorkerGroupStartupTimeoutError" in (type(exc).__name__, type(inner).__name__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def cpus_needed(cfg, trial_cpus: float = 0.0) -> int:
    per = cfg.distributed.worker_resources().get("CPU", 0.0)
    return int(math.ceil(trial_cpus + per * cfg.distributed.num_workers))
