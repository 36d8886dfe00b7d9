"""Attacks on erased models, run against every eval method in one harness (`t2vu attack`).

  clean           the concept prompts as given
  paraphrase      held-out rewordings (the prompt file's paraphrase column)
  ringabell       Ring-A-Bell's concept vector (mean embedding difference of paired prompts) added at
                  strength alpha to the benign prompt's embedding
  ringabell-text  its discrete variant: a seeded genetic search for words whose encoding matches that target
  softprompt-Bx   white-box: an additive perturbation of the benign embedding, norm <= B x the concept-anchor
                  embedding distance, optimised so the defended model predicts what the base model predicts for
                  the concept prompt on the base model's own concept trajectories; `restarts` starts per row,
                  the row attacked when any succeeds
  softprompt-subspace-Bx  the same, the perturbation restricted to the span of the rows' prompt encodings
  inversion       unbounded pseudo-token embeddings in the text encoder's input, replacing the concept words,
                  optimised through the defended model (concept inversion / PROBE-style)
  discrete        white-box gradient-guided word substitution (UnlearnDiffAtk / P4D / GCG-style): words
                  prepended to the benign prompt, an ordinary text prompt anyone can type
  transfer-<label>  a saved set of attacked inputs (another run's, found against another eraser) replayed

Modules: base (rows, the model context, the Attack interface), text, ringabell, softprompt, inversion, prompts
(the CSVs), transfer, runner (methods x attacks: generate, detect, resume), summary (ASR, floor, preservation), report.
"""

from __future__ import annotations

from eval.attacks.base import Attack
from eval.attacks.discrete import DiscreteAttack
from eval.attacks.inversion import InversionAttack
from eval.attacks.ringabell import RingABellAttack, RingABellTextAttack
from eval.attacks.softprompt import SoftPromptAttack
from eval.attacks.text import CleanAttack, ParaphraseAttack
from eval.attacks.transfer import TransferAttack

# the classifier record field that flags a video for the concept, per built-in classifier
FLAG_FIELDS = {"toy": "target_present", "nudenet": "positive"}


def build_attacks(cfg, pairs: list[tuple[str, str]], gen) -> list[Attack]:
    """The attack variants of a config (`pipelines.config.attack.AttackConfig`), in its order.

    pairs: the Ring-A-Bell concept-vector pairs; gen: the generation settings (softprompt samples its x_t
    pool with the generation sampler's steps and guidance unless told otherwise)."""
    rb, sp = cfg.ringabell, cfg.softprompt
    out: list[Attack] = []
    for name in cfg.attacks:
        if name == "clean":
            out.append(CleanAttack("clean"))
        elif name == "paraphrase":
            out.append(ParaphraseAttack("paraphrase"))
        elif name == "ringabell":
            out.append(RingABellAttack("ringabell", {"alpha": rb.alpha, "pairs": pairs}))
        elif name == "ringabell-text":
            out.append(RingABellTextAttack("ringabell-text", {"alpha": rb.alpha, "pairs": pairs,
                                                              "exclude": list(cfg.words), **rb.text.model_dump()}))
        elif name in ("softprompt", "softprompt-subspace"):
            for b in sp.budgets:
                out.append(SoftPromptAttack(f"{name}-{b:g}x", {
                    "budget": b, "steps": sp.steps, "restarts": sp.restarts, "lr": sp.lr, "pool_size": sp.pool_size,
                    "batch": sp.batch, "trajectory_steps": sp.trajectory_steps or gen.num_inference_steps,
                    "guidance": gen.guidance_scale, "seed": sp.seed,
                    **({"subspace": True} if name == "softprompt-subspace" else {})}))
        elif name == "inversion":
            inv = cfg.inversion
            out.append(InversionAttack("inversion", {
                "tokens": inv.tokens, "steps": inv.steps, "restarts": inv.restarts, "lr": inv.lr, "batch": inv.batch,
                "words": list(cfg.words), "trajectory_steps": inv.trajectory_steps or gen.num_inference_steps,
                "guidance": gen.guidance_scale, "seed": inv.seed}))
        elif name == "discrete":
            d = cfg.discrete
            out.append(DiscreteAttack("discrete", {
                "tokens": d.tokens, "steps": d.steps, "candidates": d.candidates, "topk": d.topk, "batch": d.batch,
                "exclude": list(cfg.words), "pool_size": d.pool_size,
                "trajectory_steps": d.trajectory_steps or gen.num_inference_steps, "guidance": gen.guidance_scale,
                "seed": d.seed}))
        else:
            raise ValueError(f"unknown attack {name!r}")
    for i, t in enumerate(getattr(cfg, "transfer", None) or []):
        out.append(TransferAttack(t.column, cfg.resolve_path(t.source), f"transfer[{i}].source"))
    return out
