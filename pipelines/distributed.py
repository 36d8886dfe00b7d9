"""Eraser training under Ray Train (V2) + DeepSpeed ZeRO: `t2vu train --distributed`.

The step is the plain-PyTorch `ErasureObjective` of `unlearn.step`, unchanged:
each worker builds a `TrainingSession` (frozen backbone + erasers + cached text
embeddings) and hands ONLY the eraser parameters to `deepspeed.initialize`
with a client `torch.optim.AdamW` (DeepSpeed's CPU Adam JIT-compiles for
~50 s). The same code runs on CPU with gloo (`DS_ACCELERATOR=cpu`) and on GPUs
with NCCL.

    driver                          worker r (of W)
    ------                          ---------------
    prepare_embeddings()            TrainingSession(batch = global / W, rank r)
    TorchTrainer.fit() ───────────► deepspeed.initialize(objective, eraser params, AdamW)
                                    resume: ray.train.get_checkpoint() -> engine.load_checkpoint
                                    loop: engine(batch) -> backward -> step
                                    every checkpoint_every: EVERY rank saves (collective),
                                      rank 0 adds eraser/ (gathered under ZeRO-3), state,
                                      metrics -> ray.train.report(checkpoint=...)
    export eraser/ + metrics ◄───── final report
      from the final checkpoint

Output folder (same layout as the single-process trainer, so erasers are interchangeable):
  config.yaml, metrics.jsonl, eraser/ (eraser.safetensors + eraser_config.json), summary.json,
  ray/ (Ray Train storage: checkpoints; must be shared storage on a multi-node cluster).

Fault tolerance: `FailureConfig(max_failures)` restarts a dead worker group and the
workers resume from the last reported checkpoint; rerunning the same command after
the driver died resumes too (stable run name + storage path).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipelines.config import ConfigError, PipelineConfig, check_distributed, deepspeed_config, per_worker_batch
from pipelines.live_logging import MlflowLive
from pipelines.ray_session import cpus_needed, ensure_ray

LOG = logging.getLogger(__name__)

CHECKPOINT_TAG = "ds"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
ERASER_DIR = "eraser"


# --- the worker -------------------------------------------------------------------------------------

def worker_method_config(cfg: PipelineConfig, world: int):
    """This worker's share of the global batch (batch sizes are global in the YAML)."""
    m = cfg.method()
    tc = m.train.model_copy(update={
        "batch_size": per_worker_batch(m.train.batch_size, world, "train.batch_size"),
        "preserve_batch_size": per_worker_batch(m.train.preserve_batch_size, world, "train.preserve_batch_size", allow_zero=True),
    })
    return m.model_copy(update={"train": tc})


def _gathered(params):
    """All-gather ZeRO-3 partitions for reading (no-op for ZeRO-2). Collective: every rank enters."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def _read_checkpoint_state(ckpt) -> tuple[dict | None, list[dict]]:
    if ckpt is None:
        return None, []
    from unlearn.trainer import read_metrics

    with ckpt.as_directory() as d:
        d = Path(d)
        if not (d / STATE_FILE).exists():
            return None, []
        state = json.loads((d / STATE_FILE).read_text())
        return state, read_metrics(d / METRICS_FILE, upto_step=state["step"])


def train_loop_per_worker(lc: dict) -> dict | None:
    """Runs in every Ray Train worker. `lc` is built by `make_trainer` (plain JSON-able data)."""
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from unlearn.config import config_digest
    from unlearn.eraser import read_eraser, save_eraser
    from unlearn.session import TrainingSession
    from unlearn.step import check_finite

    torch.set_num_threads(int(lc["threads"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = PipelineConfig.model_validate(lc["config"])
    method = cfg.method()
    tc = method.train
    device = ray.train.torch.get_device()

    session = TrainingSession(worker_method_config(cfg, world), config_dir=lc.get("config_dir"), device=device, rank=rank)
    if session.cache.encoder_loads:
        raise RuntimeError(
            "A training worker had to load the text encoder: the driver must fill the embedding cache "
            "first (unlearn.session.prepare_embeddings) and the cache dir must be shared with the workers"
        )
    # The digest of the METHOD config (not this worker's batch share): same as a single-process run.
    session.eraser_set.meta.config_digest = config_digest(method)

    ckpt = ray.train.get_checkpoint()
    state, history = _read_checkpoint_state(ckpt)
    start = int(state["step"]) if state else 0
    same_world = bool(state) and state.get("world_size") == world
    if state and not same_world:
        # ZeRO optimizer shards are tied to the world size: keep the weights, restart the optimizer.
        with ckpt.as_directory() as d:
            saved = read_eraser(Path(d) / ERASER_DIR)
        session.eraser_set.load_state_dict(saved.state_dict())
        if rank == 0:
            LOG.warning("Checkpoint from world size %s, now %s: eraser weights restored, optimizer state reset",
                        state.get("world_size"), world)

    params = session.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    engine, _, _, _ = deepspeed.initialize(
        model=session.objective, model_parameters=params, optimizer=optimizer, config=lc["ds_config"],
    )
    if same_world:
        with ckpt.as_directory() as d:
            load_path, _ = engine.load_checkpoint(d, tag=CHECKPOINT_TAG, load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint reported at step {start}")

    attempts = (state or {}).get("attempts", []) + [start]
    ckpt_every = int(lc["checkpoint_every"])
    objective = lc.get("objective")
    proxy_every = (objective or {}).get("proxy_every")
    fault = lc.get("fault")
    live = MlflowLive(lc.get("mlflow") if rank == 0 else None)
    step_time, steps_run, step_times = 0.0, 0, []
    step_phase = [0.0, 0.0]  # seconds in forward+backward, in optimizer step
    last: dict[str, float] = {}
    keys: list[str] | None = None

    def report(done: int, eval_kind: str | None) -> dict:
        # Every report carries a checkpoint: a Ray Train report is a barrier through the
        # controller (~1 s on a busy 2-core box), so the training curve goes to metrics.jsonl
        # and MLflow instead, and Ray only sees checkpoint / evaluation points.
        metrics = {"train_step": done, **last, "steps_per_s": steps_run / step_time if step_time else 0.0}
        with tempfile.TemporaryDirectory(prefix="t2vu-ckpt-") as tmp:
            tmp = Path(tmp)
            # Collective: every rank writes its own ZeRO shard (rank 0 also the module states).
            engine.save_checkpoint(str(tmp), tag=CHECKPOINT_TAG, client_state={"step": done})
            with _gathered(session.trainable_parameters()):
                if rank == 0:
                    save_eraser(session.eraser_set, tmp / ERASER_DIR)
            if rank == 0:
                (tmp / STATE_FILE).write_text(json.dumps({
                    "step": done, "world_size": world, "attempts": attempts,
                    "global_steps": int(engine.global_steps), "zero_stage": int(lc["ds_config"]["zero_optimization"]["stage"]),
                }))
                (tmp / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
                live.log(history)  # the curve since the last report (steps already logged are skipped)
                if eval_kind is not None:
                    metrics.update(_run_objective(objective, tmp / ERASER_DIR, done, final=eval_kind == "final"))
                    metrics["eval_kind"] = eval_kind
                    if eval_kind == "proxy":
                        metrics["proxy_step"] = done  # ASHA's time attribute (pipelines.tune.PROXY_TIME_ATTR)
                    live.log_eval(done, metrics)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                             checkpoint_dir_name=f"checkpoint_{done:06d}")
        return metrics

    final_metrics: dict = {}
    for step in range(start, tc.steps):
        t = time.perf_counter()
        losses = engine(session.batch(step))
        check_finite(losses, step + 1)
        engine.backward(losses["loss"])  # ZeRO-2: gradient reduce-scatter happens here
        t_mid = time.perf_counter()
        engine.step()  # optimizer on this rank's shard + parameter all-gather
        dt = time.perf_counter() - t
        step_phase[0] += t_mid - t
        step_phase[1] += dt - (t_mid - t)
        step_time += dt
        step_times.append(dt)
        steps_run += 1
        done = step + 1

        if fault and rank == fault["rank"] and done == fault["step"] and not os.path.exists(fault["marker"]):
            # Tests: a real, abrupt worker death, once the last reported checkpoint is committed
            # (the controller registers reports asynchronously; one still in flight is lost).
            import signal

            ray.train.get_all_reported_checkpoints()
            Path(fault["marker"]).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

        is_last = done == tc.steps
        log_now = done % tc.log_every == 0 or is_last
        if log_now:
            # Losses of the GLOBAL batch: mean over ranks (small all-reduce, only at log points).
            keys = keys or sorted(losses)
            vec = torch.stack([losses[k].detach().float() for k in keys]).to(device)
            if world > 1:
                dist.all_reduce(vec)
                vec /= world
            last = dict(zip(keys, vec.tolist()))
            history.append({"step": done, **last})
        want_proxy = bool(proxy_every) and done % proxy_every == 0 and not is_last
        if done % ckpt_every == 0 or is_last or want_proxy:
            kind = "final" if (is_last and objective) else ("proxy" if want_proxy else None)
            final_metrics = report(done, eval_kind=kind)

    if start >= tc.steps:  # restarted after the last checkpoint was already reported: re-report it
        last = history[-1] if history else {}
        last = {k: v for k, v in last.items() if k != "step"}
        final_metrics = report(tc.steps, eval_kind="final" if objective else None)

    # Under ZeRO-3 each rank holds only a shard of every eraser tensor (numel() == 0 outside a gather).
    partitioned = all(p.numel() == 0 for p in session.trainable_parameters())
    summary = {
        "steps": tc.steps, "world_size": world, "attempts": attempts, "resumed_from": start,
        "params_partitioned": partitioned,
        # Steady-state rate: the first steps pay one-time costs (allocations, ZeRO buffers).
        "steps_per_s_steady": _steady_rate(step_times),
        "ms_per_step": {"forward_backward": 1000 * step_phase[0] / max(steps_run, 1),
                        "optimizer_step": 1000 * step_phase[1] / max(steps_run, 1)},
        "global_steps": int(engine.global_steps), "steps_per_s": steps_run / step_time if step_time else 0.0,
        "final": last, "metrics": {k: v for k, v in final_metrics.items() if _is_number(v)},
    }
    session.objective.detach()
    return summary if rank == 0 else None


def _steady_rate(times: list[float]) -> float:
    skip = min(5, len(times) // 5)
    rest = times[skip:]
    return len(rest) / sum(rest) if rest and sum(rest) > 0 else 0.0


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _run_objective(objective: dict, eraser_dir: Path, step: int, final: bool) -> dict:
    """The trial's evaluation. A failure is reported, not raised: retrying the worker group
    would retrain from the previous checkpoint only to hit the same (usually config) error;
    the trial driver turns `objective_error` into a failed trial instead."""
    from pipelines.tune import evaluate_objective

    try:
        return evaluate_objective(objective, eraser_dir, step=step, final=final)
    except Exception as exc:  # noqa: BLE001 - reported to the trial driver
        LOG.exception("objective evaluation failed at step %d", step)
        return {"objective_error": f"{type(exc).__name__}: {exc}"[:2000]}


# --- the driver ----------------------------------------------------------------------------------

def make_trainer(
    cfg: PipelineConfig,
    *,
    name: str,
    storage_path: str | Path,
    config_dir: str | Path | None = None,
    callbacks: list | None = None,
    objective: dict | None = None,
    mlflow_run: dict | None = None,
    fault: dict | None = None,
):
    """A `TorchTrainer` for one eraser training (used by `run_distributed` and by each Tune trial).

    `name` + `storage_path` identify the run: reusing them resumes from its last checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    check_distributed(cfg)
    d = cfg.distributed
    loop_config = {
        "config": cfg.to_dict(),
        "config_dir": str(Path(config_dir).resolve()) if config_dir else None,
        "ds_config": deepspeed_config(cfg, config_dir),
        "threads": d.threads_per_worker,
        "checkpoint_every": d.checkpoint_every or cfg.train.checkpoint_every,
        "objective": objective,
        "mlflow": mlflow_run,
        "fault": fault,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu, resources_per_worker=d.worker_resources()),
        torch_config=TorchConfig(backend=d.torch_backend()),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=d.num_to_keep),
            callbacks=list(callbacks or []),
        ),
    )


def export_result(result, out: Path) -> dict:
    """Copy the final eraser + training curve out of the last reported checkpoint into `out`."""
    from unlearn.eraser import read_eraser
    from unlearn.fsutil import atomic_copy_dir, atomic_write_bytes, atomic_write_text

    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {result.path} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        d = Path(d)
        read_eraser(d / ERASER_DIR)  # validates the files before they are published
        atomic_copy_dir(d / ERASER_DIR, out / ERASER_DIR)
        atomic_write_bytes(out / METRICS_FILE, (d / METRICS_FILE).read_bytes())
        state = json.loads((d / STATE_FILE).read_text())
    atomic_write_text(out / "checkpoint_path.txt", str(result.checkpoint.path) + "\n")
    return state


def run_distributed(
    cfg: PipelineConfig,
    output: str | Path,
    *,
    config_dir: str | Path | None = None,
    resume: bool = True,
    fault: dict | None = None,
) -> dict:
    """Train one eraser with Ray Train + DeepSpeed; returns the summary (also in summary.json)."""
    from unlearn.config import config_digest
    from unlearn.session import prepare_embeddings
    from unlearn.fsutil import atomic_write_text

    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    if resume and (out / "config.yaml").exists():
        saved = PipelineConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text()))
        if config_digest(saved.method()) != config_digest(cfg.method()):
            raise ConfigError(f"{out} holds a run of a different method config; use a new --output, "
                              "or --no-resume to start it again from step 0")
        if summary_path.exists() and (out / ERASER_DIR / "eraser_config.json").exists():
            return json.loads(summary_path.read_text())  # finished: nothing to redo
    check_distributed(cfg)
    d = cfg.distributed
    storage = Path(d.storage_path) if d.storage_path else out / "ray"
    name = d.name or "train"
    if not resume and (storage / name).exists():
        shutil.rmtree(storage / name)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    t0 = time.time()
    cache = prepare_embeddings(cfg.method(), config_dir)  # driver-side: workers never load T5
    ensure_ray(num_cpus=cpus_needed(cfg))
    trainer = make_trainer(cfg, name=name, storage_path=storage, config_dir=config_dir, fault=fault)
    result = trainer.fit()
    state = export_result(result, out)
    rv = result.return_value or {}
    summary = {
        "steps": cfg.train.steps,
        "resumed_from": rv.get("resumed_from", state["attempts"][-1]),
        "attempts": state["attempts"],
        "global_steps": state["global_steps"],
        "world_size": state["world_size"],
        "zero_stage": state["zero_stage"],
        "final": rv.get("final", {}),
        "steps_per_s": rv.get("steps_per_s"),
        "params_partitioned": rv.get("params_partitioned"),
        "steps_per_s_steady": rv.get("steps_per_s_steady"),
        "ms_per_step": rv.get("ms_per_step"),
        "wall_s": round(time.time() - t0, 3),
        "eraser": str(out / ERASER_DIR),
        "checkpoint": str(result.checkpoint.path),
        "embedding_cache": str(cache.dir),
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    return summary


def run_distributed_cli(args) -> int:
    """`t2vu train --distributed` (args: config, output, overrides, no_resume)."""
    from pipelines.commands.train import default_output
    from pipelines.config import load_pipeline_config

    cfg = load_pipeline_config(args.config, args.overrides)
    out = Path(args.output) if args.output else default_output("train", args.config)
    d = cfg.distributed
    print(f"Training {cfg.train.steps} steps on {d.num_workers} {'GPU' if d.use_gpu else 'CPU'} worker(s), "
          f"DeepSpeed ZeRO-{d.zero_stage} -> {out} (worker logs: t2vu -v train ...)", file=sys.stderr, flush=True)
    summary = run_distributed(cfg, out, config_dir=Path(args.config).parent, resume=not args.no_resume)
    print(json.dumps({"output": str(out), **summary}, indent=2))
    return 0
