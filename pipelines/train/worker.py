"""The per-worker training loop of `t2vu train --distributed` and of every Tune trial.

Reads like a recipe: build the session and the DeepSpeed engine, resume from the last
reported checkpoint, then step / log / checkpoint. The step is the plain-PyTorch
`ErasureObjective` of `unlearn.step`; only the eraser parameters go to `deepspeed.initialize`
with a client `torch.optim.AdamW` (DeepSpeed's CPU Adam JIT-compiles for ~50 s).

`lc` (the loop config, built by `pipelines.train.driver.make_trainer`) is plain data. Its
`step_hook` ({"function": <callable>, "kwargs": {...}}) is called as
`function(step, rank, **kwargs)` after every optimizer step; the tests install one that kills a
worker, production runs have none.
"""

from __future__ import annotations

import logging
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

from pipelines.train import checkpoints as ck
from pipelines.config.pipeline import PipelineConfig
from pipelines.config.distributed import per_worker_batch
from pipelines.tracking.live_logging import MlflowLive
from eval.metrics import is_number

LOG = logging.getLogger(__name__)


def worker_method_config(cfg: PipelineConfig, world: int):
    """This worker's share of the global batch (batch sizes are global in the YAML)."""
    m = cfg.method()
    tc = m.train.model_copy(update={
        "batch_size": per_worker_batch(m.train.batch_size, world, "train.batch_size"),
        "preserve_batch_size": per_worker_batch(m.train.preserve_batch_size, world, "train.preserve_batch_size", allow_zero=True),
    })
    return m.model_copy(update={"train": tc})


def load_step_hook(spec: dict | None) -> Callable[[int, int], None] | None:
    """`{"function": <callable>, "kwargs": {...}}` -> `hook(step, rank)`; None -> None.

    The function travels to the workers as an object (pickled by reference, so its module must be
    importable there); a "module:function" string is refused, never imported (unlearn.plugins)."""
    if not spec:
        return None
    fn = spec["function"]
    if not callable(fn):
        raise TypeError(f"step_hook.function must be a callable (a function object), got {fn!r}; "
                        "module:function strings are not imported")
    return partial(fn, **spec.get("kwargs", {}))


def build_session(cfg: PipelineConfig, lc: dict, world: int, rank: int, device):
    """The worker's TrainingSession (frozen backbone + erasers + cached text embeddings)."""
    from unlearn.config import config_digest
    from unlearn.session import TrainingSession

    session = TrainingSession(worker_method_config(cfg, world), config_dir=lc.get("config_dir"), device=device,
                              rank=rank, world_size=world)
    if session.cache.encoder_loads:
        raise RuntimeError(
            "A training worker had to load the text encoder: the driver must fill the embedding cache "
            "first (unlearn.session.prepare_embeddings) and the cache dir must be shared with the workers"
        )
    # The digest of the METHOD config (not this worker's batch share): same as a single-process run.
    session.eraser_set.meta.config_digest = config_digest(cfg.method())
    return session


class WorkerRun:
    """One worker's training state: the engine, the curve so far, timings, the last losses."""

    def __init__(self, lc: dict, session, engine, *, rank: int, world: int, device, state: dict | None,
                 history: list[dict], start: int):
        self.lc, self.session, self.engine = lc, session, engine
        self.rank, self.world, self.device = rank, world, device
        self.history, self.start = history, start
        self.attempts = (state or {}).get("attempts", []) + [start]
        self.objective = lc.get("objective")
        self.live = MlflowLive(lc.get("mlflow") if rank == 0 else None)
        self.step_time, self.steps_run, self.step_times = 0.0, 0, []
        self.phase = [0.0, 0.0]  # seconds in forward+backward, in optimizer step
        self.last: dict[str, float] = {}
        self.keys: list[str] | None = None
        self.final_metrics: dict = {}

    def step(self, step: int) -> dict:
        """One optimizer step on this rank's share of the global batch; returns the losses."""
        from unlearn.step import check_finite

        t = time.perf_counter()
        losses = self.engine(self.session.batch(step))
        check_finite(losses, step + 1)
        self.engine.backward(losses["loss"])  # ZeRO-2: gradient reduce-scatter happens here
        t_mid = time.perf_counter()
        self.engine.step()  # optimizer on this rank's shard + parameter all-gather
        dt = time.perf_counter() - t
        self.phase[0] += t_mid - t
        self.phase[1] += dt - (t_mid - t)
        self.step_time += dt
        self.step_times.append(dt)
        self.steps_run += 1
        return losses

    def log(self, done: int, losses: dict) -> None:
        """Losses of the GLOBAL batch: mean over ranks (small all-reduce, only at log points)."""
        import torch
        import torch.distributed as dist

        self.keys = self.keys or sorted(losses)
        vec = torch.stack([losses[k].detach().float() for k in self.keys]).to(self.device)
        if self.world > 1:
            dist.all_reduce(vec)
            vec /= self.world
        self.last = dict(zip(self.keys, vec.tolist()))
        self.history.append({"step": done, **self.last})

    def checkpoint(self, done: int, eval_kind: str | None) -> dict:
        """Save a checkpoint (collective), evaluate on rank 0 if asked, report it to Ray Train.

        Every report carries a checkpoint: a Ray Train report is a barrier through the
        controller (~1 s on a busy 2-core box), so the training curve goes to metrics.jsonl
        and MLflow instead, and Ray only sees checkpoint / evaluation points.
        """
        import ray.train

        from pipelines.search.objective import PROXY_TIME_ATTR, evaluate_or_report

        metrics = {"train_step": done, **self.last, "steps_per_s": self.steps_per_s()}
        state = {"step": done, "world_size": self.world, "attempts": self.attempts,
                 "global_steps": int(self.engine.global_steps),
                 "zero_stage": int(self.lc["ds_config"]["zero_optimization"]["stage"])}
        with tempfile.TemporaryDirectory(prefix="t2vu-ckpt-") as tmp:
            tmp = Path(tmp)
            ck.save_checkpoint(tmp, self.engine, self.session, rank=self.rank, state=state, history=self.history)
            if self.rank == 0:
                self.live.log(self.history)  # the curve since the last report (steps already logged are skipped)
                if eval_kind == "proxy":
                    # On the training transformer itself (no second backbone on this GPU): its training
                    # erasers are switched off and the eval attaches the checkpoint's copy for the rows.
                    with self.session.objective.handle.disabled():
                        metrics.update(evaluate_or_report(self.objective, tmp / ck.ERASER_DIR, done, final=False,
                                                          transformer=self.session.spec.transformer))
                    metrics["eval_kind"] = eval_kind
                    metrics[PROXY_TIME_ATTR] = done  # ASHA's time attribute
                    self.live.log_eval(done, metrics)
                # The final eval is not run here: the trial driver runs it after fit() returns, on the
                # GPUs this worker group frees (pipelines.search.trial), instead of one GPU while the rest wait.
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                             checkpoint_dir_name=f"checkpoint_{done:06d}")
        self.final_metrics = metrics
        return metrics

    def steps_per_s(self) -> float:
        return self.steps_run / self.step_time if self.step_time else 0.0

    def summary(self, steps: int) -> dict:
        # Under ZeRO-3 each rank holds only a shard of every eraser tensor (numel() == 0 outside a gather).
        partitioned = all(p.numel() == 0 for p in self.session.trainable_parameters())
        n = max(self.steps_run, 1)
        return {
            "steps": steps, "world_size": self.world, "attempts": self.attempts, "resumed_from": self.start,
            "params_partitioned": partitioned,
            # Steady-state rate: the first steps pay one-time costs (allocations, ZeRO buffers).
            "steps_per_s_steady": _steady_rate(self.step_times),
            "ms_per_step": {"forward_backward": 1000 * self.phase[0] / n, "optimizer_step": 1000 * self.phase[1] / n},
            "global_steps": int(self.engine.global_steps), "steps_per_s": self.steps_per_s(),
            "final": self.last, "metrics": {k: v for k, v in self.final_metrics.items() if is_number(v)},
        }


def train_loop_per_worker(lc: dict) -> dict | None:
    """Runs in every Ray Train worker; returns the run summary on rank 0."""
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch

    torch.set_num_threads(int(lc["threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = PipelineConfig.model_validate(lc["config"])
    tc = cfg.train
    from unlearn.devices import resolve_device

    device = resolve_device(cfg.train.device, assigned=ray.train.torch.get_device())  # this worker's GPU
    session = build_session(cfg, lc, world, rank, device)

    # Resume: the same world size restores the engine; another one keeps the weights only
    # (ZeRO optimizer shards are tied to the world size).
    ckpt = ray.train.get_checkpoint()
    state, history = ck.read_checkpoint_state(ckpt)
    start = int(state["step"]) if state else 0
    same_world = bool(state) and state.get("world_size") == world
    if state and not same_world:
        ck.restore_eraser_weights(ckpt, session.eraser_set)
        if rank == 0:
            LOG.warning("Checkpoint from world size %s, now %s: eraser weights restored, optimizer state reset",
                        state.get("world_size"), world)
    params = session.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=session.objective, model_parameters=params, optimizer=optimizer,
                                           config=lc["ds_config"])
    if same_world:
        ck.load_engine_state(engine, ckpt, start)

    run = WorkerRun(lc, session, engine, rank=rank, world=world, device=device, state=state, history=history, start=start)
    on_step_end = load_step_hook(lc.get("step_hook"))
    ckpt_every = int(lc["checkpoint_every"])
    proxy_every = (run.objective or {}).get("proxy_every")
    for step in range(start, tc.steps):
        losses = run.step(step)
        done = step + 1
        if on_step_end is not None:
            on_step_end(done, rank)
        is_last = done == tc.steps
        if done % tc.log_every == 0 or is_last:
            run.log(done, losses)
        want_proxy = bool(proxy_every) and done % proxy_every == 0 and not is_last
        if done % ckpt_every == 0 or is_last or want_proxy:
            run.checkpoint(done, eval_kind="proxy" if want_proxy else None)

    if start >= tc.steps:  # restarted after the last checkpoint was already reported: re-report it
        run.last = {k: v for k, v in (history[-1] if history else {}).items() if k != "step"}
        run.checkpoint(tc.steps, eval_kind=None)

    summary = run.summary(tc.steps)
    session.objective.detach()
    return summary if rank == 0 else None


def _steady_rate(times: list[float]) -> float:
    skip = min(5, len(times) // 5)
    rest = times[skip:]
    return len(rest) / sum(rest) if rest and sum(rest) > 0 else 0.0
