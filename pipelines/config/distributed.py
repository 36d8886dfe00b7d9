"""The `distributed` section (Ray Train + DeepSpeed) and what it derives: the DeepSpeed config
each worker passes to `deepspeed.initialize`, the per-worker batch share, and the checks that
would otherwise fail minutes later inside a worker. Functions take the whole
`pipelines.config.pipeline.PipelineConfig` (they read `distributed` and `train`)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.runtime.paths import config_path, project_root
from unlearn.config import ConfigError, Strict, path_component


class DistributedConfig(Strict):
    """Ray Train + DeepSpeed. The same code runs on CPU (gloo) and GPUs (NCCL).

    `train.batch_size` / `train.preserve_batch_size` are the GLOBAL batch: each worker
    takes 1/num_workers of it, so a distributed run follows the same optimisation as a
    single-process run with the same config (and their erasers are interchangeable).
    """

    num_workers: int = Field(2, ge=1, description="Ray Train workers (each takes 1/num_workers of the global batch).")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); false = CPU workers (gloo).")
    resources_per_worker: dict[str, float] | None = Field(None, description=(
        "Ray resources of ONE worker, e.g. {\"CPU\": 1} or {\"CPU\": 8, \"GPU\": 1}. Default: 1 CPU (+1 GPU)."))
    threads_per_worker: int = Field(1, ge=1, description=(
        "torch threads per worker. 1 on a shared CPU box: OpenMP spin barriers collapse under contention."))
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="\"auto\" = nccl with GPUs, gloo on CPU.")
    zero_stage: Literal[2, 3] = Field(2, description=(
        "ZeRO-2 is the default. ZeRO-3 is opt-in: with a frozen backbone plus gradient checkpointing it hits an open "
        "DeepSpeed bug on GPUs (recompute metadata mismatch, DeepSpeed PR #8130), and the eraser is small enough "
        "that sharding it buys little."))
    shard_backbone: bool = Field(False, description=(
        "Partition the frozen transformer over the workers with FSDP2 (unlearn/sharding.py): each keeps 1/num_workers "
        "of the backbone and gathers one block just before it runs. For models whose weights do not fit one GPU next "
        "to the activations (Wan 14B/A14B); the erasers stay whole and train as before. ZeRO-2 only."))
    sequence_parallel: int = Field(1, ge=1, description=(
        "Sequence (context) parallelism: each sample's video tokens split over this many workers (DeepSpeed-Ulysses, "
        "unlearn/sequence_parallel.py). The workers of a group share one batch share (num_workers / sequence_parallel "
        "groups split the global batch), so at the same batch and workers a GPU holds P x the rows at 1/P of the "
        "tokens: the same activations. What it buys is less than one row per worker, the video kept whole (e.g. 2+2 "
        "rows on 4 workers with 2). Must divide num_workers and the model's attention heads. 1 = off."))
    deepspeed_config: str | None = Field(None, description=(
        "A DeepSpeed JSON file; default configs/deepspeed/zero{stage}.json. Batch sizes and gradient clipping are "
        "always filled in from `train` (one source of truth)."))
    deepspeed_overrides: dict[str, Any] = Field(default_factory=dict, description=(
        "Merged over the JSON file (nested dicts merge), e.g. {\"zero_optimization\": {...}}."))
    storage_path: str | None = Field(None, description=(
        "Where Ray Train persists checkpoints. Default: <output>/ray. On a multi-node cluster this MUST be shared "
        "storage (NFS path or s3://...): every worker writes its own shard there."))
    name: str | None = Field(None, description=(
        "Ray Train run name (stable: rerunning the same name resumes from its last checkpoint)."))
    @field_validator("name")
    @classmethod
    def _name_is_not_a_path(cls, v: str | None) -> str | None:
        return None if v is None else path_component(v, "distributed.name")

    max_failures: int = Field(1, ge=-1, description=(
        "Worker-group restarts after a worker dies; training resumes from the last checkpoint."))
    num_to_keep: int = Field(2, ge=1, description="Ray Train checkpoints kept per run (older ones are deleted).")
    start_timeout_s: float | None = Field(1800.0, gt=0, description=(
        "How long the worker group may wait for its Ray resources (CPUs/GPUs that other jobs, trials or leftovers "
        "hold) before the run ends in one line naming what the cluster has free; null = wait for ever (a shared "
        "cluster's queue). Ray Train retries a worker group that cannot start every "
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) for ever, with nothing on the console."))

    @model_validator(mode="after")
    def _sharding_under_zero2(self):
        # ZeRO-3 would wrap the FSDP2-sharded backbone a second time (its own partitioning of what the engine
        # holds); the two together are untested, so refused rather than trusted.
        if self.shard_backbone and self.zero_stage == 3:
            raise ValueError("distributed.shard_backbone needs distributed.zero_stage: 2 (the erasers are small; "
                             "ZeRO-3 on top of the FSDP2-sharded backbone is not supported)")
        return self

    @model_validator(mode="after")
    def _sequence_groups(self):
        if self.num_workers % self.sequence_parallel:
            raise ValueError(f"distributed.sequence_parallel={self.sequence_parallel} must divide distributed.num_workers="
                             f"{self.num_workers} (each group of that many workers shares one batch)")
        if self.sequence_parallel > 1 and self.zero_stage == 3:
            raise ValueError("distributed.sequence_parallel needs distributed.zero_stage: 2 (ZeRO-3 with a sequence-"
                             "split step is not supported)")
        return self

    def data_parallel(self) -> int:
        """Groups that split the global batch: num_workers / sequence_parallel."""
        return self.num_workers // self.sequence_parallel

    def worker_resources(self) -> dict[str, float]:
        if self.resources_per_worker:
            return dict(self.resources_per_worker)
        return {"CPU": 1.0, "GPU": 1.0} if self.use_gpu else {"CPU": 1.0}

    def torch_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.use_gpu else "gloo"


GROUPS = "the sequence-parallel groups (distributed.num_workers / distributed.sequence_parallel)"


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def deepspeed_config(cfg, config_dir: str | Path | None = None) -> dict:
    """The DeepSpeed config a worker passes to `deepspeed.initialize`.

    Batch sizes and clipping come from `train` and `distributed.num_workers` (never from the
    JSON), so the JSON files only choose the ZeRO stage and its tuning knobs.
    """
    d = cfg.distributed
    if d.deepspeed_config:
        path = Path(d.deepspeed_config)
        if not path.is_absolute() and config_dir is not None and not path.exists():
            path = Path(config_dir) / path
        if not path.exists() and (project_root() / d.deepspeed_config).exists():
            path = project_root() / d.deepspeed_config
    else:  # the checkout's configs/, or $T2VU_HOME/configs in the image (pipelines.runtime.paths)
        path = config_path("deepspeed", f"zero{d.zero_stage}.json")
    if not path.is_file():
        where = "" if d.deepspeed_config else (" (an installed package reads configs/ from $T2VU_HOME: set it to the "
                                               "folder holding configs/)")
        raise ConfigError(f"distributed.deepspeed_config: {path} not found{where}")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    ds = {k: v for k, v in ds.items() if not k.startswith("_")}  # "_comment" keys
    ds = deep_merge(ds, d.deepspeed_overrides)
    if d.deepspeed_config is None:
        ds.setdefault("zero_optimization", {})["stage"] = d.zero_stage
    # a sequence-parallel group shares one batch share; DeepSpeed still counts every worker (its averaging over them
    # is undone by unlearn.sequence_parallel's gradient scaling)
    micro = per_worker_batch(cfg.train.batch_size, d.data_parallel(), "train.batch_size",
                             unit=GROUPS if d.sequence_parallel > 1 else "distributed.num_workers")
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = micro * d.num_workers
    if cfg.train.grad_clip:
        ds["gradient_clipping"] = float(cfg.train.grad_clip)
    else:
        ds.pop("gradient_clipping", None)
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(
                f"{path}: '{key}' is set, but the trainer passes a client torch.optim.AdamW "
                "(DeepSpeed's CPU Adam JIT-compiles for ~50 s). Remove it; use train.lr/weight_decay."
            )
    if (ds.get("fp16") or {}).get("enabled") not in (None, False):
        # DeepSpeed's fp16 would cast the fp32 eraser to half under a loss scaler the trainer never
        # exercised, while the single-process trainer has no scaler at all (model.dtype float16 is refused).
        raise ConfigError(f"{path} / distributed.deepspeed_overrides: 'fp16' is enabled, but training here has no "
                          "fp16 loss scaling: remove it and use model.dtype: bfloat16 (the eraser stays fp32)")
    return ds


def per_worker_batch(global_batch: int, workers: int, key: str, allow_zero: bool = False,
                     unit: str = "distributed.num_workers") -> int:
    """Each worker's (with sequence parallelism: each group's, `unit` names it) share of the global batch."""
    if global_batch == 0 and allow_zero:
        return 0
    if global_batch % workers:
        raise ConfigError(
            f"{key}={global_batch} is the global batch and must be divisible by {unit}={workers} "
            f"(each takes an equal share); use e.g. {key}={workers * max(1, round(global_batch / workers))}"
        )
    return global_batch // workers


def check_distributed(cfg, source: str | Path | None = None) -> None:
    """Errors that would otherwise surface minutes later inside a worker."""
    d = cfg.distributed
    groups = GROUPS if d.sequence_parallel > 1 else "distributed.num_workers"
    per_worker_batch(cfg.train.batch_size, d.data_parallel(), "train.batch_size", unit=groups)
    per_worker_batch(cfg.train.preserve_batch_size, d.data_parallel(), "train.preserve_batch_size", allow_zero=True,
                     unit=groups)
    if not d.use_gpu and d.torch_backend() == "nccl":
        raise ConfigError("distributed.backend is 'nccl' but use_gpu is false: NCCL needs GPUs; use gloo/auto")
    if d.zero_stage == 3 and cfg.train.gradient_checkpointing and d.use_gpu:
        logging.getLogger(__name__).warning(
            "ZeRO-3 with train.gradient_checkpointing and a frozen backbone hits an open DeepSpeed bug on GPUs "
            "('Recomputed values ... have different metadata', DeepSpeed PR #8130); use distributed.zero_stage: 2"
        )

