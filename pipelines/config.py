"""Pipeline-level configuration: the method sections plus how to run them.

One YAML file, one typed schema (`PipelineConfig`): the method sections of
`unlearn.config.MethodConfig` (model, eraser, concept, loss, train) plus

  distributed  Ray Train + DeepSpeed: workers, GPUs, ZeRO stage, storage, failures
  search       Ray Tune: the search space (a small YAML DSL), algorithm, objective
  mlflow       tracking URI (default: SQLite file in the run folder) and experiment
  eval         the evaluation stage's own section (`eval.config.EvalConfig`)

Everything is validated before Ray starts or a model loads; unknown keys fail
with the key path named. Sampled search configs are re-validated against the
same schema inside each trial (`PipelineConfig.with_overrides`).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from unlearn.config import ConfigError, MethodConfig, Strict, apply_overrides, read_yaml, validate

try:  # the evaluation stage owns its schema; until it exists the section is an untyped mapping
    from eval.config import EvalConfig as _EvalConfig  # type: ignore

    HAVE_EVAL_CONFIG = True
except ImportError:  # pragma: no cover - depends on which stages are installed
    _EvalConfig = None
    HAVE_EVAL_CONFIG = False

EvalSection = _EvalConfig if _EvalConfig is not None else dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEEPSPEED_CONFIG_DIR = REPO_ROOT / "configs" / "deepspeed"
METHOD_SECTIONS = ("model", "eraser", "concept", "loss", "train")


# --- distributed ---------------------------------------------------------------------------------

class DistributedConfig(Strict):
    """Ray Train + DeepSpeed. The same code runs on CPU (gloo) and GPUs (NCCL).

    `train.batch_size` / `train.preserve_batch_size` are the GLOBAL batch: each worker
    takes 1/num_workers of it, so a distributed run follows the same optimisation as a
    single-process run with the same config (and their erasers are interchangeable).
    """

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    # Ray resources of ONE worker, e.g. {"CPU": 1} or {"CPU": 8, "GPU": 1}. Default: 1 CPU (+1 GPU).
    resources_per_worker: dict[str, float] | None = None
    # torch threads per worker. 1 on a shared CPU box: OpenMP spin barriers collapse under contention.
    threads_per_worker: int = Field(1, ge=1)
    # "auto" = nccl with GPUs, gloo on CPU.
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # ZeRO-2 is the default. ZeRO-3 is opt-in: with a frozen backbone plus gradient
    # checkpointing it hits an open DeepSpeed bug on GPUs (recompute metadata mismatch,
    # DeepSpeed PR #8130), and the eraser is small enough that sharding it buys little.
    zero_stage: Literal[2, 3] = 2
    # A DeepSpeed JSON file; default configs/deepspeed/zero{stage}.json. Batch sizes and
    # gradient clipping are always filled in from `train` (one source of truth).
    deepspeed_config: str | None = None
    # Merged over the JSON file (nested dicts merge), e.g. {"zero_optimization": {...}}.
    deepspeed_overrides: dict[str, Any] = Field(default_factory=dict)
    # Where Ray Train persists checkpoints. Default: <output>/ray. On a multi-node cluster this
    # MUST be shared storage (NFS path or s3://...): every worker writes its own shard there.
    storage_path: str | None = None
    # Ray Train run name (stable: rerunning the same name resumes from its last checkpoint).
    name: str | None = None
    # Worker-group restarts after a worker dies; training resumes from the last checkpoint.
    max_failures: int = Field(1, ge=-1)
    # Steps between checkpoints; default train.checkpoint_every. Every rank saves (collective).
    checkpoint_every: int | None = Field(None, ge=1)
    num_to_keep: int = Field(2, ge=1)

    def worker_resources(self) -> dict[str, float]:
        if self.resources_per_worker:
            return dict(self.resources_per_worker)
        return {"CPU": 1.0, "GPU": 1.0} if self.use_gpu else {"CPU": 1.0}

    def torch_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.use_gpu else "gloo"


# --- search --------------------------------------------------------------------------------------

SPACE_KINDS = ("loguniform", "uniform", "quniform", "int", "choice")


class MetricSpec(Strict):
    """One objective: a key of the evaluation summary (e.g. `target_rate_erased`)."""

    name: str
    mode: Literal["min", "max"]
    # Key of the same quantity for the base model (eraser disabled), for the baseline row.
    # Default: `name` with a trailing `_erased` replaced by `_base`; paired metrics have none.
    baseline: str | None = None

    def baseline_key(self) -> str | None:
        if self.baseline:
            return self.baseline
        if self.name.endswith("_erased"):
            return self.name[: -len("_erased")] + "_base"
        return None


class Constraint(Strict):
    """A floor/ceiling folded into the scalar objective as a linear penalty."""

    metric: str
    min: float | None = None
    max: float | None = None
    penalty: float = Field(10.0, ge=0.0)

    @model_validator(mode="after")
    def _one_bound(self) -> "Constraint":
        if self.min is None and self.max is None:
            raise ValueError(f"constraint on {self.metric!r} needs `min` or `max`")
        return self


class ScalarizeConfig(Strict):
    """Single number for ASHA / single-objective searches, always minimised:

        score = sum_i w_i * (+m_i if mode_i == min else -m_i) + sum_c penalty_c * violation_c

    Weights default to 1 for every objective metric.
    """

    name: str = "score"
    weights: dict[str, float] = Field(default_factory=dict)
    constraints: list[Constraint] = Field(default_factory=list)


class ProxyEvalConfig(Strict):
    """A cheap evaluation at intermediate reports (what ASHA prunes on)."""

    # Evaluate every N training steps (None: no intermediate eval; only the final one).
    every: int | None = Field(None, ge=1)
    # First N rows of the eval prompt set.
    limit: int = Field(4, ge=1)
    # Overrides applied to the eval config for the proxy only (dotted keys), e.g.
    # {"generation.num_inference_steps": 4}.
    overrides: dict[str, Any] = Field(default_factory=dict)


class ToyPromptsConfig(Strict):
    """Eval prompt CSVs drawn from the toy world (`unlearn.toy.world.eval_rows`), written into
    <output>/eval_prompts/ and set as the eval's `prompts.path` / `preserve.path`."""

    target: str = "red"
    # Sets in the prompts CSV (the target's own sets) and in the preserve CSV (paired metrics).
    sets: list[str] = Field(default_factory=lambda: ["target", "synonym", "two_target", "two_nontarget"])
    preserve_sets: list[str] = Field(default_factory=lambda: ["nontarget"])
    n: int = Field(16, ge=1)  # rows per set
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "ToyPromptsConfig":
        from unlearn.toy.world import EVAL_SETS

        bad = [s for s in [*self.sets, *self.preserve_sets] if s not in EVAL_SETS]
        if bad:
            raise ValueError(f"unknown toy eval sets {bad}; known: {list(EVAL_SETS)}")
        return self


class ObjectiveConfig(Strict):
    """What each trial is judged on: a real evaluation of its eraser.

    eval: a path to an eval config YAML (relative to the search config), an inline eval
          section, or null to use the top-level `eval` section.
    toy_prompts: draw the eval prompts from the toy world instead of CSV files.
    """

    eval: str | dict[str, Any] | None = None
    # Dotted overrides applied to that eval config, e.g. {prompts.path: data/x.csv, generation.num_frames: 9}.
    eval_overrides: dict[str, Any] = Field(default_factory=dict)
    toy_prompts: ToyPromptsConfig | None = None
    metrics: list[MetricSpec] = Field(min_length=1)
    scalarize: ScalarizeConfig = Field(default_factory=ScalarizeConfig)
    proxy: ProxyEvalConfig = Field(default_factory=ProxyEvalConfig)
    # Rows of the final eval (None = the whole prompt set).
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "ObjectiveConfig":
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"objective.metrics has duplicates: {names}")
        unknown = sorted(set(self.scalarize.weights) - set(names))
        if unknown:
            raise ValueError(f"objective.scalarize.weights names {unknown}, which are not objective metrics {names}")
        return self

    def scalar(self, metrics: dict[str, float]) -> float:
        """The scalarised objective (lower is better); NaN if a metric is missing."""
        total = 0.0
        for m in self.metrics:
            v = metrics.get(m.name)
            if v is None or not _finite(v):
                return float("nan")
            w = self.scalarize.weights.get(m.name, 1.0)
            total += w * (float(v) if m.mode == "min" else -float(v))
        for c in self.scalarize.constraints:
            v = metrics.get(c.metric)
            if v is None or not _finite(v):
                return float("nan")
            v = float(v)
            if c.min is not None and v < c.min:
                total += c.penalty * (c.min - v)
            if c.max is not None and v > c.max:
                total += c.penalty * (v - c.max)
        return total


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class AshaConfig(Strict):
    grace_period: int = Field(1, ge=1)  # in training steps (time_attr = train_step)
    reduction_factor: float = Field(2.0, gt=1.0)
    brackets: int = Field(1, ge=1)


class SearchConfig(Strict):
    """Ray Tune search over the method config.

    space: dotted config keys -> one DSL mapping each:
        loss.w_unlearn:  {loguniform: [0.1, 10]}
        loss.eta:        {uniform: [1, 7]}
        loss.mask_threshold: {quniform: [0.05, 0.3, 0.05]}
        eraser.rank:     {choice: [4, 8, 16]}
        train.steps:     {int: [20, 60]}          # inclusive bounds
    """

    name: str = "search"  # stable: the Tune experiment, MLflow parent run and restore key
    algorithm: Literal["optuna", "asha", "random"] = "optuna"
    # optuna: multi-objective over every objective metric (Pareto search, FIFO scheduler);
    # set false for single-objective TPE on the scalarised score.
    multi_objective: bool = True
    space: dict[str, dict[str, Any]] = Field(min_length=1)
    objective: ObjectiveConfig
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    # Ray resources held by each trial's driver (it only waits on its TorchTrainer).
    # Must not be empty/zero: Tune rejects a trial with an empty head bundle.
    resources_per_trial: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    asha: AshaConfig = Field(default_factory=AshaConfig)
    seed: int = 0
    # Trial-level retries (a dead trial driver); worker-level retries are distributed.max_failures.
    max_failures: int = Field(1, ge=0)
    # Trials ranked in the report's learning-curve plot.
    top_k: int = Field(3, ge=1)

    @field_validator("space")
    @classmethod
    def _check_space(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from pipelines.search_space import check_param

        for key, spec in space.items():
            check_param(key, spec)
        return space

    @field_validator("resources_per_trial")
    @classmethod
    def _check_resources(cls, res: dict[str, float]) -> dict[str, float]:
        if not res or not any(v > 0 for v in res.values()):
            raise ValueError(
                "resources_per_trial must reserve something (e.g. {CPU: 1}): Ray Tune rejects an empty "
                "head bundle. On a 2-core machine start Ray with num_cpus=3 (1 trial driver + 2 workers)."
            )
        return res

    def metric_names(self) -> list[str]:
        return [m.name for m in self.objective.metrics]

    def is_multi_objective(self) -> bool:
        return self.algorithm == "optuna" and self.multi_objective and len(self.objective.metrics) > 1


# --- mlflow --------------------------------------------------------------------------------------

class MlflowConfig(Strict):
    enabled: bool = True
    # Default: sqlite:///<output>/mlflow.db (MLflow >= 3.13 refuses plain file stores).
    # Any http(s):// tracking server works the same.
    tracking_uri: str | None = None
    # Default: "t2vu/<search.name>" (one experiment per study).
    experiment: str | None = None
    log_artifacts: bool = True

    def resolve_uri(self, output_dir: str | Path) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(Path(output_dir).resolve() / 'mlflow.db')}"


# --- t2vu run -------------------------------------------------------------------------------------

class SelectConfig(Strict):
    """How `t2vu run` picks the trial that gets the full evaluation.

    Default (metric None): the search's scalarised score, lowest wins. Otherwise the best
    `metric` in `mode` among trials meeting every constraint, e.g. lowest
    `target_rate_erased` subject to `nontarget_acc_erased >= 0.95` (a preservation floor).
    """

    metric: str | None = None
    mode: Literal["min", "max"] = "min"
    constraints: list[Constraint] = Field(default_factory=list)


class RunConfig(Strict):
    select: SelectConfig = Field(default_factory=SelectConfig)
    # Rows of each prompt set in the final eval (None = all rows).
    eval_limit: int | None = Field(None, ge=1)
    # Final-eval prompt CSVs drawn from the toy world (written into <output>/eval_prompts/).
    toy_prompts: ToyPromptsConfig | None = None
    # Dotted overrides of the final eval config, e.g. {"output.grid_rows": 8}.
    eval_overrides: dict[str, Any] = Field(default_factory=dict)


# --- the whole file ------------------------------------------------------------------------------

class PipelineConfig(MethodConfig):
    """Method sections + distributed + search + mlflow + eval, one schema."""

    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    search: SearchConfig | None = None
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    eval: EvalSection | None = None  # type: ignore[valid-type]
    run: RunConfig | None = None  # `t2vu run` only

    def method(self) -> MethodConfig:
        """The method sections alone (what a training session / eraser digest sees)."""
        return MethodConfig.model_validate(self.model_dump(include=set(METHOD_SECTIONS), mode="json"))

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_none=False)

    def with_overrides(self, overrides: dict[str, Any], source: str = "<overrides>") -> "PipelineConfig":
        """A copy with dotted keys set, re-validated by the full schema (raises ConfigError)."""
        data = apply_overrides(copy.deepcopy(self.to_dict()), overrides)
        return validate(PipelineConfig, data, source)


def load_pipeline_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML file, apply `--set key=value` overrides, validate."""
    data = apply_overrides(read_yaml(path), overrides)
    return validate(PipelineConfig, data, str(path))


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def deepspeed_config(cfg: PipelineConfig, config_dir: str | Path | None = None) -> dict:
    """The DeepSpeed config a worker passes to `deepspeed.initialize`.

    Batch sizes and clipping come from `train` and `distributed.num_workers` (never from the
    JSON), so the JSON files only choose the ZeRO stage and its tuning knobs.
    """
    d = cfg.distributed
    if d.deepspeed_config:
        path = Path(d.deepspeed_config)
        if not path.is_absolute() and config_dir is not None and not path.exists():
            path = Path(config_dir) / path
        if not path.exists() and (REPO_ROOT / d.deepspeed_config).exists():
            path = REPO_ROOT / d.deepspeed_config
    else:
        path = DEEPSPEED_CONFIG_DIR / f"zero{d.zero_stage}.json"
    if not path.is_file():
        raise ConfigError(f"distributed.deepspeed_config: {path} not found")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    ds = {k: v for k, v in ds.items() if not k.startswith("_")}  # "_comment" keys
    ds = deep_merge(ds, d.deepspeed_overrides)
    if d.deepspeed_config is None:
        ds.setdefault("zero_optimization", {})["stage"] = d.zero_stage
    micro = per_worker_batch(cfg.train.batch_size, d.num_workers, "train.batch_size")
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
    return ds


def per_worker_batch(global_batch: int, workers: int, key: str, allow_zero: bool = False) -> int:
    if global_batch == 0 and allow_zero:
        return 0
    if global_batch % workers:
        raise ConfigError(
            f"{key}={global_batch} is the global batch and must be divisible by distributed.num_workers={workers} "
            f"(each worker takes an equal share); use e.g. {key}={workers * max(1, round(global_batch / workers))}"
        )
    return global_batch // workers


def check_distributed(cfg: PipelineConfig) -> None:
    """Errors that would otherwise surface minutes later inside a worker."""
    d = cfg.distributed
    per_worker_batch(cfg.train.batch_size, d.num_workers, "train.batch_size")
    per_worker_batch(cfg.train.preserve_batch_size, d.num_workers, "train.preserve_batch_size", allow_zero=True)
    if not d.use_gpu and d.torch_backend() == "nccl":
        raise ConfigError("distributed.backend is 'nccl' but use_gpu is false: NCCL needs GPUs; use gloo/auto")
    if d.zero_stage == 3 and cfg.train.gradient_checkpointing and d.use_gpu:
        import logging

        logging.getLogger(__name__).warning(
            "ZeRO-3 with train.gradient_checkpointing and a frozen backbone hits an open DeepSpeed bug on GPUs "
            "('Recomputed values ... have different metadata', DeepSpeed PR #8130); use distributed.zero_stage: 2"
        )

