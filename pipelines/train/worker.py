"""What each Ray Train worker runs for `t2vu train --distributed` and for every Tune trial.

The loop itself is `unlearn.loop.TrainingLoop` (the single-process trainer's, too); a worker plugs in
its share of the batch, the DeepSpeed engine (`pipelines.train.engine`), the Ray Train checkpoint store
(`pipelines.train.checkpoints`) and, on rank 0, what a search adds at checkpoints: MLflow live logging
and the proxy eval (`pipelines.search.objective`).

`LoopConfig` (built by `pipelines.train.driver.make_trainer`) is what crosses from the driver to the
workers: typed, frozen and picklable.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.config.distributed import per_worker_batch
from pipelines.config.pipeline import PipelineConfig
from eval.metrics import is_number
from unlearn.loop import CheckpointEvent, LoopPlan, LoopResult, StepHook, TrainingLoop, steady_rate

if TYPE_CHECKING:  # search drives train: the type only, for the reader
    from pipelines.search.objective import ObjectivePayload


@dataclass(frozen=True)
class LoopConfig:
    config: PipelineConfig
    config_dir: str | None
    ds_config: dict
    threads: int
    checkpoint_every: int
    objective: ObjectivePayload | None = None  # a Tune trial's, bound to it (proxy evals, its MLflow run)
    step_hook: StepHook | None = None  # a test seam (fault injection); production runs have none
    resume_from: str | None = None  # a `t2vu train` checkpoint to start from while the Ray run has none of its own

    def plan(self) -> LoopPlan:
        return loop_plan(self.config, self.objective, self.checkpoint_every)


def loop_plan(cfg: PipelineConfig, objective: ObjectivePayload | None, checkpoint_every: int) -> LoopPlan:
    """Steps, log and checkpoint points, and the proxy-eval points of a trial's objective (a worker's, or a one-worker
    trial's in its own actor)."""
    tc = cfg.train
    return LoopPlan(tc.steps, tc.log_every, checkpoint_every,
                    eval_every=objective.proxy_every if objective is not None else None)


def load_step_hook(hook: StepHook | None) -> StepHook | None:
    """The step hook a worker calls; anything but a `StepHook` (a dict, a "module:function" string) is refused."""
    if hook is not None and not isinstance(hook, StepHook):
        raise TypeError(f"step_hook must be a unlearn.loop.StepHook (a function object + kwargs), got {hook!r}; "
                        "module:function strings are not imported")
    return hook


def worker_method_config(cfg: PipelineConfig, world: int):
    """This worker's share of the global batch (batch sizes are global in the YAML)."""
    m = cfg.method()
    tc = m.train.model_copy(update={
        "batch_size": per_worker_batch(m.train.batch_size, world, "train.batch_size"),
        "preserve_batch_size": per_worker_batch(m.train.preserve_batch_size, world, "train.preserve_batch_size", allow_zero=True),
    })
    return m.model_copy(update={"train": tc})


def build_session(cfg: PipelineConfig, config_dir: str | None, world: int, rank: int, device):
    """The worker's TrainingSession (frozen backbone + erasers + cached text embeddings); also a one-worker Tune
    trial's, in its own actor (pipelines.search.trial_training)."""
    from unlearn.config import config_digest
    from unlearn.session import TrainingSession

    session = TrainingSession(worker_method_config(cfg, world), config_dir=config_dir, device=device,
                              rank=rank, world_size=world)
    if session.cache.encoder_loads:
        raise RuntimeError(
            "A training worker had to load the text encoder: the driver must fill the embedding cache "
            "first (unlearn.session.prepare_embeddings) and the cache dir must be shared with the workers"
        )
    # The digest of the METHOD config (not this worker's batch share): same as a single-process run.
    session.eraser_set.meta.config_digest = config_digest(cfg.method())
    return session


def trial_checkpoint_hook(obj: ObjectivePayload | None, steps: int, session):
    """Rank 0 at each checkpoint of a Tune trial: the curve to MLflow, and at proxy points the proxy eval: on the
    search's eval pool while training goes on where it has one (pipelines.search.proxy_pool), else here.

    The final eval is not run here: the trial driver runs it after fit() returns, on the GPUs this
    worker group frees (pipelines.search.trial), instead of one GPU while the rest wait."""
    from pipelines.search.proxy_pool import PooledProxies
    from pipelines.tracking.live_logging import MlflowLive

    live = MlflowLive(obj.mlflow if obj is not None else None)
    proxies = PooledProxies.for_trial(obj)  # None: no pool for this trial's proxies (or none configured)

    def on_checkpoint(ev: CheckpointEvent) -> dict:
        live.log(ev.history)  # the curve since the last report (steps already logged are skipped)
        from pipelines.search.objective import PROXY_TIME_ATTR, evaluate_or_report
        from unlearn.checkpoint import ERASER_DIR

        if proxies is not None:
            finished = proxies.harvest(wait=ev.step >= steps)
            for m in finished:
                live.log_eval(m[PROXY_TIME_ATTR], {"train_step": m[PROXY_TIME_ATTR], **m})
            if ev.evaluate:
                proxies.submit(ev.folder / ERASER_DIR, ev.step)
            return finished[-1] if finished else {}
        if not ev.evaluate:
            return {}
        # On the training transformer itself (no second backbone on this GPU): its training erasers are
        # switched off and the eval attaches the checkpoint's copy for the rows.
        with session.objective.handle.disabled():
            metrics = evaluate_or_report(obj, ev.folder / ERASER_DIR, ev.step, final=False,
                                         transformer=session.spec.transformer)
        metrics.update({"eval_kind": "proxy", PROXY_TIME_ATTR: ev.step})  # ASHA's time attribute
        live.log_eval(ev.step, {"train_step": ev.step, **metrics})
        return metrics

    return on_checkpoint


def summary(result: LoopResult, steps: int, session) -> dict:
    # Under ZeRO-3 each rank holds only a shard of every eraser tensor (numel() == 0 outside a gather).
    partitioned = all(p.numel() == 0 for p in session.trainable_parameters())
    n = max(result.steps_run, 1)
    fb, opt = result.phase_s
    return {
        "steps": steps, "world_size": result.engine["world_size"], "attempts": result.attempts,
        "resumed_from": result.start, "params_partitioned": partitioned,
        "steps_per_s_steady": steady_rate(result.step_times),
        "ms_per_step": {"forward_backward": 1000 * fb / n, "optimizer_step": 1000 * opt / n},
        "global_steps": result.global_steps, "steps_per_s": result.steps_per_s(),
        "final": result.last, "metrics": {k: v for k, v in result.metrics.items() if is_number(v)},
    }


def train_loop_per_worker(config: dict) -> dict | None:
    """Runs in every Ray Train worker (`config` = {"loop": LoopConfig}); returns the run summary on rank 0."""
    import ray.train
    import ray.train.torch
    import torch

    from pipelines.train.checkpoints import RayCheckpointStore
    from pipelines.train.engine import DeepSpeedEngine
    from unlearn.devices import resolve_device
    from unlearn.loop import make_optimizer

    lc: LoopConfig = config["loop"]
    torch.set_num_threads(int(lc.threads))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = lc.config
    device = resolve_device(cfg.train.device, assigned=ray.train.torch.get_device())  # this worker's GPU
    sp = cfg.distributed.sequence_parallel  # a group of sp workers shares one batch share (unlearn.sequence_parallel)
    # distributed.shard_backbone: each rank reads only its rows of the backbone (unlearn.sharded_load); trajectory
    # x_t are then sampled through the sharded backbone, the ranks in lockstep (unlearn.xt_sources, its cost there)
    in_shards = cfg.distributed.shard_backbone
    from unlearn.sharded_load import sharded_loading

    with sharded_loading(str(device)) if in_shards else contextlib.nullcontext():
        session = build_session(cfg, lc.config_dir, world // sp, rank // sp, device)
    method = session.cfg
    sharded = None
    if cfg.distributed.shard_backbone:  # before the engine: it sees the erasers whole, the backbone in shards
        from unlearn.sharding import resident_bytes, shard_session

        sharded = shard_session(session)
    if sp > 1:  # before the engine: the eraser gradients are scaled by sp as they are computed
        from unlearn.sequence_parallel import enable_for_workers

        enable_for_workers(session.objective, sp, session.eraser_set.parameters())

    def make_engine(params):
        return DeepSpeedEngine(session.objective, params, make_optimizer(method.train, params), lc.ds_config, world)

    loop = TrainingLoop(session, make_engine, RayCheckpointStore(lc.resume_from), lc.plan(), rank=rank,
                        step_hook=load_step_hook(lc.step_hook),
                        on_checkpoint=trial_checkpoint_hook(lc.objective, cfg.train.steps, session) if rank == 0 else None)
    result = loop.fit()
    out = summary(result, cfg.train.steps, session)
    if sharded is not None:  # what this rank held, read from its tensors (not from the plan)
        out["backbone_resident_bytes"] = resident_bytes(session.spec.transformer)
    out["shard_backbone"] = sharded is not None
    out["backbone_loaded_in_shards"] = in_shards
    out["sequence_parallel"] = sp
    session.objective.detach()
    return out if rank == 0 else None

