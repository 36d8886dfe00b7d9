"""A one-worker trial trains in the Tune trial's own actor, not in a Ray Train worker group.

A trial with `distributed.num_workers: 1` gains nothing from a worker group: there is no rank to all-reduce with and
no ZeRO partition to make. Starting one costs a Train controller, a worker, and a synchronisation and a dataset actor
for every trial, each a Python process that imports Ray Train and torch (measured on the 2-core CPU box:
`python benchmarks/trial_overhead.py`, rendered in docs/search.md). On a GPU cluster, the same start sits between
every trial and its GPU.

So such a trial runs the one loop (`unlearn.loop.TrainingLoop`) where the single-process trainer runs it: the plain
PyTorch engine, and the local checkpoint store in the trial's folder (<trial>/checkpoint, the layout of
`unlearn.checkpoint`, <trial>/metrics.jsonl written live). Every checkpoint's metrics (a proxy eval's among them) go
to Tune, as a worker group's reports reach it through `TuneReportCallback`. The trial's actor holds the worker's
resources, its GPU included (`trial_bundle`).

What differs from a worker-group trial: a dead trial is restarted by Tune (`search.max_failures`) and resumes from
<trial>/checkpoint; `distributed.max_failures` (worker-group restarts) does not apply. A custom DeepSpeed config
(`distributed.deepspeed_config` / `deepspeed_overrides`, e.g. optimizer offload) keeps the worker group: only
DeepSpeed honours it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

from pipelines.config.pipeline import PipelineConfig
from unlearn.loop import LocalStore


def trains_in_trial(cfg: PipelineConfig) -> bool:
    """Whether this search's trials train in their own actor (one worker, DeepSpeed at its defaults)."""
    d = cfg.distributed
    return d.num_workers == 1 and not d.deepspeed_config and not d.deepspeed_overrides


def trial_bundle(cfg: PipelineConfig) -> dict[str, float]:
    """The Ray resources one trial's actor holds: `search.resources_per_trial`, and where the trial trains in it,
    the worker's too (per resource the larger of the two: the actor is the worker, its CPUs drive it)."""
    own = dict(cfg.search.resources_per_trial)
    if not trains_in_trial(cfg):
        return own
    worker = cfg.distributed.worker_resources()
    return {k: max(own.get(k, 0.0), worker.get(k, 0.0)) for k in sorted({*own, *worker})}


def trial_cpus(cfg: PipelineConfig) -> float:
    """CPUs one running trial holds: its actor, plus its worker group's where it has one."""
    if trains_in_trial(cfg):
        return trial_bundle(cfg).get("CPU", 0.0)
    d = cfg.distributed
    return cfg.search.resources_per_trial.get("CPU", 0.0) + d.worker_resources().get("CPU", 0.0) * d.num_workers


class TuneReportingStore(LocalStore):
    """The single-process store in the trial's folder; each checkpoint's metrics then go to Tune (after the checkpoint
    is in place: a trial Tune stops at this report keeps it)."""

    def save(self, step: int, write: Callable[[Path], dict]) -> None:
        import ray.tune

        reported: dict = {}
        super().save(step, lambda folder: reported.update(write(folder)))
        ray.tune.report(reported)


def train_in_trial(cfg: PipelineConfig, trial_dir: Path, config_dir: str | None, objective) -> tuple[dict, dict]:
    """Train the trial's eraser in this actor. Returns (the final checkpoint's state, its metrics); eraser/ and
    metrics.jsonl are then in `trial_dir`, and <trial>/checkpoint stays (summary.json names it). The session is
    released before returning: the final eval then has this actor's GPU to itself."""
    import torch

    from pipelines.train.worker import build_session, loop_plan, trial_checkpoint_hook
    from unlearn.devices import resolve_device
    from unlearn.loop import TrainingLoop, torch_engine

    torch.set_num_threads(int(cfg.distributed.threads_per_worker))
    session = build_session(cfg, config_dir, 1, 0, resolve_device(cfg.train.device))  # Ray set this actor's GPU
    tc = cfg.train
    store = TuneReportingStore(trial_dir)
    loop = TrainingLoop(session, torch_engine(session.cfg.train, session.objective), store,
                        loop_plan(cfg, objective, tc.checkpoint_every),
                        on_checkpoint=trial_checkpoint_hook(objective, tc.steps, session))
    result = loop.fit()
    state = store.finish()
    session.objective.detach()
    device = session.device
    del loop, session
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return state, result.metrics
