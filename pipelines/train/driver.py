"""Eraser training under Ray Train (V2) + DeepSpeed ZeRO, the driver side: `t2vu train --distributed`.

This module builds the `TorchTrainer` (also used by each Tune trial) and runs it; the
per-worker loop is `pipelines.train.worker`, checkpoints and the export of the final one are
`pipelines.train.checkpoints`. The same code runs on CPU with gloo (`DS_ACCELERATOR=cpu`) and on
GPUs with NCCL.

    driver                          worker r (of W)
    ------                          ---------------
    prepare_embeddings()            TrainingSession(batch = global / W, rank r)
    TorchTrainer.fit() ───────────► unlearn.loop.TrainingLoop with
                                      DeepSpeedEngine (ZeRO-2/3, client AdamW)      pipelines.train.engine
                                      RayCheckpointStore                            pipelines.train.checkpoints
                                    resume: ray.train.get_checkpoint() -> weights, step, curve, engine state
                                    every checkpoint_every: EVERY rank saves (collective), rank 0 adds
                                      eraser/ (gathered under ZeRO-3), state, metrics -> ray.train.report
    export eraser/ + metrics ◄───── final report
      from the final checkpoint

The loop and the checkpoint layout are the single-process trainer's (`unlearn.loop`, `unlearn.checkpoint`).

Output folder (same layout as the single-process trainer, so erasers are interchangeable):
  config.yaml, metrics.jsonl, eraser/ (eraser.safetensors + eraser_config.json), summary.json,
  ray/ (Ray Train storage: checkpoints; must be shared storage on a multi-node cluster).

Fault tolerance: `FailureConfig(max_failures)` restarts a dead worker group and the
workers resume from the last reported checkpoint; rerunning the same command after
the driver died resumes too (stable run name + storage path).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipelines.train.checkpoints import check_resumable, export_result
from pipelines.config.pipeline import PipelineConfig
from pipelines.config.distributed import check_distributed, deepspeed_config
from pipelines.runtime.ray_session import (check_worker_group_fits, cpus_needed, ensure_ray, fit_trainer,
                                           start_retries, worker_group_deadline)
from pipelines.runtime.run_folder import remove_owned
from pipelines.train.worker import LoopConfig, load_step_hook, train_loop_per_worker
from unlearn import checkpoint as ck
from unlearn.checkpoint import ERASER_DIR
from unlearn.config import ConfigError
from unlearn.loop import StepHook

if TYPE_CHECKING:  # search drives train: the type only, for the reader
    from pipelines.search.objective import ObjectivePayload


def make_trainer(
    cfg: PipelineConfig,
    *,
    name: str,
    storage_path: str | Path,
    config_dir: str | Path | None = None,
    callbacks: list | None = None,
    objective: ObjectivePayload | None = None,
    step_hook: StepHook | None = None,
    resume_from: Path | None = None,
):
    """A `TorchTrainer` for one eraser training (used by `run_distributed` and by each Tune trial).

    `name` + `storage_path` identify the run: reusing them resumes from its last checkpoint.
    `objective`: a Tune trial's, bound to it (proxy evals; its MLflow run gets the live training curve).
    `step_hook`: called in every worker after every step; for tests (fault injection).
    `resume_from`: a checkpoint folder to start from when the run has none of its own (a `t2vu train` run
    continued with `--distributed`).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    check_distributed(cfg)
    d = cfg.distributed
    check_resumable(Path(storage_path) / name)  # an earlier checkpoint layout: one line now, not N tracebacks
    loop_config = LoopConfig(
        config=cfg,
        config_dir=str(Path(config_dir).resolve()) if config_dir else None,
        ds_config=deepspeed_config(cfg, config_dir),
        threads=d.threads_per_worker,
        checkpoint_every=cfg.train.checkpoint_every,
        objective=objective,
        step_hook=load_step_hook(step_hook),
        resume_from=str(resume_from) if resume_from else None,  # not Ray's resume_from_checkpoint: deprecated
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop_config},  # Ray takes a dict; the one value is the typed LoopConfig
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu, resources_per_worker=d.worker_resources()),
        torch_config=TorchConfig(backend=d.torch_backend()),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            # a worker group that cannot get its resources: retried for distributed.start_timeout_s, then one line
            failure_config=FailureConfig(max_failures=d.max_failures,
                                         controller_failure_limit=start_retries(d.start_timeout_s)),
            checkpoint_config=CheckpointConfig(num_to_keep=d.num_to_keep),
            callbacks=list(callbacks or []),
        ),
    )


def run_distributed(
    cfg: PipelineConfig,
    output: str | Path,
    *,
    config_dir: str | Path | None = None,
    resume: bool = True,
    step_hook: StepHook | None = None,
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
        remove_owned(storage / name, storage)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    t0 = time.time()
    ensure_ray(num_cpus=cpus_needed(cfg))
    check_worker_group_fits(cfg)  # else Ray Train waits for ever for workers the cluster cannot hold
    cache = prepare_embeddings(cfg.method(), config_dir)  # driver-side: workers never load T5
    trainer = make_trainer(cfg, name=name, storage_path=storage, config_dir=config_dir, step_hook=step_hook,
                           resume_from=_single_process_checkpoint(out, storage / name) if resume else None)
    with worker_group_deadline(cfg):
        result = fit_trainer(trainer)  # Ctrl-C: exit 130, resumable (not Ray's silent exit 1)
    state = export_result(result, out)
    from pipelines.train.post_training import post_training

    finished = post_training(cfg, out, config_dir)  # `bank:` rounds, then the `gate:` probe, on the published eraser
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
        "shard_backbone": rv.get("shard_backbone", False),
        "sequence_parallel": rv.get("sequence_parallel", 1),
        "backbone_resident_bytes": rv.get("backbone_resident_bytes"),  # rank 0's, read from its tensors
        "backbone_loaded_in_shards": rv.get("backbone_loaded_in_shards", False),  # unlearn.sharded_load
        "steps_per_s_steady": rv.get("steps_per_s_steady"),
        "ms_per_step": rv.get("ms_per_step"),
        "wall_s": round(time.time() - t0, 3),
        "eraser": str(out / ERASER_DIR),
        "checkpoint": str(result.checkpoint.path),
        "embedding_cache": str(cache.dir),
        **finished,
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    return summary


def _single_process_checkpoint(out: Path, run_dir: Path) -> Path | None:
    """The checkpoint a stopped `t2vu train` left in `out` (same layout, `unlearn.checkpoint`), when the Ray
    run has none of its own: `--distributed` continues it (weights, step and curve; the optimizer state starts
    fresh, as the engine differs) instead of silently starting again from step 0."""
    local = out / ck.CHECKPOINT_DIR
    if any(run_dir.glob("checkpoint_*")) or not (local / "state.json").exists():
        return None
    ck.read_state(local)  # an earlier layout: one line now, not a traceback per worker
    return local
