"""The `search` section (Ray Tune): the search space DSL, the algorithm, and the objective each
trial is judged on (an eval config, the summary keys to optimise, a scalarisation for ASHA).
`Constraint` is shared with `run.select` (pipelines.config.pipeline)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from eval.config import EvalMethodConfig
from pipelines.config.objective_attack import ObjectiveAttackConfig
from unlearn.config import Strict, path_component


class MetricSpec(Strict):
    """One objective: a key of the evaluation summary (e.g. `target_rate_erased`)."""

    name: str = Field(description="A key of the evaluation summary, e.g. target_rate_erased.")
    mode: Literal["min", "max"] = Field(description="Whether lower (min) or higher (max) is better.")
    baseline: str | None = Field(None, description=(
        "Key of the same quantity for the base model (eraser disabled), for the baseline row. Default: `name` with a "
        "trailing `_erased` replaced by `_base`; paired metrics have none."))

    def baseline_key(self) -> str | None:
        if self.baseline:
            return self.baseline
        if self.name.endswith("_erased"):
            return self.name[: -len("_erased")] + "_base"
        return None


class Constraint(Strict):
    """A floor/ceiling folded into the scalar objective as a linear penalty."""

    metric: str = Field(description="The eval-summary key the bound applies to.")
    min: float | None = Field(None, description="Floor: values below it are penalised.")
    max: float | None = Field(None, description="Ceiling: values above it are penalised.")
    penalty: float = Field(10.0, ge=0.0, description="Score added per unit of violation.")

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

    name: str = Field("score", description=(
        "Name of the scalar score (the metric ASHA and single-objective searches see)."))
    weights: dict[str, float] = Field(default_factory=dict, description=(
        "Weight of each objective metric in the score (default 1 each)."))
    constraints: list[Constraint] = Field(default_factory=list, description=(
        "Floors and ceilings folded into the score as linear penalties."))
    tie_break: list[MetricSpec] = Field(default_factory=list, description=(
        "Finer eval-summary keys that order trials whose scores tie (a rate over a few videos often ties: 7/8 = "
        "7/8), in order, e.g. [{name: target_target_pixels_erased, mode: min}] (toy) or [{name: "
        "positive_frame_fraction_erased, mode: min}] (NudeNet). Used for the best trial and the report's ranking; "
        "ASHA and Optuna see the score itself."))

    def ranking_key(self, metrics: dict[str, float]) -> tuple[float, ...]:
        """Sort key (ascending = better): the score, then each tie-break (missing = last)."""
        key = [float(metrics.get(self.name, math.inf))]
        for m in self.tie_break:
            v = metrics.get(m.name)
            v = math.inf if not isinstance(v, (int, float)) or not math.isfinite(float(v)) else float(v)
            key.append(v if m.mode == "min" or v == math.inf else -v)
        return tuple(key)


class ProxyEvalConfig(Strict):
    """A cheap evaluation at intermediate reports (what ASHA prunes on)."""

    every: int | None = Field(None, ge=1, description=(
        "Evaluate every N training steps (None: no intermediate eval; only the final one)."))
    limit: int = Field(4, ge=1, description="First N rows of the eval prompt set.")
    overrides: dict[str, Any] = Field(default_factory=dict, description=(
        "Overrides applied to the eval config for the proxy only (dotted keys), e.g. "
        "{\"generation.num_inference_steps\": 4}."))


class ToyPromptsConfig(Strict):
    """Eval prompt CSVs drawn from the toy world (`toyworld.world.eval_rows`), written into
    <output>/eval_prompts/ and set as the eval's `prompts.path` / `preserve.path`."""

    target: str = Field("red", description="The toy colour to erase (the toy classifier is told it).")
    sets: list[str] = Field(
        default_factory=lambda: ["target", "synonym", "two_target", "two_nontarget"],
        description=(
            "Toy eval sets written into the prompts CSV (the target's own sets)."))
    preserve_sets: list[str] = Field(default_factory=lambda: ["nontarget"], description=(
        "Toy eval sets written into the preserve CSV (paired metrics)."))
    n: int = Field(16, ge=1, description="Rows per set.")
    seed: int = Field(0, description="Seed of the drawn rows.")

    @model_validator(mode="after")
    def _check(self) -> "ToyPromptsConfig":
        from toyworld.world import EVAL_SETS

        bad = [s for s in [*self.sets, *self.preserve_sets] if s not in EVAL_SETS]
        if bad:
            raise ValueError(f"unknown toy eval sets {bad}; known: {list(EVAL_SETS)}")
        return self


class BaselineMethod(EvalMethodConfig):
    """A training-free method judged like every trial (`search.objective.baselines`): the objective's
    final eval config with this as its `method` section (eval.config.EvalMethodConfig: words, safree,
    blocklist options) and no eraser, written to <output>/baselines/<label>/ and shown as a row next
    to the base model and the trials in the search report. A bare name is short for {name: NAME}."""

    name: Literal["negprompt", "safree", "blocklist"] = Field(description=(
        "The training-free methods of the eval stage (eval.methods): negprompt, safree or blocklist."))
    label: str | None = Field(None, description=(
        "The row's name and folder (default: name); distinct across baselines."))

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @field_validator("label")
    @classmethod
    def _label_is_a_folder_name(cls, v: str | None) -> str | None:
        return None if v is None else path_component(v, "search.objective.baselines[].label")

    @property
    def key(self) -> str:
        return self.label or self.name

    def eval_overrides(self) -> dict[str, Any]:
        """The eval-config overrides that make this method's videos."""
        return {"method": self.model_dump(mode="json", exclude={"label"}), "eraser": None}


class EvalVariant(Strict):
    """How a stage's eval differs from the eval config it starts from. Defined once: `search.objective` (each
    trial's final eval) and `run` (the pipeline's final eval of the best trial) take the same three keys."""

    eval_overrides: dict[str, Any] = Field(default_factory=dict, description=(
        "Dotted overrides of the eval config, e.g. {prompts.path: data/x.csv, generation.num_frames: 9}."))
    toy_prompts: ToyPromptsConfig | None = Field(None, description=(
        "Draw the eval prompts from the toy world instead of CSV files (written into <output>/eval_prompts/)."))
    limit: int | None = Field(None, ge=1, description="First N rows of each prompt set (null = every row).")


class ObjectiveConfig(EvalVariant):
    """What each trial is judged on: a real evaluation of its eraser.

    eval: a path to an eval config YAML (relative to the search config), an inline eval
          section, or null to use the top-level `eval` section; eval_overrides, toy_prompts
          and limit (EvalVariant) change it for the trials' final evals.
    """

    eval: str | dict[str, Any] | None = Field(None, description=(
        "The eval config judging each trial: a YAML path (relative to this config), an inline section, or null = the "
        "top-level `eval` section."))
    metrics: list[MetricSpec] = Field(min_length=1, description=(
        "The objectives: eval-summary keys, each minimised or maximised."))
    scalarize: ScalarizeConfig = Field(default_factory=ScalarizeConfig, description=(
        "How the objectives fold into one score (ASHA, single-objective searches, ranking)."))
    proxy: ProxyEvalConfig = Field(default_factory=ProxyEvalConfig, description=(
        "A cheap intermediate eval (what ASHA prunes on)."))
    baselines: list[BaselineMethod] = Field(default_factory=list, description=(
        "Training-free methods evaluated once with the final eval config after the trials (same prompts, seeds and "
        "base videos), e.g. [negprompt, safree]: the rows an eraser has to beat."))
    attack: ObjectiveAttackConfig | None = Field(None, description=(
        "A fixed attack on each trial's eraser after its final eval, its ASR merged into the summary as attack_* keys "
        "the metrics may name (robustness as an objective; null = none)."))

    @model_validator(mode="after")
    def _check(self) -> "ObjectiveConfig":
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"objective.metrics has duplicates: {names}")
        keys = [b.key for b in self.baselines]
        if len(set(keys)) != len(keys):
            raise ValueError(f"objective.baselines has duplicate labels {keys}; give each a distinct `label`")
        unknown = sorted(set(self.scalarize.weights) - set(names))
        if unknown:
            raise ValueError(f"objective.scalarize.weights names {unknown}, which are not objective metrics {names}")
        named = [n for n in self.summary_keys() if n.startswith("attack_")]
        if named and self.attack is None:
            raise ValueError(f"objective names attack figures {named} but has no `attack` section: add one (e.g. "
                             "attack: {config: ../attack/toy.yaml, attacks: [softprompt], budgets: [0.5]}) or drop them")
        return self

    def summary_keys(self) -> list[str]:
        """Every eval-summary key the objective reads: its metrics, constraints and tie-breaks."""
        return ([m.name for m in self.metrics] + [c.metric for c in self.scalarize.constraints]
                + [t.name for t in self.scalarize.tie_break])

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
    grace_period: int = Field(1, ge=1, description=(
        "Training steps before ASHA may stop a trial (time_attr = train_step)."))
    reduction_factor: float = Field(2.0, gt=1.0, description=(
        "ASHA keeps 1/reduction_factor of the trials at each rung."))
    brackets: int = Field(1, ge=1, description="ASHA brackets.")


class ScreeningConfig(Strict):
    """Multi-fidelity search (`pipelines.search.screening`): every trial trains and is judged at this reduced
    video size (training steps and eval videos), then only the best `top_k` (by the screened ranking) are
    re-run at the configured size; the search's result ranks those full-size re-runs alone."""

    frames: int = Field(ge=1, description="e.g. 13 (of 49): fewer latent frames per training row and per eval video")
    height: int = Field(ge=8, description="e.g. 256 (of 480)")
    width: int = Field(ge=8, description="e.g. 384 (of 720)")
    top_k: int = Field(ge=1, description="screened trials re-run at full size (<= search.num_samples)")

    @model_validator(mode="after")
    def _check(self) -> "ScreeningConfig":
        if self.height % 8 or self.width % 8:
            raise ValueError(f"search.screening height/width must be multiples of 8 (the VAE's), got {self.height}x{self.width}")
        return self


class SearchConfig(Strict):
    """Ray Tune search over the method config.

    space: dotted config keys -> one DSL mapping each:
        loss.w_unlearn:  {loguniform: [0.1, 10]}
        loss.eta:        {uniform: [1, 7]}
        loss.mask_threshold: {quniform: [0.05, 0.3, 0.05]}
        eraser.rank:     {choice: [4, 8, 16]}
        train.steps:     {int: [20, 60]}          # inclusive bounds
    """

    name: str = Field("search", description=(
        "Search name, stable: the Tune experiment, MLflow parent run and restore key."))
    algorithm: Literal["optuna", "asha", "random"] = Field("optuna", description=(
        "Search algorithm: optuna (TPE), asha (random samples, early stopping) or random."))
    multi_objective: bool = Field(True, description=(
        "optuna: multi-objective over every objective metric (Pareto search, FIFO scheduler); set false for "
        "single-objective TPE on the scalarised score."))
    space: dict[str, dict[str, Any]] = Field(min_length=1, description=(
        "Dotted config keys -> one sampling rule each: uniform, loguniform, quniform, choice, int."))
    objective: ObjectiveConfig = Field(description="What each trial is judged on: a real evaluation of its eraser.")
    num_samples: int = Field(4, ge=1, description="Trials sampled.")
    max_concurrent_trials: int = Field(1, ge=1, description="Trials running at the same time.")
    resources_per_trial: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0}, description=(
        "Ray resources held by each trial's driver (it only waits on its TorchTrainer). A one-worker trial trains in "
        "this actor instead, which then holds the worker's resources too (per resource the larger). Must not be "
        "empty/zero: Tune rejects a trial with an empty head bundle."))
    asha: AshaConfig = Field(default_factory=AshaConfig, description="ASHA's settings (algorithm: asha).")
    seed: int = Field(0, description="Seed of the search algorithm's sampler.")
    max_failures: int = Field(1, ge=0, description=(
        "Trial-level retries (a dead trial driver; a one-worker trial, which trains in it, resumes from its "
        "checkpoint); worker-level retries are distributed.max_failures."))
    top_k: int = Field(3, ge=1, description="Trials ranked in the report's learning-curve plot.")
    screening: ScreeningConfig | None = Field(None, description=(
        "Screen every trial at reduced frames/resolution, re-run the best k at full size (None: off)."))

    @model_validator(mode="after")
    def _screening_fits(self) -> "SearchConfig":
        if self.screening and self.screening.top_k > self.num_samples:
            raise ValueError(f"search.screening.top_k {self.screening.top_k} > search.num_samples {self.num_samples}: "
                             f"at most every screened trial can be re-run")
        return self

    @field_validator("name")
    @classmethod
    def _name_is_not_a_path(cls, v: str) -> str:
        return path_component(v, "search.name")

    @field_validator("space")
    @classmethod
    def _check_space(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from pipelines.search.space import check_param

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

    def proxy_every(self) -> int | None:
        """Training steps between proxy evals, or None: proxies run only where a scheduler reads them.

        ASHA (single scalarised objective) stops trials on them. Optuna and random run under a FIFO
        scheduler that never acts on intermediate results (Ray's OptunaSearch drops them outright for a
        list of metrics), so a proxy there would only cost its eval (T5 + VAE loaded on rank 0, a few
        videos, every other rank waiting): the trial is judged by its final eval alone."""
        if self.algorithm != "asha":
            return None
        return self.objective.proxy.every or self.asha.grace_period  # ASHA needs a score at its rungs

    def proxy_skip_note(self) -> str | None:
        """The search banner's line when configured proxy evals are skipped (None when nothing is)."""
        every = self.objective.proxy.every
        if not every or self.proxy_every():
            return None
        sched = "multi-objective Optuna" if self.is_multi_objective() else self.algorithm
        return (f"proxy evals skipped: search.objective.proxy.every={every} is read only by ASHA; {sched} with a FIFO "
                f"scheduler never acts on intermediate results, so each trial is judged by its final eval alone")

