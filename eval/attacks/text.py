"""Text attacks that need no model: `clean` (the concept prompts as given) and `paraphrase` (held-out
rewordings of them, from the prompt file's paraphrase column: on the toy world synonyms and phrasings the
eraser never trained on)."""

from __future__ import annotations

from eval.attacks.base import Attack, Attacked


class CleanAttack(Attack):
    kind = "clean"

    def make(self, ctx, rows, base_context):
        return [Attacked(r.id, r.prompt) for r in rows]


class ParaphraseAttack(Attack):
    kind = "paraphrase"

    def make(self, ctx, rows, base_context):
        missing = [r.id for r in rows if not r.paraphrase]
        if missing:  # planning checks the column; a row without one would silently be a clean prompt
            raise ValueError(f"paraphrase attack: rows {missing[:5]} have no paraphrase")
        return [Attacked(r.id, r.paraphrase) for r in rows]
