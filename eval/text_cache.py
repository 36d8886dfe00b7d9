"""Fill the text-embedding cache with the prompts of evals that have not run yet (issue 22).

Why: an eval worker loads no text encoder when the default embedding cache holds every prompt of its eval and the
negative prompt (`eval.workers.text_cache_root`); nothing fills it with eval prompts by itself, so every eval of a
search loaded T5-XXL (~9 GB read, held on each GPU) to encode the same few prompts again. A search driver calls
`fill_eval_text_cache` once before its trials, with every eval it will run (trials' final evals, proxies, baselines):
the text encoder loads there once per cache key and never in an eval worker (but SAFREE's, which runs the encoder on
token-edited prompts: eval.methods `needs_text_encoder`).

    stats = fill_eval_text_cache([(ecfg, limit), ...], cwd)   # {"prompts", "encoded", "encoder_loads"}

The entries are keyed as the workers read them (`eval.workers.open_text_cache`: model, dtype, max length); the
prompts are the planned rows (`eval.planning.plan_eval`, which writes nothing), so a limit or a prompt set the eval
would not use adds nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def eval_prompts(ecfg, limit: int | None) -> tuple[str, str, dict, list[str]]:
    """(model path, dtype, generation, texts) of one eval as it would be planned: its prompts, its method's own texts
    (a negprompt's negative prompt, a blocklist's replacement: eval.methods `texts`) and the negative prompt."""
    from eval.planning import plan_eval

    with tempfile.TemporaryDirectory() as tmp:  # planning writes nothing; an output folder is still asked for
        plan = plan_eval(ecfg, Path(tmp) / "plan", limit=limit)
    gen = ecfg.generation.model_dump(mode="json")
    texts = [*(r.prompt for r in plan.rows), *plan.method.texts(), gen.get("negative_prompt") or ""]
    return str(plan.model_path), ecfg.model.dtype, gen, texts


def fill_eval_text_cache(evals: list[tuple], cwd: str | None = None) -> dict[str, int]:
    """Encode every prompt of `evals` ((EvalConfig, limit) pairs) not yet in the default embedding cache; relative
    prompt paths resolve from `cwd`. Returns how many prompts the evals use, how many were encoded, and how many
    times a text encoder was loaded for it (0 when everything was cached already)."""
    from eval.workers import open_text_cache
    from unlearn.models.registry import cache_root

    root = str(cache_root() / "embeddings")
    groups: dict[tuple, tuple[dict, list[str]]] = {}
    with contextlib.chdir(cwd or os.getcwd()):
        for ecfg, limit in evals:
            model, dtype, gen, prompts = eval_prompts(ecfg, limit)
            length = gen.get("max_sequence_length")
            key = (model, dtype, length)  # what the cache's fingerprint depends on (eval.workers.open_text_cache)
            groups.setdefault(key, (gen, []))[1].extend(prompts)
    stats = {"prompts": 0, "encoded": 0, "encoder_loads": 0}
    for (model, dtype, _), (gen, prompts) in groups.items():
        cache = open_text_cache(model, dtype, gen, root)
        stats["prompts"] += len(dict.fromkeys(prompts))
        stats["encoded"] += cache.fill(list(dict.fromkeys(prompts)))
        stats["encoder_loads"] += cache.encoder_loads
    return stats
