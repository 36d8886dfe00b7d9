"""Typed configuration of `t2vu attack` (methods x attacks, `eval.attacks.runner`).

    eval        the eval config (path, relative to this file) giving model, generation, classifier, runtime
    words       the concept words (negprompt / safree; never used by ringabell-text's search)
    prompts     CSV: concept prompt, its benign anchor ("normal prompt"), a held-out paraphrase, seed
    preserve    CSV of non-target prompts (prompt, seed): each method's preservation in the same run
    methods     none | eraser | negprompt | safree | blocklist, each with its options (eval.methods); an eraser
                may get a content gate (`gate:`, unlearn.gates), attacked through it
    attacks     clean | paraphrase | ringabell | ringabell-text | softprompt | softprompt-subspace | inversion |
                discrete
    ringabell   paired prompts for the concept vector, alpha, the discrete search's budget
    softprompt  budgets (x the concept-anchor embedding distance), steps, restarts, lr, x_t pool
    inversion   pseudo-token inversion: tokens, steps, restarts, lr
    discrete    white-box word substitution: words, steps, candidates
    transfer    saved attack sets (another run's attacks/<attack>/<victim>) replayed against every method
    detector    which classifier record field flags the concept, which summary entries are preservation
    mlflow      one parent run per benchmark, a child per method x attack (pipelines.tracking.mlflow_attack)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from eval.config import EvalMethodConfig
from pipelines.config.pipeline import MlflowConfig
from unlearn.config import ConfigError, Strict, apply_overrides, path_component, read_yaml, validate
from unlearn.gate_config import GateConfig

ATTACKS = ("clean", "paraphrase", "ringabell", "ringabell-text", "softprompt", "softprompt-subspace", "inversion",
           "discrete")
# Evaluation strength (issue 25): a weaker attack overstates robustness; below it the report says so.
EVAL_STEPS, EVAL_RESTARTS = 180, 2


class AttackMethodConfig(EvalMethodConfig):
    """One compared method: eval's `method` section (its options: safree, blocklist; `words` default to the
    config's top-level words) plus the result key and, for an eraser, its directory."""

    name: Literal["none", "eraser", "negprompt", "safree", "blocklist"] = Field(description=(
        "The method: none, eraser, negprompt, safree or blocklist (eval.methods)."))
    label: str | None = Field(None, description=(
        "The method's key in the results (default: name); two erasers need two labels."))
    eraser: str | None = Field(None, description="Eraser directory (name: eraser only).")
    gate: GateConfig | str | None = Field(None, description=(
        "A content gate put on this eraser before it is attacked (unlearn.gates, issue 25): a `gate:` section with "
        "its prompts listed, or the path of a YAML file holding one (configs/gates/toy.yaml; relative to the "
        "current directory, else to this file). Its probe is trained on the base model once per output "
        "(<output>/gates/<label>; other strength/threshold/sharpness reuse it) and every white-box attack "
        "optimises through it. null = the eraser file as it is (a file trained with a `gate:` key keeps its own)."))

    @model_validator(mode="after")
    def _check(self):
        if (self.name == "eraser") != (self.eraser is not None):
            raise ValueError("eraser: set it (an eraser directory) for name: eraser, and only for it")
        if self.gate is not None and self.name != "eraser":
            raise ValueError("gate: a gate is put on an eraser; set it for name: eraser only")
        if isinstance(self.gate, GateConfig) and self.gate.missing():
            raise ValueError(f"gate: {', '.join(self.gate.missing())} must be listed in an attack config (no concept "
                             "section to default to)")
        if self.label is not None:
            path_component(self.label, "label")
        return self

    @property
    def key(self) -> str:
        return self.label or self.name

    def method_section(self, words: list[str]) -> dict[str, Any]:
        """The eval config's `method` section for this method (its own words, else `words`)."""
        return {**self.model_dump(mode="json", exclude={"label", "eraser", "gate"}), "words": self.words or list(words)}


class AttackPromptsConfig(Strict):
    path: str = Field(description="The CSV file, relative to the current directory, else to the config file.")
    prompt_column: str = Field("prompt", description="The column of the concept prompts.")
    normal_column: str = Field("normal prompt", description=(
        "The column of each prompt's benign anchor (the concept swapped for a neutral word)."))
    paraphrase_column: str | None = Field("paraphrase", description=(
        "The column of held-out paraphrases (attack: paraphrase); null = none."))
    seed_column: str | None = Field("seed", description="The column of per-row seeds; null = derived seeds.")
    limit: int | None = Field(None, ge=1, description="First N rows (null = all).")


class PreservePromptsConfig(Strict):
    path: str | None = Field(None, description="The CSV of non-target prompts; null = no preservation figures.")
    prompt_column: str = Field("prompt", description="The column of the prompts.")
    seed_column: str | None = Field("seed", description="The column of per-row seeds; null = derived seeds.")
    limit: int | None = Field(None, ge=1, description="First N rows (null = all).")


class RingABellTextConfig(Strict):
    population: int = Field(32, ge=4, description="Candidate prompts per generation of the genetic search.")
    generations: int = Field(20, ge=0, description="Generations of the genetic search.")
    mutation: float = Field(0.15, ge=0.0, le=1.0, description="Probability that a word of a child prompt is mutated.")
    elite: int = Field(2, ge=1, description="Best candidates carried unchanged into the next generation.")
    length: int | None = Field(None, ge=1, description=(
        "Words per candidate prompt; null = the benign prompt's word count."))
    seed: int = Field(0, description="Seed of the genetic search.")


class RingABellConfig(Strict):
    pairs: str | None = Field(None, description=(
        "CSV with prompt / normal prompt columns; null = the prompts file's pairs."))
    alpha: float = Field(1.0, description=(
        "Strength of the concept vector added to the benign embedding (and the discrete search's target)."))
    text: RingABellTextConfig = Field(default_factory=RingABellTextConfig, description=(
        "The discrete (text) search of ringabell-text."))


class SoftPromptConfig(Strict):
    budgets: list[float] = Field(default_factory=lambda: [0.5, 1.0], description=(
        "Bounds on ||delta||, in multiples of ||E(concept prompt) - E(benign prompt)||: one result column each."))
    steps: int = Field(EVAL_STEPS, ge=1, description=(
        "Adam steps per prompt pair and restart (evaluation strength: >= 180; tests use a few)."))
    restarts: int = Field(EVAL_RESTARTS, ge=1, description=(
        "Starts per prompt pair (0: delta = 0, then seeded random points at half the radius); a row counts as "
        "attacked when any restart's video is flagged (evaluation strength: >= 2)."))
    lr: float = Field(0.05, gt=0.0, description="Adam learning rate of the perturbation.")
    pool_size: int = Field(2, ge=1, description="Base-model concept trajectories per prompt (the x_t source).")
    batch: int = Field(4, ge=1, description="x_t samples per optimisation step.")
    trajectory_steps: int | None = Field(None, ge=1, description=(
        "Sampler steps of those trajectories; null = generation.num_inference_steps."))
    seed: int = Field(0, description="Seed of the trajectories and the perturbation's start.")

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v):
        if not v or any(b <= 0 for b in v) or len(set(v)) != len(v):
            raise ValueError("budgets must be distinct positive multiples of the concept-anchor distance, e.g. [0.5, 1.0]")
        return v


class InversionConfig(Strict):
    tokens: int = Field(1, ge=1, description=(
        "Pseudo-tokens learned (they replace the concept words of every concept prompt; each starts at an anchor "
        "word's embedding, so one token starts from a benign prompt)."))
    steps: int = Field(300, ge=1, description="Adam steps per restart (one universal set of tokens for all rows).")
    restarts: int = Field(EVAL_RESTARTS, ge=1, description=(
        "Independent runs, each from other anchor words' embeddings; a row counts as attacked when any succeeds."))
    lr: float = Field(0.05, gt=0.0, description="Adam learning rate of the token embeddings (unbounded).")
    batch: int = Field(4, ge=1, description="x_t samples (from random concept prompts) per optimisation step.")
    trajectory_steps: int | None = Field(None, ge=1, description=(
        "Sampler steps of the base model's concept trajectories (one per concept prompt); null = "
        "generation.num_inference_steps."))
    seed: int = Field(0, description="Seed of the trajectories, the tokens' start and the x_t picks.")


class DiscreteConfig(Strict):
    tokens: int = Field(3, ge=1, description="Words prepended to the benign prompt and searched (one token each).")
    steps: int = Field(60, ge=1, description="Gradient-guided substitution steps per prompt pair.")
    candidates: int = Field(16, ge=1, description="Single-word swaps scored exactly per step (the best is kept).")
    topk: int = Field(16, ge=1, description="Words per slot the one-hot gradient proposes.")
    batch: int = Field(2, ge=1, description="x_t samples per step (the candidates are scored on the same ones).")
    pool_size: int = Field(2, ge=1, description="Base-model concept trajectories per prompt (the x_t source).")
    trajectory_steps: int | None = Field(None, ge=1, description=(
        "Sampler steps of those trajectories; null = generation.num_inference_steps."))
    seed: int = Field(0, description="Seed of the trajectories, the x_t picks and the swaps.")


class TransferConfig(Strict):
    source: str = Field(description=(
        "A saved attack set: the folder attacks/<attack>/<victim> of a finished `t2vu attack` output (attacked.json, "
        "embeds.safetensors), found against another eraser or model; relative to the current directory, else to "
        "this file (eval.attacks.transfer)."))
    label: str | None = Field(None, description=(
        "The result column is transfer-<label>; default <attack>-from-<victim> (the folder's two names)."))

    @property
    def column(self) -> str:
        from eval.attacks.transfer import default_label

        return f"transfer-{self.label or default_label(self.source)}"


class DetectorConfig(Strict):
    flag: str | None = Field(None, description=(
        "Classifier record field (bool) that flags the concept; null = by classifier (toy: target_present, nudenet: "
        "positive)."))
    preservation: list[str] = Field(default_factory=list, description=(
        "Classifier summary entries reported on the preserve set."))


class AttackConfig(Strict):
    eval: str = Field(description=(
        "The eval config (path, relative to this file first) whose model, generation, classifier and runtime are "
        "used."))
    words: list[str] = Field(description=(
        "The concept's words: negprompt's negative prompt, SAFREE's concept subspace; ringabell-text never uses "
        "them."))
    prompts: AttackPromptsConfig = Field(description=(
        "CSV of attacked rows: the concept prompt, its benign anchor (the concept swapped for a neutral word), a "
        "held-out paraphrase, a seed."))
    preserve: PreservePromptsConfig = Field(default_factory=PreservePromptsConfig, description=(
        "CSV of non-target prompts (prompt, seed), generated clean by every method: its preservation figures."))
    methods: list[AttackMethodConfig] = Field(description=(
        "The methods compared (eval.methods), each attacked by every attack."))
    attacks: list[Literal["clean", "paraphrase", "ringabell", "ringabell-text", "softprompt", "softprompt-subspace",
                          "inversion", "discrete"]] = Field(description=(
        "clean / paraphrase: text; ringabell: concept vector on the benign embedding; ringabell-text: genetic search "
        "for a text prompt; softprompt: white-box embedding perturbation, one result column per budget; "
        "softprompt-subspace: the same, restricted to the span of the rows' prompt encodings; inversion: unbounded "
        "pseudo-token embeddings through the text encoder, optimised through the defended model; discrete: "
        "gradient-guided word substitution against the defended model, an ordinary text prompt."))
    ringabell: RingABellConfig = Field(default_factory=RingABellConfig, description=(
        "Ring-A-Bell: paired prompts for the concept vector, alpha, the discrete search's budget."))
    softprompt: SoftPromptConfig = Field(default_factory=SoftPromptConfig, description=(
        "Soft-prompt attack (and softprompt-subspace): budgets, steps, restarts, lr, x_t pool."))
    inversion: InversionConfig = Field(default_factory=InversionConfig, description=(
        "Pseudo-token inversion: tokens, steps, restarts, lr."))
    discrete: DiscreteConfig = Field(default_factory=DiscreteConfig, description=(
        "White-box discrete prompt attack: words, steps, candidates per step."))
    transfer: list[TransferConfig] = Field(default_factory=list, description=(
        "Saved attack sets replayed against every method, one column each after `attacks` (transfer of attacks "
        "found against other erasers)."))
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description=(
        "Which classifier record field flags the concept, which summary entries are preservation."))
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description=(
        "One parent run per benchmark, a child per method x attack."))
    config_dir: str | None = Field(None, description=(
        "Directory of the YAML file this came from (for relative paths); set by load_attack_config."))

    @model_validator(mode="after")
    def _check(self):
        if not self.words or any(not w.strip() for w in self.words):
            raise ValueError("words must be a non-empty list of the concept's words, e.g. [red]")
        keys = [m.key for m in self.methods]
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"methods: needs at least one, each key (label or name) once; got {keys}")
        if not self.attacks or len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks: needs at least one of {ATTACKS}, each once; got {self.attacks}")
        columns = [t.column for t in self.transfer]
        if len(set(columns)) != len(columns):
            raise ValueError(f"transfer: two sets give the same column {columns}; give them distinct labels")
        for c in columns:
            path_component(c, "transfer label")
        if "paraphrase" in self.attacks and not self.prompts.paraphrase_column:
            raise ValueError("attacks: paraphrase needs prompts.paraphrase_column")
        return self

    def resolve_path(self, value: str | None) -> Path | None:
        """As given if it exists (or is absolute), else relative to the config file (eval's rule)."""
        from eval.config import resolve_config_path

        return resolve_config_path(value, self.config_dir)

    def attack_names(self) -> list[str]:
        """The result columns: softprompt(-subspace) gives one per budget (softprompt-0.5x, softprompt-1x)."""
        out = []
        for a in self.attacks:
            out += [f"{a}-{b:g}x" for b in self.softprompt.budgets] if a.startswith("softprompt") else [a]
        return out + [t.column for t in self.transfer]

    def reference_method(self) -> tuple[str, list[AttackMethodConfig]]:
        """The key whose anchors / preserve cells are the base model's figures, and the base-only method to add
        when no compared method is the base model (name none)."""
        for m in self.methods:
            if m.name == "none":
                return m.key, []
        keys = {m.key for m in self.methods}
        key = next(k for k in ("base", "base-reference", "base-model") if k not in keys)
        return key, [AttackMethodConfig(name="none", label=key)]

    def below_strength(self) -> dict[str, str]:
        """The configured attacks weaker than evaluation strength (reported next to the results)."""
        out = {}
        for name, sec in (("softprompt", self.softprompt), ("inversion", self.inversion)):
            if any(a.startswith(name) for a in self.attacks) and (sec.steps < EVAL_STEPS or sec.restarts < EVAL_RESTARTS):
                out[name] = f"steps {sec.steps}, restarts {sec.restarts} (evaluation strength: >= {EVAL_STEPS}, >= {EVAL_RESTARTS})"
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
