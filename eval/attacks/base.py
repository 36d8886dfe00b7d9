"""What every attack shares: the attacked rows, the attack's output, and the model context it works in.

An attack turns prompt rows (a concept prompt, its benign anchor, a held-out paraphrase, a seed) into one
attacked input per row: an ordinary text prompt, or a text embedding [L, D] that replaces the encoded
prompt (`eval.generate.generate_video(text={"prompt_embeds": ...})`, through the eval method's text side).
Attacks reach the model only through the model spec (`unlearn/models/spec.py`: `encode_prompts`,
`velocity`, `sample_trajectory`, `latent_shape`), so they work for every family (CogVideoX, Wan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class AttackRow:
    """One attacked prompt: `prompt` names the concept (what the detector is told the scene is), `benign`
    is its anchor (the concept swapped for a neutral word), `paraphrase` a held-out rewording of `prompt`."""

    id: str
    prompt: str
    benign: str
    paraphrase: str | None
    seed: int


@dataclass
class Attacked:
    """An attack's input for one row: `text` (generated as a prompt) or `embeds` [L, D] (float32, CPU)."""

    row_id: str
    text: str
    embeds: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class AttackContext:
    """The loaded pipeline's text side and spec, shared by the attacks of one run.

    spec: the family's spec instance (`spec_class.from_pipeline(pipe)`): velocity, sampler, latent shape.
    base_context: a context manager giving the base model (the eval method's `base_context()`); outside it
    the pipeline's transformer is the defended model (an eraser's hooks on)."""

    def __init__(self, pipe, spec_cls, gen, max_length: int):
        self.pipe, self.spec_cls, self.gen, self.max_length = pipe, spec_cls, gen, int(max_length)
        self.spec = spec_cls.from_pipeline(pipe)
        self.tokenizer, self.text_encoder = pipe.tokenizer, pipe.text_encoder
        param = next(pipe.transformer.parameters())
        self.device, self.dtype = param.device, param.dtype

    def encode(self, prompts: list[str], chunk: int = 64) -> torch.Tensor:
        """[N, L, D] float32 on the transformer's device: the prompts encoded as the pipeline encodes them."""
        parts = []
        with torch.no_grad():  # not inference_mode: white-box attacks differentiate through these
            for i in range(0, len(prompts), chunk):
                enc = self.spec_cls.encode_prompts(self.tokenizer, self.text_encoder, list(prompts[i:i + chunk]),
                                                   self.max_length)
                parts.append(enc.float().to(self.device))
        return torch.cat(parts)

    def latent_shape(self) -> tuple[int, ...]:
        g = self.gen
        return tuple(self.spec.latent_shape(g.num_frames, g.height, g.width))


class Attack:
    """One attack variant (its `name` is the column of the results: clean, softprompt-1x, ...).

    victim_dependent: the attack optimises against the defended model (white-box), so its inputs are made
    once per distinct defended transformer; otherwise once per run. `fingerprint()`: what changes its
    inputs (part of every row's resume key)."""

    kind: ClassVar[str] = ""
    victim_dependent: ClassVar[bool] = False

    def __init__(self, name: str, options: dict[str, Any] | None = None):
        self.name = name
        self.options = dict(options or {})

    def fingerprint(self) -> list:
        return [self.kind, self.options]

    def check(self, rows: list[AttackRow]) -> None:
        """Refuse rows this attack cannot attack (ConfigError naming the field), when the run is planned."""

    def make(self, ctx: AttackContext, rows: list[AttackRow], base_context) -> list[Attacked]:
        raise NotImplementedError


def unique(items) -> list:
    return list(dict.fromkeys(items))
