"""Methods compared in one harness: what makes the "erased" video of a row (`method:` in the eval config).

Every method sees the same prompts, seeds, sampler and detector; the base video of a row is always the
base model's (same pipeline, same seed), the "erased" video is the method's:

  none       the base model only: no second video (the run's rates are the `_base` ones)
  eraser     a trained eraser of this project, hooked into the pipeline's transformer (`eraser:` / --eraser)
  negprompt  the concept words, joined with ", ", as the negative prompt of classifier-free guidance
  safree     SAFREE's training-free text-side defence (`safree_prompt_embeds`): the prompt tokens whose
             removal moves the prompt away from the concept subspace are projected onto its orthogonal
             complement; SAFREE's latent-side re-attention is left out (the run's notes say so)
  blocklist  a keyword filter in front of the model: a prompt naming a concept word (whole word, any case)
             is replaced by `method.blocklist.replacement` (the empty prompt); the row records `blocked`

Two halves, so planning stays model-free and workers get only picklable data:
- planning: `plan_method(cfg, eraser_dir, rows)` resolves the name (null = eraser when an eraser is set,
  else none), checks the combination, resolves the concept words (`method.words`, else the distinct
  `concept` values of the target rows) and returns a `MethodPlan` (name, options, notes): recorded in
  summary.json `method`, part of the resume fingerprint (`MethodPlan.fingerprint`).
- workers: `build_method(plan_dict)` -> an `EvalMethod` (registry `METHODS`, one class per method). Its
  interface: `attach(pipe, model_path, gen)` once per pipeline (load hooks, encode concept words);
  `base_context()` around the base video (an eraser switches itself off); `text_kwargs(prompt, embeds)` -> what
  replaces the text side of the pipeline call for the method's video (`negative_prompt`,
  `prompt_embeds`: `eval.generate.generate_video(text=...)`; `embeds` [1, L, D]: the prompt's text embedding
  replaced by an attack's, eval.attacks, which the method's text side then acts on); `row_info()` -> what the row result records;
  `detach()` (remove hooks). Text embeddings go through the model spec (`spec.encode_prompts`), so no
  family is named here.
- the text encoder: a method's fixed texts (`texts(options)`: negprompt's negative prompt, blocklist's replacement)
  are filled into the text-embedding cache with the prompts, so its workers generate from cached embeddings and load
  no T5; only a method that runs the encoder itself (`needs_text_encoder`: SAFREE) loads it.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from unlearn.config import ConfigError

SAFREE_NOTE = (
    "method safree: SAFREE's text-side defence only (self-validating token selection, projection of the selected "
    "prompt tokens onto the orthogonal complement of the concept subspace, at every denoising step as in SAFREE's "
    "CogVideoX pipeline); its latent-side Fourier re-attention and its timestep-adaptive filtering (Stable "
    "Diffusion version) are not implemented"
)


@dataclass
class MethodPlan:
    """The method of a run, resolved before any model loads (JSON-safe: summary, fingerprint, workers)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def makes_video(self) -> bool:
        return METHODS[self.name].makes_video

    def texts(self) -> list[str]:
        """The fixed texts the method's videos encode (`EvalMethod.texts`)."""
        return METHODS[self.name].texts(self.options)

    def fingerprint(self) -> list:
        """What changes the method's videos (the eraser's weights are fingerprinted by their sha256)."""
        return [self.name, {k: v for k, v in self.options.items() if k != "eraser"}]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_method(cfg, eraser_dir: Path | None, rows: list) -> MethodPlan:
    """Resolve and check `cfg.method` against the eraser and the prompt rows (ConfigError naming the field)."""
    m = cfg.method
    name = m.name or ("eraser" if eraser_dir is not None else "none")
    if name == "eraser" and eraser_dir is None:
        raise ConfigError("method.name: eraser needs an eraser directory; set eraser: DIR (or --eraser DIR), "
                          "or choose method.name none / negprompt / safree / blocklist")
    if name != "eraser" and eraser_dir is not None:
        raise ConfigError(f"method.name: {name} compares against the base model without an eraser, but eraser is set "
                          f"({eraser_dir}); set eraser: null, or method.name: eraser")
    options: dict[str, Any] = {}
    notes: list[str] = []
    if name == "eraser":
        options["eraser"] = str(eraser_dir)
        if cfg.eraser_allow_other_base:  # only when set: older runs' resume fingerprints stay as they were
            options["allow_other_base"] = True
    if name in ("negprompt", "safree", "blocklist"):
        words = list(m.words) if m.words else sorted({r.concept for r in rows if r.set == "target" and r.concept})
        if not words:
            raise ConfigError(f"method.words: method {name} needs the concept words; set method.words: [\"nudity\", "
                              "...] (or give the target prompts a concept column)")
        options["words"] = words
    if name == "blocklist":
        options["replacement"] = m.blocklist.replacement
    if name in ("negprompt", "safree"):
        options["negative_prompt"] = ", ".join(words) if name == "negprompt" or m.safree.negative_prompt else None
    if name == "safree":
        options["alpha"] = float(m.safree.alpha)
        options["pooling"] = m.safree.pooling
        notes.append(SAFREE_NOTE)
    if name in ("negprompt", "safree") and options["negative_prompt"] is not None and cfg.generation.negative_prompt:
        notes.append(f"method {name}: the negative prompt is the concept words {options['negative_prompt']!r}, "
                     f"not generation.negative_prompt {cfg.generation.negative_prompt!r} (the base videos keep that)")
    if name in ("negprompt", "safree") and cfg.generation.guidance_scale <= 1.0:
        raise ConfigError(f"method.name: {name} acts through classifier-free guidance, but generation.guidance_scale is "
                          f"{cfg.generation.guidance_scale} (<= 1: no guidance); raise it or choose another method")
    return MethodPlan(name, options, notes)


# --- the methods (worker side) ---------------------------------------------------------------------

class EvalMethod:
    """One method's generation-time behaviour (see the module docstring for the interface)."""

    name: ClassVar[str] = ""
    makes_video: ClassVar[bool] = True
    # True: the method runs the text encoder itself (not only on whole texts), so no text-embedding cache can
    # stand in for it and its workers load T5 (issue 22; `t2vu plan --mode tune` counts that load)
    needs_text_encoder: ClassVar[bool] = False

    def __init__(self, options: dict[str, Any]):
        self.options = dict(options)

    @classmethod
    def texts(cls, options: dict[str, Any]) -> list[str]:
        """The fixed texts its videos encode besides each row's prompt and generation.negative_prompt (a negative
        prompt or replacement of its own): filled into the text-embedding cache with the prompts (eval.text_cache),
        so a worker whose cache holds them all loads no text encoder."""
        return []

    def attach(self, pipe, model_path: str | Path, gen) -> None:
        """Prepare on a loaded pipeline (once per worker)."""

    def base_context(self):
        """Context for the base video (the base model, whatever the method attached)."""
        return nullcontext()

    def text_kwargs(self, prompt: str, embeds=None) -> dict[str, Any]:
        """Pipeline-call arguments that replace the text side for the method's video of `prompt`
        (`embeds`: an attacked text embedding [1, L, D] that stands for the encoded prompt)."""
        return {} if embeds is None else {"prompt_embeds": embeds}

    def row_info(self) -> dict[str, Any]:
        """What the row result records about the last `text_kwargs` call."""
        return {"name": self.name}

    def detach(self) -> None:
        """Undo `attach` (idempotent): a shared backbone leaves the eval as it came."""


class NoneMethod(EvalMethod):
    name = "none"
    makes_video = False


class EraserMethod(EvalMethod):
    name = "eraser"

    def __init__(self, options):
        super().__init__(options)
        self.handle = None

    def attach(self, pipe, model_path, gen) -> None:
        import warnings

        from unlearn.eraser import EraserBaseWarning, load_eraser

        with warnings.catch_warnings():  # planning put them in the run's notes already
            warnings.simplefilter("ignore", EraserBaseWarning)
            self.handle = load_eraser(pipe, self.options["eraser"],
                                      allow_other_base=bool(self.options.get("allow_other_base")))

    def base_context(self):
        return self.handle.disabled() if self.handle is not None else nullcontext()

    def text_kwargs(self, prompt: str, embeds=None) -> dict[str, Any]:
        if self.handle is not None:  # the erased video follows: measure what the eraser adds to it
            self.handle.meter_start()
        return super().text_kwargs(prompt, embeds)

    def row_info(self) -> dict[str, Any]:
        """`eraser_energy`: the erasers' output energy over their input's in this row's erased video
        (sum ||E(h)||^2 / sum ||h||^2, all blocks and steps): the eval's eraser-energy check (eval.checks)."""
        energy = self.handle.meter_stop() if self.handle is not None else None
        return {"name": self.name, **({"eraser_energy": energy} if energy is not None else {})}

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class NegPromptMethod(EvalMethod):
    name = "negprompt"

    @classmethod
    def texts(cls, options):
        return [options["negative_prompt"]]

    def text_kwargs(self, prompt: str, embeds=None) -> dict[str, Any]:
        return {**super().text_kwargs(prompt, embeds), "negative_prompt": self.options["negative_prompt"]}


class SafreeMethod(EvalMethod):
    name = "safree"
    # Its token selection encodes each prompt once per token with that token's id replaced by the pad id (edited
    # token ids, not texts: nothing a text cache holds), so a SAFREE eval loads T5 (T5-XXL: ~9.5 GB in bf16) on each
    # of its workers: once per search, as a baseline. Its base videos and negative prompt still come from the cache.
    needs_text_encoder = True

    @classmethod
    def texts(cls, options):
        return [options["negative_prompt"]] if options.get("negative_prompt") is not None else []

    def __init__(self, options):
        super().__init__(options)
        self._info: dict[str, Any] = {}

    def attach(self, pipe, model_path, gen) -> None:
        from eval.safree import concept_pooled, text_parts

        self.spec, self.tokenizer, self.text_encoder, self.max_length = text_parts(pipe, model_path, gen)
        self.concept = concept_pooled(self.spec, self.tokenizer, self.text_encoder, self.options["words"],
                                      self.max_length, self.options["pooling"])

    def text_kwargs(self, prompt: str, embeds=None) -> dict[str, Any]:
        """embeds: an attacked embedding of `prompt`: the tokens SAFREE selects on the prompt's text are
        projected in it (an embedding cannot be re-encoded with tokens masked)."""
        from eval.safree import safree_prompt_embeds

        embeds, self._info = safree_prompt_embeds(self.spec, self.tokenizer, self.text_encoder, prompt, self.concept,
                                                  self.max_length, self.options["alpha"], self.options["pooling"],
                                                  tokens=None if embeds is None else embeds[0])
        out: dict[str, Any] = {"prompt_embeds": embeds}
        if self.options.get("negative_prompt") is not None:
            out["negative_prompt"] = self.options["negative_prompt"]
        return out

    def row_info(self) -> dict[str, Any]:
        return {"name": self.name, **self._info}


class BlocklistMethod(EvalMethod):
    """What a deployment without any model change does: refuse the words. A prompt naming a concept word is
    replaced before the pipeline sees it; an attacked embedding stands for its prompt's text (the benign
    prompt of an embedding attack), so it passes when that text names no concept word."""

    name = "blocklist"

    @classmethod
    def texts(cls, options):
        return [options["replacement"]]

    def __init__(self, options):
        import re

        super().__init__(options)
        words = sorted(self.options["words"], key=len, reverse=True)
        self.pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
        self._blocked = False

    def text_kwargs(self, prompt: str, embeds=None) -> dict[str, Any]:
        self._blocked = bool(self.pattern.search(prompt))
        if self._blocked:
            return {"prompt": self.options["replacement"]}  # the embedding of a blocked prompt is dropped too
        return super().text_kwargs(prompt, embeds)

    def row_info(self) -> dict[str, Any]:
        return {"name": self.name, "blocked": self._blocked}


METHODS: dict[str, type[EvalMethod]] = {m.name: m for m in (NoneMethod, EraserMethod, NegPromptMethod, SafreeMethod,
                                                             BlocklistMethod)}


def build_method(plan: dict[str, Any] | MethodPlan) -> EvalMethod:
    """The worker-side method of a `MethodPlan` (or its `as_dict()`)."""
    d = plan.as_dict() if isinstance(plan, MethodPlan) else plan
    if d["name"] not in METHODS:
        raise ValueError(f"unknown eval method {d['name']!r}; known: {sorted(METHODS)}")
    return METHODS[d["name"]](d.get("options") or {})
