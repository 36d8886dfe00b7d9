"""Pipeline-level configuration: the method sections plus how to run them.

One YAML file, one typed schema (`PipelineConfig`): the method sections of
`unlearn.config.EraserTrainingConfig` (model, eraser, concept, loss, train) plus

  distributed  Ray Train + DeepSpeed: workers, GPUs, ZeRO stage, storage, failures
  search       Ray Tune: the search space (a small YAML DSL), algorithm, objective
  mlflow       tracking URI (default: SQLite file in the run folder) and experiment
  eval         the evaluation stage's own section (`eval.config.EvalConfig`)

Everything is validated before Ray starts or a model loads; unknown keys fail
with the key path named. Sampled search configs are re-validated against the
same schema inside each trial (`PipelineConfig.with_overrides`).

The sections live next to what they configure: `pipelines.config.distributed` (and the
DeepSpeed config it derives), `pipelines.config.search` (space, algorithm, objective).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from eval.config import EvalConfig
from pipelines.config.distributed import DistributedConfig
from pipelines.config.objective_attack import ObjectiveAttackConfig
from pipelines.config.search import Constraint, EvalVariant, SearchConfig
from unlearn.config import EraserTrainingConfig, Strict, apply_overrides, read_renamed_keys, read_yaml, validate

METHOD_SECTIONS = ("model", "eraser", "concept", "loss", "train", "gate", "bank")


class MlflowConfig(Strict):
    enabled: bool = Field(True, description="Log to MLflow.")
    tracking_uri: str | None = Field(None, description=(
        "Default: sqlite:///<output>/mlflow.db (MLflow >= 3.13 refuses plain file stores). Any http(s):// tracking "
        "server works the same."))
    experiment: str | None = Field(None, description="Default: \"t2vu/<search.name>\" (one experiment per study).")
    log_artifacts: bool = Field(True, description="Log run files (reports, plots, erasers' configs) as artifacts.")

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

    metric: str | None = Field(None, description=(
        "Eval-summary key that picks the best trial; null = the search's scalar score (lowest wins)."))
    mode: Literal["min", "max"] = Field("min", description="Whether the lowest (min) or highest (max) metric wins.")
    constraints: list[Constraint] = Field(default_factory=list, description=(
        "Floors/ceilings a trial must meet to be picked, e.g. nontarget_acc_erased >= 0.95."))


class PipelineRunConfig(EvalVariant):
    """The `run:` section (`t2vu run` only): the selection rule, and how the final eval of the chosen trial
    differs from the eval config (eval_overrides, toy_prompts, limit: the keys `search.objective` has)."""

    select: SelectConfig = Field(default_factory=SelectConfig, description=(
        "How the trial that gets the full evaluation is picked."))
    attack: ObjectiveAttackConfig | None = Field(None, description=(
        "Attack the chosen eraser after its final eval (stage 5, into <output>/attack, resumed row by row; figures "
        "in summary.json's `attack` and report.md): the keys of search.objective.attack, but meant as the robustness "
        "claim: leave steps/restarts null for the attack config's own (evaluation) strength and raise limit. Uses "
        "the final eval's config (model, generation, classifier)."))


# Keys renamed when two knobs became one (read for one release with a warning, then unknown keys).
RENAMED = {
    "distributed.checkpoint_every": "train.checkpoint_every",  # one cadence for single-process and distributed
    "run.eval_limit": "run.limit",  # the name search.objective.limit has (both are EvalVariant)
}
# distributed.checkpoint_every overrode train.checkpoint_every in every distributed run and Tune trial: a file
# setting both keeps the cadence its distributed runs had (a checkpoint cadence changes no result).
OVERRIDING = ("distributed.checkpoint_every",)


class PipelineConfig(EraserTrainingConfig):
    """Method sections + distributed + search + mlflow + eval, one schema."""

    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description=(
        "Ray Train + DeepSpeed: workers, GPUs, ZeRO stage, storage, failures."))
    search: SearchConfig | None = Field(None, description=(
        "Ray Tune: the search space, algorithm and objective (t2vu tune, t2vu run)."))
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description="MLflow tracking URI and experiment.")
    eval: EvalConfig | None = Field(None, description="The evaluation stage's own section (an eval config).")
    run: PipelineRunConfig | None = Field(None, description=(
        "The `t2vu run` section: selection rule and final-eval settings."))

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data):
        return read_renamed_keys(data, RENAMED, logging.getLogger("t2vu.config").warning, OVERRIDING)

    @model_validator(mode="after")
    def _sharded_backbone_without_rank0_evals(self):
        # A proxy eval runs the backbone on rank 0 alone; with a sharded backbone every forward is a collective,
        # so the other ranks would wait in it forever.
        if self.distributed.shard_backbone and self.search is not None and self.search.proxy_every():
            raise ValueError("distributed.shard_backbone runs every forward on all workers, but search proxy evals "
                             "run on rank 0 alone: set search.objective.proxy.every: 0 (and no ASHA scheduler) or "
                             "distributed.shard_backbone: false")
        if self.distributed.sequence_parallel > 1 and self.search is not None and self.search.proxy_every():
            raise ValueError("distributed.sequence_parallel splits every forward over a group of workers, but search "
                             "proxy evals run on rank 0 alone: set search.objective.proxy.every: 0 (and no ASHA "
                             "scheduler) or distributed.sequence_parallel: 1")
        return self

    def method(self) -> EraserTrainingConfig:
        """The method sections alone (what a training session / eraser digest sees)."""
        return EraserTrainingConfig.model_validate(self.model_dump(include=set(METHOD_SECTIONS), mode="json"))

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
