"""The toy model's eval pipeline and its attack context, as the attack and gate tests start from (one loader,
not a copy per module; each module still gets its own pipeline, so hooks one module attaches never leak)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def toy_eval_context(max_text_len: int | None = None, config: str = "toy.yaml") -> dict:
    """{cfg, model, pipe, spec_cls, ctx, gen}: configs/eval/<config>'s pipeline (toy.yaml: the toy CogVideoX,
    toy-wan.yaml: the toy Wan) in fp32 on the CPU, one torch thread; `max_text_len` caps the attack context's text
    length (default: the generation's max_sequence_length)."""
    import torch

    from eval.attacks.base import AttackContext
    from eval.config import load_eval_config
    from eval.generate import load_eval_pipeline
    from eval.planning import resolve_model
    from unlearn.models.families import family_of_model_dir, spec_class

    torch.set_num_threads(1)
    cfg = load_eval_config(ROOT / "configs" / "eval" / config)
    model = resolve_model(cfg)
    pipe = load_eval_pipeline(model, "float32", "cpu", cfg.generation)
    spec_cls = spec_class(family_of_model_dir(model))
    ctx = AttackContext(pipe, spec_cls, cfg.generation, max_text_len or cfg.generation.max_sequence_length)
    return {"cfg": cfg, "model": model, "pipe": pipe, "spec_cls": spec_cls, "ctx": ctx, "gen": cfg.generation}
