"""Typed configuration of `t2vu attack` (methods x attacks, `eval.attacks.runner`).

    eval        the eval config (path, relative to this file) giving model, generation, classifier, runtime
    words       the concept words (negprompt / safree; never used by ringabell-text's search)
    prompts     CSV: concept prompt, its benign anchor ("normal prompt"), a held-out paraphrase, seed
    preserve    CSV of non-target prompts (prompt, seed): each method's preservation in the same run
    methods     none | eraser | negprompt | safree | blocklist, each with its options (eval.methods)
    attacks     clean | paraphrase | ringabell | ringabell-text | softprompt (one column per softprompt budget)
    ringabell   paired prompts for the concept vector, alpha, the discrete search's budget
    softprompt  budgets (x the concept-anchor embedding distance), steps, lr, x_t pool
    detector    which classifier record field flags the concept, which summary entries are preservation
    mlflow      one parent run per benchmark, a child per method x attack (pipelines.tracking.mlflow_attack)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from eval.config import MethodConfig
from pipelines.config.pipeline import MlflowConfig
from unlearn.config import ConfigError, Strict, apply_overrides, path_component, read_yaml, validate

ATTACKS = ("clean", "paraphrase", "ringabell", "ringabell-text", "softprompt")


class AttackMethodConfig(MethodConfig):
    """One compared method: eval's `method` section (its options: safree, blocklist; `words` default to the
    config's top-level words) plus the result key and, for an eraser, its directory."""

    # none | eraser | negprompt | safree | blocklist (eval.methods)
    name: Literal["none", "eraser", "negprompt", "safree", "blocklist"]
    # the method's key in the results (default: name); two erasers need two labels
    label: str | None = None
    eraser: str | None = None  # eraser directory (method eraser only)

    @model_validator(mode="after")
    def _check(self):
        if (self.name == "eraser") != (self.eraser is not None):
            raise ValueError("eraser: set it (an eraser directory) for name: eraser, and only for it")
        if self.label is not None:
            path_component(self.label, "label")
        return self

    @property
    def key(self) -> str:
        return self.label or self.name

    def method_section(self, words: list[str]) -> dict[str, Any]:
        """The eval config's `method` section for this method (its own words, else `words`)."""
        return {**self.model_dump(mode="json", exclude={"label", "eraser"}), "words": self.words or list(words)}


class AttackPromptsConfig(Strict):
    path: str  # relative to the current directory, else to the config file
    prompt_column: str = "prompt"
    normal_column: str = "normal prompt"
    paraphrase_column: str | None = "paraphrase"
    seed_column: str | None = "seed"
    limit: int | None = Field(None, ge=1)  # first N rows


class PreservePromptsConfig(Strict):
    path: str | None = None
    prompt_column: str = "prompt"
    seed_column: str | None = "seed"
    limit: int | None = Field(None, ge=1)


class RingABellTextConfig(Strict):
    population: int = Field(32, ge=4)
    generations: int = Field(20, ge=0)
    mutation: float = Field(0.15, ge=0.0, le=1.0)
    elite: int = Field(2, ge=1)
    length: int | None = Field(None, ge=1)  # words; null = the benign prompt's word count
    seed: int = 0


class RingABellConfig(Strict):
    pairs: str | None = None  # CSV with prompt / normal prompt columns; null = the prompts file's pairs
    # Strength of the concept vector added to the benign embedding (and the discrete search's target).
    alpha: float = 1.0
    text: RingABellTextConfig = Field(default_factory=RingABellTextConfig)


class SoftPromptConfig(Strict):
    # Bounds on ||delta||, in multiples of ||E(concept prompt) - E(benign prompt)||: one result column each.
    budgets: list[float] = Field(default_factory=lambda: [0.5, 1.0])
    steps: int = Field(100, ge=1)  # Adam steps per prompt pair
    lr: float = Field(0.05, gt=0.0)
    pool_size: int = Field(2, ge=1)  # base-model concept trajectories per prompt (x_t source)
    batch: int = Field(4, ge=1)
    trajectory_steps: int | None = Field(None, ge=1)  # null = generation.num_inference_steps
    seed: int = 0

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v):
        if not v or any(b <= 0 for b in v) or len(set(v)) != len(v):
            raise ValueError("budgets must be distinct positive multiples of the concept-anchor distance, e.g. [0.5, 1.0]")
        return v


class DetectorConfig(Strict):
    flag: str | None = None  # classifier record field (bool); null = by classifier (toy: target_present, nudenet: positive)
    preservation: list[str] = Field(default_factory=list)  # classifier summary entries on the preserve set


class AttackConfig(Strict):
    # The eval config (path, relative to this file first) whose model, generation, classifier and runtime are used.
    eval: str
    # The concept's words: negprompt's negative prompt, SAFREE's concept subspace; ringabell-text never uses them.
    words: list[str]
    # CSV of attacked rows: the concept prompt, its benign anchor (the concept swapped for a neutral word), a
    # held-out paraphrase, a seed.
    prompts: AttackPromptsConfig
    # CSV of non-target prompts (prompt, seed), generated clean by every method: its preservation figures.
    preserve: PreservePromptsConfig = Field(default_factory=PreservePromptsConfig)
    # The methods compared (eval.methods), each attacked by every attack.
    methods: list[AttackMethodConfig]
    # clean / paraphrase: text; ringabell: concept vector on the benign embedding; ringabell-text: genetic search
    # for a text prompt; softprompt: white-box embedding perturbation, one result column per budget.
    attacks: list[Literal["clean", "paraphrase", "ringabell", "ringabell-text", "softprompt"]]
    ringabell: RingABellConfig = Field(default_factory=RingABellConfig)
    softprompt: SoftPromptConfig = Field(default_factory=SoftPromptConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    config_dir: str | None = None

    @model_validator(mode="after")
    def _check(self):
        if not self.words or any(not w.strip() for w in self.words):
            raise ValueError("words must be a non-empty list of the concept's words, e.g. [red]")
        keys = [m.key for m in self.methods]
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"methods: needs at least one, each key (label or name) once; got {keys}")
        if not self.attacks or len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks: needs at least one of {ATTACKS}, each once; got {self.attacks}")
        if "paraphrase" in self.attacks and not self.prompts.paraphrase_column:
            raise ValueError("attacks: paraphrase needs prompts.paraphrase_column")
        return self

    def resolve_path(self, value: str | None) -> Path | None:
        """As given if it exists (or is absolute), else relative to the config file (eval's rule)."""
        from eval.config import resolve_config_path

        return resolve_config_path(value, self.config_dir)

    def attack_names(self) -> list[str]:
        """The result columns: softprompt gives one per budget (softprompt-0.5x, softprompt-1x)."""
        out = []
        for a in self.attacks:
            out += [f"softprompt-{b:g}x" for b in self.softprompt.budgets] if a == "softprompt" else [a]
        return out

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_attack_config(path: str | Path, overrides: list[str] | None = None) -> AttackConfig:
    """Read, apply `--set`, validate (ConfigError naming the file and key)."""
    data = apply_overrides(read_yaml(path), overrides)
    data.setdefault("config_dir", str(Path(path).resolve().parent))
    return validate(AttackConfig, data, str(path))


def load_harness_eval_config(cfg: AttackConfig):
    """The eval config the attack config points at (model, generation, classifier, runtime)."""
    from eval.config import load_eval_config

    path = cfg.resolve_path(cfg.eval)
    if not path.is_file():
        raise ConfigError(f"eval: {cfg.eval} not found (looked at {path}); point it at an eval config, "
                          "e.g. ../eval/toy.yaml")
    return load_eval_config(path)
