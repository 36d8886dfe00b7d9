"""Typed configuration of the method (model, eraser, concept data, losses, training).

One schema, validated before any model loads: unknown keys and bad values fail
with the key path named (pydantic `extra="forbid"`). Pipeline-level sections
(distributed, search, eval, mlflow) extend this in `pipelines.config.pipeline`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from unlearn.yaml_load import read_yaml  # noqa: F401 - where the config readers import it from
from unlearn.errors import ConfigError  # defined there so lower modules raise it without an import cycle
from unlearn.bank_config import BankConfig
from unlearn.gate_config import GateConfig, gated
from unlearn.strict import Strict  # noqa: F401 - where the config sections import it from


def path_component(value: str, field: str) -> str:
    """A config value that becomes one path component (a run or experiment name): no separators, no `..`.

    `distributed.name: ../../../victim` once made `--no-resume` delete a folder outside the run.
    """
    if not value or value in (".", "..") or any(c in value for c in "/\\\0") or value != value.strip():
        raise ValueError(f"{field} {value!r} must be a plain name (letters, digits, - _ .), not a path")
    if len(value) > MAX_NAME_CHARS:  # a folder name (255 bytes at most, plus Ray's suffixes) and an MLflow run name
        raise ValueError(f"{field} is {len(value)} characters long: at most {MAX_NAME_CHARS} (it names folders and "
                         "MLflow runs)")
    return value


MAX_NAME_CHARS = 100


class ModelConfig(Strict):
    """Which base model, and the video geometry used while training."""

    family: str = Field("cogvideox", description=(
        "Model family behind the model-spec seam (registry: unlearn/models/families.py; one file per family)."))
    path: str = Field("builtin:tiny", description=(
        "A diffusers-format directory (model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/). "
        "`builtin:tiny` and `builtin:toy` resolve to project-built models."))
    architecture: str | None = Field(None, description=(
        "Public architecture preset (cogvideox-2b, cogvideox-5b, wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.2-ti2v-5b, "
        "wan2.2-t2v-a14b) used by `t2vu plan` when `path` is not downloaded yet; ignored when path holds a model "
        "directory (its transformer/config.json wins)."))
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=(
        "Weights dtype of the frozen backbone (bf16 on GPUs; erasers always keep fp32 weights). float16 is refused "
        "for training (no loss scaling); eval configs may use it (inference only)."))
    num_frames: int = Field(9, ge=1, description=(
        "Training video length in frames (latents: (F-1)/4+1 frames for real CogVideoX)."))
    height: int = Field(64, ge=8, description="Training video height in pixels (latents: H/8 for real CogVideoX).")
    width: int = Field(64, ge=8, description="Training video width in pixels (latents: W/8 for real CogVideoX).")

    @field_validator("dtype")
    @classmethod
    def _no_float16_training(cls, v: str) -> str:
        # fp16 training needs loss scaling (gradients through the frozen fp16 backbone underflow to 0 and the
        # eraser stops learning without an error); neither the trainer nor the DeepSpeed config (no `fp16`
        # section, client optimizer) scales. bf16 has fp32's range and the same memory. Eval configs
        # (eval.config.EvalModelConfig: inference only) keep float16.
        if v == "float16":
            raise ValueError("float16 trains without loss scaling (small gradients underflow to zero): "
                             "use model.dtype: bfloat16 (same memory, no scaling needed) or float32")
        return v

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        from unlearn.models.families import family_names

        if v not in family_names():
            raise ValueError(f"unknown model family {v!r}; known: {', '.join(family_names())}")
        return v


class EraserOptions(Strict):
    """The YAML `eraser:` section: what to train (the trained file's own metadata is `unlearn.eraser.EraserMeta`)."""

    rank: int = Field(128, ge=1, le=4096, description=(
        "Bottleneck width r of each eraser (down: D->r, up: r->D). Reference: 128."))
    blocks: list[int] | None = Field(None, description=(
        "Block indices that get an eraser; None = every transformer block."))


class ConceptConfig(Strict):
    """Prompt-only data: what to erase, what to compare against, what to keep."""

    target: str = Field("naked", description=(
        "The concept's words as they appear in the prompts (token positions for the mask are found by matching these "
        "words' token ids inside each prompt)."))
    prompts: list[str] = Field(default_factory=lambda: ["a naked body"], description=(
        "Prompts that contain `target`. Either listed here or read from `prompts_file`."))
    prompts_file: str | None = Field(None, description=(
        "A CSV of concept prompts (read instead of `prompts` when set)."))
    prompts_column: str = Field("prompt", description="The column of `prompts_file` holding the concept prompts.")
    reference: Literal["empty", "anchors", "paired"] = Field("empty", description=(
        "Reference branch of the negative guidance: empty -> v_ref = v(\"\") (the reference method); anchors -> v_ref "
        "= mean_a v(prompt with target -> a); paired -> v_ref = v(paired prompt from `paired_column` of "
        "prompts_file)."))
    anchors: list[str] = Field(default_factory=list, description=(
        "Words that replace `target` in each prompt for reference: anchors, e.g. ['clothed']."))
    paired_column: str = Field("normal prompt", description=(
        "The column of `prompts_file` holding each prompt's paired benign prompt (reference: paired)."))
    preserve: list[str] = Field(
        default_factory=lambda: ["a person", "a face", "clothing", "a background"],
        description=(
            "Prompts of concepts whose predictions must not move."))
    preserve_empty: bool = Field(True, description=(
        "Erasers also run in the unconditional branch of CFG; keep \"\" unchanged too."))

    @field_validator("prompts", "anchors", "preserve")
    @classmethod
    def _no_blank_entries(cls, v: list[str], info) -> list[str]:
        """A blank or whitespace-only entry trains on a prompt nobody wrote (whitespace encodes like "",
        the unconditional prompt): refused, naming the index."""
        for i, p in enumerate(v):
            if p.strip():
                continue
            hint = {
                "preserve": "the empty prompt (CFG's unconditional branch) is kept by concept.preserve_empty: true, "
                            "not by a list entry",
                "anchors": "an anchor is the word that replaces concept.target, e.g. 'clothed'",
                "prompts": "every concept prompt must contain concept.target",
            }[info.field_name]
            raise ValueError(f"concept.{info.field_name}[{i}] is {'empty' if not p else 'whitespace only'} ({p!r}): "
                             f"remove it; {hint}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "ConceptConfig":
        if not self.target.strip():
            raise ValueError("concept.target is empty: set it to the concept's words, e.g. 'naked'")
        if not self.prompts and not self.prompts_file:
            raise ValueError("no concept prompts: set concept.prompts (a list) or concept.prompts_file (a CSV)")
        if self.reference == "anchors" and not self.anchors:
            raise ValueError("concept.reference is 'anchors' but concept.anchors is empty: list e.g. ['clothed']")
        if self.reference == "paired" and not self.prompts_file:
            raise ValueError("concept.reference is 'paired' but concept.prompts_file is not set")
        return self


class LossConfig(Strict):
    eta: float = Field(7.0, ge=0.0, description=(
        "Negative guidance strength: target = v_ref - eta * (v_concept - v_ref). Reference 7 (CogVideoX-5B)."))
    w_unlearn: float = Field(1.0, ge=0.0, description="Weight of the unlearning loss (seed default 1.0).")
    w_preserve: float = Field(0.5, ge=0.0, description="Weight of the preservation loss (seed default 0.5).")
    w_localize: float = Field(1.0, ge=0.0, description=(
        "Weight of the localisation loss (seed default 1.0); 0 skips attention capture."))
    mask_threshold: float = Field(0.1, ge=0.0, le=1.0, description=(
        "Threshold on the per-frame min-max normalised concept attention (Receler: 0.1)."))
    localize_reduction: Literal["sum", "mean"] = Field("sum", description=(
        "How L_loc reduces over the hidden dimension D: \"sum\" is DESIGN §1's ||E*(1-M)||^2 per token (the "
        "reference's scale: w_localize 1.0 means what it means in the paper); \"mean\" divides by D (older runs)."))
    mask_layers: list[int] | None = Field(None, description=(
        "Which blocks' attention feeds the mask; None = all blocks."))
    attn_chunk: int = Field(1024, ge=1, description=(
        "Query rows per chunk when computing text-column attention probabilities."))
    adv_steps: int = Field(0, ge=0, description=(
        "Adversarial training (AdvUnlearn-style robust erasure; 0 = off): each step, `adv_steps` inner steps find a "
        "perturbation delta of every concept row's text embedding, ||delta|| <= adv_budget x ||E(concept) - "
        "E(reference)||, that makes the erased model predict the frozen model's concept prediction again (what the "
        "soft-prompt attack does); the unlearning loss is applied to E(concept) + delta too, weighted by w_adv. The "
        "preservation loss is unchanged. Costs adv_steps extra forward+backward passes of the concept rows."))
    adv_budget: float = Field(1.0, gt=0.0, description=(
        "Bound on ||delta|| of the adversarial perturbation, in multiples of ||E(concept) - E(reference)||."))
    adv_step_size: float = Field(0.2, gt=0.0, description=(
        "Inner step length as a fraction of the row's budget radius (normalised gradient steps, then projection)."))
    adv_from: Literal["concept", "reference"] = Field("concept", description=(
        "Where the inner attack starts: concept = E(concept) + delta; reference = E(reference) + delta (one anchor "
        "per row, row i takes anchor i mod K), the soft-prompt attack's threat model: a benign prompt pushed towards "
        "the concept within the concept-anchor distance."))
    w_adv: float = Field(1.0, ge=0.0, description=(
        "Weight of the unlearning loss on the perturbed concept rows (adv_steps > 0)."))
    adv_target: Literal["negative", "own-negative", "reference"] = Field("negative", description=(
        "What the perturbed rows are trained towards, with v_s the frozen prediction of the reference the attack "
        "started from (adv_from: reference -> the row's own anchor; concept -> the references' mean v_ref), all at "
        "the concept rows' x_t: negative = the unlearning target v_ref - eta (v_c - v_ref) (AdvUnlearn; with "
        "adv_from: reference every anchor's neighbourhood is pulled to the anchors' mean); own-negative = v_s - eta "
        "(v_c - v_s): away from the concept, towards the anchor the attack started from; reference = v_s (at x_t of "
        "concept videos the frozen anchor prediction keeps much of the concept: measured weaker, "
        "benchmarks/robustness.md)."))
    w_anchor_preserve: float = Field(0.0, ge=0.0, description=(
        "Preservation on the anchors' UNPERTURBED embeddings at the concept rows' x_t (row i takes anchor i mod K): "
        "w_anchor_preserve x MSE(v_E(x_c, E(anchor)), v(x_c, E(anchor))); 0 = off (no extra rows). Adds B rows to "
        "the erased forward (with reference: empty the anchor is \"\"). Measured on the toy world "
        "(benchmarks/robustness.md): it keeps the anchors, but at concept x_t the frozen anchor prediction keeps "
        "part of the concept too."))


class TrajectoryConfig(Strict):
    num_inference_steps: int = Field(20, ge=2, description=(
        "Sampler steps of the frozen model's trajectories (xt_source: trajectory)."))
    guidance_scale: float = Field(5.0, ge=1.0, description="Classifier-free guidance scale of those trajectories.")
    pool_size: int = Field(8, ge=1, description=(
        "Trajectories sampled once (erasers off) per prompt and reused across steps."))


class TrainConfig(Strict):
    steps: int = Field(500, ge=1, description="Optimiser steps (reference: 500).")
    lr: float = Field(1e-4, gt=0.0, description="AdamW learning rate on the eraser parameters (reference: 1e-4).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the eraser parameters.")
    batch_size: int = Field(1, ge=1, description=(
        "Concept prompts per step (each brings its reference prompts along)."))
    preserve_batch_size: int = Field(2, ge=0, description="Preserved prompts per step.")
    xt_source: Literal["noise", "trajectory"] = Field("noise", description=(
        "Where x_t comes from: noise (seed: N(0,I) noised to uniform t) or trajectory (frozen model's sampler "
        "states)."))
    trajectory: TrajectoryConfig = Field(default_factory=TrajectoryConfig, description=(
        "How trajectory x_t are sampled (xt_source: trajectory)."))
    seed: int = Field(0, description="Seed of the eraser's initialisation, prompt sampling and noise.")
    grad_clip: float | None = Field(1.0, description=(
        "Gradient-norm clipping of the eraser parameters (null = no clipping)."))
    gradient_checkpointing: bool = Field(False, description=(
        "Recompute block activations in backward (GPU memory saver)."))
    autocast: Literal["none", "bf16"] = Field("none", description=(
        "bf16 autocast for the forwards (GPU memory saver); none = the weights' dtype."))
    checkpoint_every: int = Field(100, ge=1, description=(
        "Steps between checkpoints (single-process and distributed; every rank saves, a collective)."))
    log_every: int = Field(10, ge=1, description="Steps between logged losses.")
    device: str = Field("auto", description=(
        "Where training runs: auto (cuda if available, else cpu) | cpu | cuda | cuda:N | meta (tests: real-size "
        "shapes, no memory). Ray Train workers use their assigned GPU when this is auto or cuda."))
    cache_dir: str | None = Field(None, description=(
        "Text-embedding cache directory; None = $T2VU_CACHE/embeddings (default ~/.cache/t2vu/embeddings)."))

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "meta") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"{v!r} is not a device: use auto, cpu, cuda, cuda:N or meta")


class EraserTrainingConfig(Strict):
    """Everything a single eraser training needs."""

    model: ModelConfig = Field(default_factory=ModelConfig, description=(
        "Which base model, and the video geometry used while training."))
    eraser: EraserOptions = Field(default_factory=EraserOptions, description="What to train: eraser rank and blocks.")
    concept: ConceptConfig = Field(default_factory=ConceptConfig, description=(
        "What to erase, what to compare against, what to keep."))
    loss: LossConfig = Field(default_factory=LossConfig, description=(
        "Loss weights, guidance strength, mask and adversarial training."))
    train: TrainConfig = Field(default_factory=TrainConfig, description=(
        "Optimiser, steps, x_t source, device and checkpoints."))
    gate: GateConfig | None = Field(None, description=(
        "A content gate trained after the eraser and saved in its file (unlearn.gates, issue 25): a probe on the "
        "model's own predicted x0 scales a correction away from the concept whatever the text says. null = none."))
    bank: BankConfig | None = Field(None, description=(
        "Bank-then-erase after the eraser's training, saved in its file (unlearn.adversarial_bank, issue 25): "
        "rounds of the soft-prompt attack on the current eraser, then training on the attacks found plus this "
        "config's own loss; each round checkpointed. Single process (t2vu train) only. null = none."))

    @model_validator(mode="after")
    def _gate_defaults(self):
        # the gate's prompts default to the concept section's: an empty default fails here, not after training
        if not gated(self):
            return self
        for key, default, name in (("toward_prompts", self.concept.anchors, "concept.anchors"),
                                   ("negative", [p for p in self.concept.preserve if p], "concept.preserve")):
            if getattr(self.gate, key) is None and not default:
                raise ValueError(f"gate.{key} is not set and {name} (its default) is empty: list the prompts")
        return self




def format_validation_error(err: ValidationError, source: str) -> str:
    """One line for one problem (`Invalid config F: key: what is wrong`), a list for several."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; every key: docs/config-reference.md)"
        problems.append(f"{loc}: {msg}")
    if len(problems) == 1:
        return f"Invalid config {source}: {problems[0]}"
    return "\n".join([f"Invalid config {source} ({len(problems)} problems):"] + [f"  - {p}" for p in problems])


def validate(cls: type[BaseModel], data: dict, source: str = "<dict>"):
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_eraser_training_config(path: str | Path) -> EraserTrainingConfig:
    return validate(EraserTrainingConfig, read_yaml(path), str(path))


def config_digest(cfg: BaseModel) -> str:
    """Stable short hash of a resolved config (stored in eraser files)."""
    data = cfg.model_dump(mode="json")
    for key in ("gate", "bank"):  # no gate / bank: the digest erasers had before the key (resumes keep working)
        if key in data and data[key] is None:
            del data[key]
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def parse_override(item: str) -> tuple[str, object]:
    """One `--set KEY=VALUE` item -> (dotted key, YAML-parsed value)."""
    if "=" not in item or not item.partition("=")[0].strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=10")
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc.problem}); quote it") from None
    return key.strip(), value


def apply_overrides(data: dict, overrides) -> dict:
    """Apply `--set` items (strings `KEY=VALUE`) or a {dotted key: value} mapping to `data` in place.

    The one override mechanism: CLI `--set`, Tune samples and benchmark variants all go through it.
    """
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(i) for i in overrides or [])
    for key, value in items:
        set_by_path(data, key, value)
    return data


def set_by_path(data: dict, dotted: str, value) -> None:
    """Set `a.b.c` in a nested dict (used by CLI overrides and Tune samples)."""
    keys = dotted.split(".")
    cur = data
    for i, k in enumerate(keys[:-1]):
        cur = cur.setdefault(k, {})
        if cur is None:  # an optional section that is off (gate:, bank:): setting one key must not switch it on
            section = ".".join(keys[:i + 1])
            raise ConfigError(f"Cannot set {dotted}: `{section}:` is off (null) in this config; set the whole "
                              f"section first (e.g. --set '{section}={{}}' for its defaults) or leave {dotted} out")
        if not isinstance(cur, dict):
            raise ConfigError(f"Cannot set {dotted}: {k} is not a section")
    cur[keys[-1]] = value


def read_renamed_keys(data, renamed: dict[str, str], warn, overriding: tuple[str, ...] = ()) -> object:
    """Read keys renamed in this release under their new names (dotted paths, old -> new), calling
    `warn(message)` once per old key found with a one-line message naming the new key.

    Why read them at all: configs pinned in run folders and shared YAML files keep the old names for a while;
    refusing them would stop a resume. Why only for one release: two names for one knob is what the rename
    removes. A file setting both names to different values is refused (which one it means cannot be known),
    except for an old key in `overriding`: it was a more specific override of the new key (it won where it
    applied), so its value wins and the warning says what it replaced.
    """
    if not isinstance(data, dict):
        return data
    for old, new in renamed.items():
        *old_parents, old_leaf = old.split(".")
        section = data
        for k in old_parents:
            section = section.get(k) if isinstance(section, dict) else None
        if not isinstance(section, dict) or old_leaf not in section:
            continue
        data = copy.deepcopy(data)  # never edit the caller's dict (a --set mapping, a sampled trial config)
        section = data
        for k in old_parents:
            section = section[k]
        value = section.pop(old_leaf)
        *new_parents, new_leaf = new.split(".")
        target = data
        for k in new_parents:
            target = target.setdefault(k, {})
            if not isinstance(target, dict):
                return data  # the schema reports the bad section
        replaced = target.get(new_leaf)
        if new_leaf in target and replaced != value and value is not None and old not in overriding:
            raise ValueError(f"{old} ({value!r}) and {new} ({replaced!r}) are both set: {old} is the old "
                             f"name of {new}; remove {old}")
        if value is not None:
            target[new_leaf] = value
        was = f", replacing {new}: {replaced!r}" if value is not None and replaced not in (None, value) else ""
        warn(f"{old} is deprecated and read as {new}{was} (one knob, one name); rename it in the config: "
             f"the next release refuses {old}")
    return data
