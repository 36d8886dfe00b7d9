"""The `gate:` section (issue 25's content gate, `unlearn.gates`): a key of the training config
(`unlearn.config.EraserTrainingConfig.gate`: trained after the eraser, saved in its file) and of an attack
config's methods (`pipelines.config.attack.AttackMethodConfig.gate`: put on an eraser before it is attacked).

Torch-free (config loading must not import torch). In a training config the prompts default to the concept
section's (concept_prompt: concept.target, toward_prompts: concept.anchors, positive: the concept prompts,
negative: concept.preserve): `gate: {strength: 10}` is a complete section there. An attack config has no concept
data, so there they must be given (`configs/gates/toy.yaml`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from unlearn.strict import Strict

# The settings that decide the trained probe (the rest is applied at inference: changing them needs no retraining).
PROBE_FIELDS = ("positive", "negative", "hidden", "pool_tau", "trajectory_steps", "guidance", "probe_steps",
                "probe_lr", "seed")


class GateConfig(Strict):
    """Which gate, its correction, how its probe is trained."""

    name: Literal["none", "content"] = Field("content", description=(
        "none: no gate (the eraser as trained). content: a probe on the model's own predicted x0 scales a "
        "negatively guided correction away from the concept (unlearn.gates)."))
    concept_prompt: str | None = Field(None, description=(
        "The prompt whose prediction the correction moves away from (encoded once, stored with the gate); null = "
        "concept.target (training configs only)."))
    toward_prompts: list[str] | None = Field(None, min_length=1, description=(
        "Prompts whose mean prediction the correction moves toward (encoded once, stored; one transformer row each "
        "per gated call: keep it to 1-3); null = concept.anchors (training configs only)."))
    correction: Literal["anchors", "eraser"] = Field("anchors", description=(
        "anchors: mean_k v_base(x, toward_k) - v_base(x, concept) (negative guidance with fixed prompts). eraser: "
        "v_erased(x, concept) - v_base(x, concept), the eraser's own effect under the concept prompt, applied "
        "whatever the text says (needs an eraser)."))
    strength: float = Field(3.0, gt=0, description="Scale of the correction at gate 1 (inference only: no retraining).")
    threshold: float = Field(0.0, description="Probe logit at which the gate is 0.5 (inference only).")
    sharpness: float = Field(1.0, gt=0, description="Gate = sigmoid(sharpness * (logit - threshold)).")
    min_gate: float = Field(1e-3, ge=0, lt=1, description=(
        "Below this gate the correction passes are skipped (their contribution is under strength * min_gate)."))
    hidden: int = Field(16, ge=1, description="Hidden width of the per-position probe MLP.")
    pool_tau: float = Field(0.5, gt=0, description="Temperature of the soft-max pooling over positions.")
    positive: list[str] | None = Field(None, min_length=1, description=(
        "Probe training: prompts whose base-model videos show the concept (label 1); null = the concept prompts "
        "(training configs only)."))
    negative: list[str] | None = Field(None, min_length=1, description=(
        "Probe training: prompts whose base-model videos do not (label 0); null = concept.preserve (training "
        "configs only)."))
    trajectory_steps: int = Field(20, ge=2, description="Sampler steps of the base trajectories the probe learns from.")
    guidance: float = Field(5.0, ge=1, description="CFG scale of those trajectories.")
    probe_steps: int = Field(300, ge=1, description="Adam steps of probe training.")
    probe_lr: float = Field(1e-2, gt=0, description="Learning rate of probe training.")
    seed: int = Field(0, description="Seed of the trajectories and the probe's initialisation.")

    @field_validator("concept_prompt", "toward_prompts", "positive", "negative")
    @classmethod
    def _no_blank(cls, v, info):
        for p in [v] if isinstance(v, str) else v or []:
            if not p.strip():
                raise ValueError(f"gate.{info.field_name} holds an empty prompt: remove it")
        return v

    def missing(self) -> list[str]:
        """The prompt fields left to defaults (an attack config, with no concept section, must set them)."""
        return [k for k in ("concept_prompt", "toward_prompts", "positive", "negative") if getattr(self, k) is None]

    def filled(self, concept_prompt: str, toward: list[str], positive: list[str], negative: list[str]) -> "GateConfig":
        """A copy with every prompt field set (the given defaults where null); ValueError naming an empty default."""
        out = self.model_copy(update={k: v for k, v in (
            ("concept_prompt", concept_prompt), ("toward_prompts", list(toward)), ("positive", list(positive)),
            ("negative", list(negative))) if getattr(self, k) is None})
        for k in out.missing() + [k for k in ("toward_prompts", "positive", "negative") if not getattr(out, k)]:
            raise ValueError(f"gate.{k} is not set and its default is empty (toward_prompts: concept.anchors, "
                             f"positive: the concept prompts, negative: concept.preserve): list the prompts")
        return out


def gated(cfg) -> bool:
    """Whether a training (or pipeline) config asks for the content gate (torch-free: the plan and the CLI read it)."""
    return cfg.gate is not None and cfg.gate.name != "none"
