"""`discrete`: a white-box discrete prompt attack against the defended model (UnlearnDiffAtk / P4D-style, with
GCG's gradient-guided token substitution) that returns an ordinary text prompt: what a user of a deployed model
can actually type.

Per row: `tokens` adversarial words are prepended to the benign prompt ("w1 w2 w3 a green bar moving up"), each
starting at an anchor word (`inversion.start_ids`). Their input embeddings are one-hot rows of the tokenizer's
whole-word vocabulary (the config's concept words left out) times the text encoder's embedding table, put in
place by the same forward hook as the pseudo-token inversion, so the family's own encoder runs unchanged. Each
step: the gradient of the matching loss (the defended model's prediction on the base model's concept
trajectories vs the base model's concept prediction, `softprompt.base_pool`) w.r.t. the one-hots gives each
slot's `topk` most promising words; `candidates` random single-word swaps among them are scored exactly (no
grad, the same x_t batch) and the best is kept when it lowers the loss. Cost per step: one encoder+transformer
forward/backward and `candidates` forwards on `batch` states, per row.
"""

from __future__ import annotations

import torch

from eval.attacks.base import Attack, Attacked, unique
from eval.attacks.inversion import InversionAttack, input_embedding, placeholder_word, pseudo_tokens, start_ids
from eval.attacks.ringabell import vocabulary


class DiscreteAttack(Attack):
    """options: tokens, steps, candidates, topk, batch, exclude (words never used), pool_size, trajectory_steps,
    guidance, seed."""

    kind = "discrete"
    victim_dependent = True

    def make(self, ctx, rows, base_context):
        o = self.options
        words = vocabulary(ctx.tokenizer, list(o["exclude"]))
        ids = [ctx.tokenizer(w, add_special_tokens=False).input_ids for w in words]
        keep = [i for i, t in enumerate(ids) if len(t) == 1]  # one token per word: a slot is a word
        words, vocab_ids = [words[i] for i in keep], torch.tensor([ids[i][0] for i in keep])
        if not words:
            raise ValueError("discrete: the tokenizer has no one-token whole words left to search")
        mark, mark_id = placeholder_word(ctx.tokenizer, [p for r in rows for p in (r.prompt, r.benign)])
        table = input_embedding(ctx.text_encoder).weight.detach().float()[vocab_ids.to(ctx.device)]  # [V, D_in]
        starts = [int((vocab_ids == s).nonzero()[0]) for s in start_ids(ctx.tokenizer, rows) if (vocab_ids == s).any()]
        found = {pair: self._search(ctx, *pair, base_context, words, table, mark, mark_id, starts)
                 for pair in unique((r.prompt, r.benign) for r in rows)}
        return [Attacked(r.id, found[(r.prompt, r.benign)][0], None, found[(r.prompt, r.benign)][1]) for r in rows]

    def _search(self, ctx, concept, benign, base_context, words, table, mark, mark_id, starts):
        from eval.attacks.softprompt import base_pool
        from unlearn.xt_sources import prompt_seed

        o, spec = self.options, ctx.spec
        k = int(o["tokens"])
        e_c = ctx.encode([concept])
        x, t, targets = base_pool(ctx, e_c.expand(int(o["pool_size"]), -1, -1), o, base_context, concept)
        gen = torch.Generator().manual_seed(prompt_seed(int(o["seed"]), concept))
        text = " ".join([mark] * k + [benign])
        cur = torch.tensor([starts[j % len(starts)] for j in range(k)] if starts
                           else torch.randint(len(words), (k,), generator=gen).tolist())
        batch = min(int(o["batch"]), len(x))

        def loss_of(choice: torch.Tensor, idx, vectors=None) -> torch.Tensor:
            vecs = table[choice] if vectors is None else vectors
            with pseudo_tokens(ctx.text_encoder, mark_id, vecs):
                emb = InversionAttack._encode(ctx, [text])
            pred = spec.velocity(x[idx], t[idx], emb.to(ctx.dtype).expand(len(idx), -1, -1)).float()
            return torch.nn.functional.mse_loss(pred, targets[idx])

        first = best = None
        for _ in range(int(o["steps"])):
            idx = torch.randperm(len(x), generator=gen)[:batch].to(x.device)
            onehot = torch.nn.functional.one_hot(cur.to(table.device), len(words)).float().requires_grad_(True)
            loss = loss_of(cur, idx, onehot @ table)
            (grad,) = torch.autograd.grad(loss, [onehot])
            best = float(loss.detach())
            first = best if first is None else first
            top = (-grad).topk(min(int(o["topk"]), len(words)), dim=1).indices.cpu()  # [k, topk]
            with torch.no_grad():
                for _ in range(int(o["candidates"])):
                    cand = cur.clone()
                    slot = int(torch.randint(k, (1,), generator=gen))
                    cand[slot] = top[slot, int(torch.randint(top.shape[1], (1,), generator=gen))]
                    c_loss = float(loss_of(cand, idx))
                    if c_loss < best:
                        best, cur = c_loss, cand
        prompt = " ".join([words[int(i)] for i in cur] + [benign])
        return prompt, {"tokens": k, "loss_first": None if first is None else round(first, 6),
                        "loss_last": None if best is None else round(best, 6), "benign": benign}
