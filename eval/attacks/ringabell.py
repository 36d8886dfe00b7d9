"""Ring-A-Bell (Tsai et al., "Ring-A-Bell! How reliable are concept removal methods for diffusion models?",
ICLR 2024), after github chiayi-hsu/Ring-A-Bell, on the model spec's text encoder.

- Concept vector: v = mean_i (E(concept prompt_i) - E(normal prompt_i)) over paired prompts (a Ring-A-Bell
  style CSV: `prompt`, `normal prompt`), on the full [L, D] encoder output the transformer reads.
- `ringabell` (embedding-space): the benign prompt's embedding plus alpha * v replaces the encoded prompt.
- `ringabell-text` (discrete): a seeded genetic search over K words of the tokenizer's vocabulary (the
  concept words left out) for the text whose encoding is closest, by cosine similarity of the flattened
  [L, D] encodings, to E(benign) + alpha * v: an ordinary prompt anyone can type. Fixed budget: `population`
  x `generations` encodings per benign prompt; tournament selection, uniform crossover, per-word mutation,
  the best `elite` kept (the paper's GA; its population 200 x 3000 generations on CLIP is the GPU budget).
"""

from __future__ import annotations

import numpy as np
import torch

from eval.attacks.base import Attack, Attacked, unique


def concept_vector(ctx, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """[L, D] mean difference of the encodings of (concept prompt, normal prompt) pairs."""
    concept = ctx.encode([p for p, _ in pairs])
    normal = ctx.encode([n for _, n in pairs])
    return (concept - normal).mean(0)


class RingABellAttack(Attack):
    """options: alpha, pairs [(prompt, normal prompt)]."""

    kind = "ringabell"

    def vector(self, ctx) -> torch.Tensor:
        return concept_vector(ctx, [tuple(p) for p in self.options["pairs"]])

    def make(self, ctx, rows, base_context):
        v = self.vector(ctx)
        benign = ctx.encode([r.benign for r in rows])
        attacked = benign + float(self.options["alpha"]) * v
        return [Attacked(r.id, r.benign, attacked[i].float().cpu(), {"alpha": self.options["alpha"],
                                                                      "vector_norm": round(float(v.norm()), 4)})
                for i, r in enumerate(rows)]


def vocabulary(tokenizer, exclude: list[str]) -> list[str]:
    """Whole words of a SentencePiece vocabulary (pieces starting a word, letters only), minus `exclude`."""
    banned = {w.lower() for w in exclude}
    words = []
    for piece in tokenizer.get_vocab():
        if piece.startswith("\u2581") and piece[1:].isalpha() and piece[1:].lower() not in banned:
            words.append(piece[1:])
    return sorted(set(words))


def genetic_search(fitness, vocab_size: int, length: int, population: int, generations: int, mutation: float,
                   elite: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Maximise `fitness(pop [P, K] word indices) -> [P] scores`; returns (best individual, its score)."""
    pop = rng.integers(vocab_size, size=(population, length))
    scores = fitness(pop)
    for _ in range(generations):
        order = np.argsort(-scores)
        children = [pop[i].copy() for i in order[:elite]]
        while len(children) < population:
            a, b = (pop[max(rng.choice(population, 3, replace=False), key=lambda i: scores[i])] for _ in range(2))
            child = np.where(rng.random(length) < 0.5, a, b)
            flip = rng.random(length) < mutation
            child[flip] = rng.integers(vocab_size, size=int(flip.sum()))
            children.append(child)
        pop = np.stack(children)
        scores = fitness(pop)
    best = int(np.argmax(scores))
    return pop[best], float(scores[best])


class RingABellTextAttack(RingABellAttack):
    """options: alpha, pairs, exclude (words never used), population, generations, mutation, elite,
    length (words; null = the benign prompt's word count), seed."""

    kind = "ringabell-text"

    def make(self, ctx, rows, base_context):
        from unlearn.xt_sources import prompt_seed

        o = self.options
        v = self.vector(ctx)
        words = vocabulary(ctx.tokenizer, list(o["exclude"]))
        if not words:
            raise ValueError("ringabell-text: the tokenizer has no whole-word pieces left to search")
        found: dict[str, tuple[str, float]] = {}
        for benign in unique(r.benign for r in rows):
            target = (ctx.encode([benign])[0] + float(o["alpha"]) * v).flatten()

            def fitness(pop: np.ndarray) -> np.ndarray:
                enc = ctx.encode([" ".join(words[i] for i in ind) for ind in pop]).flatten(1)
                return torch.nn.functional.cosine_similarity(enc, target[None], dim=1).cpu().numpy()

            rng = np.random.default_rng(prompt_seed(int(o["seed"]), benign))
            length = int(o["length"] or len(benign.split()))
            best, score = genetic_search(fitness, len(words), length, int(o["population"]), int(o["generations"]),
                                         float(o["mutation"]), int(o["elite"]), rng)
            found[benign] = (" ".join(words[i] for i in best), score)
        return [Attacked(r.id, found[r.benign][0], None, {"cosine": round(found[r.benign][1], 5),
                                                          "benign": r.benign}) for r in rows]
