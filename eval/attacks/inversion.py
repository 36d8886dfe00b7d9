"""`inversion`: unbounded pseudo-token inversion through the text encoder's input embeddings (concept inversion,
Pham et al. 2024 / PROBE-style), optimised through the defended model (adaptive).

k new token embeddings P [k, D_in] are learned: every row's concept prompt, its concept words replaced by k
placeholder tokens ("a red bar moving up" -> "a <p1> <p2> <p3> bar moving up"), is encoded by the FROZEN text
encoder with P in the placeholders' input-embedding slots (a forward hook on its token embedding, so the
family's own `encode_prompts` runs unchanged: CogVideoX T5 and Wan UMT5 alike); P is optimised with Adam so that
the DEFENDED model (eraser hooks on) predicts, on the base model's own concept trajectories (`base_pool`), what
the base model predicts for the concept prompt. Nothing bounds P: this is what a user who can add words to the
vocabulary (a textual-inversion file) gets, the strongest text-side attacker short of the transformer itself.

One P is learned for all rows (universal, like a concept-inversion token: one file that works on every prompt);
`restarts` independent runs, each starting at other anchor words' embeddings (`start_ids`: with one token the
start is a benign prompt, so the row's floor is the attack's own baseline; the toy model draws red for a prompt
without a colour, so a random start would not be), give one embedding per restart per row ([R, L, D]), counted
by the runner as attacked when any restart succeeds. Cost per step: one text-encoder forward+backward and
one defended transformer forward+backward on `batch` states.
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager

import torch

from eval.attacks.base import Attack, Attacked, unique


def placeholder_word(tokenizer, avoid: list[str]) -> tuple[str, int]:
    """A whole word that is one token and occurs in none of `avoid` (its slots are overwritten, so which word it
    is does not matter, only that its id marks the placeholders and nothing else)."""
    used = {w.lower() for text in avoid for w in text.split()}
    for piece in sorted(tokenizer.get_vocab()):
        word = piece[1:]
        if piece.startswith("\u2581") and word.isalpha() and word.lower() not in used:
            ids = tokenizer(word, add_special_tokens=False).input_ids
            if len(ids) == 1:
                return word, ids[0]
    raise ValueError("inversion: the tokenizer has no one-token word left to mark the placeholders")


def start_ids(tokenizer, rows) -> list[int]:
    """Token ids of the anchor words (in a benign prompt, in no concept prompt; one token each): restart r starts
    its slots at them, so with one token the start IS a benign prompt ("a green bar moving up") and the row's
    floor (its benign prompt alone) is the attack's no-optimisation baseline. Empty: start at random rows."""
    concept = {w.lower() for r in rows for w in r.prompt.split()}
    words = unique(w for r in rows for w in r.benign.split() if w.lower() not in concept)
    ids = [tokenizer(w, add_special_tokens=False).input_ids for w in words]
    return [i[0] for i in ids if len(i) == 1]


def template(prompt: str, words: list[str], placeholder: str, k: int) -> str:
    """`prompt` with each concept word replaced by k placeholders (prepended when it names none)."""
    slots = " ".join([placeholder] * k)
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.I)
    out, n = pattern.subn(slots, prompt, count=1)  # one set of k slots per prompt
    return out if n else f"{slots} {prompt}"


def input_embedding(text_encoder):
    """The embedding module the encoder's forward really calls: T5/UMT5's `encoder.embed_tokens` (recent
    transformers no longer make it the same object as `get_input_embeddings()`), else the latter."""
    inner = getattr(getattr(text_encoder, "encoder", None), "embed_tokens", None)
    return inner if inner is not None else text_encoder.get_input_embeddings()


@contextmanager
def pseudo_tokens(text_encoder, token_id: int, vectors: torch.Tensor):
    """Within: the text encoder's input embedding returns `vectors[j]` at the j-th `token_id` of every prompt."""
    k = len(vectors)

    def hook(module, inputs, output):
        mask = inputs[0] == token_id
        counts = mask.sum(1)
        if not bool((counts == k).all()):
            raise ValueError(f"inversion: a template holds {counts.tolist()} placeholders, expected {k} each "
                             "(cut by the text encoder's length limit?)")
        out = output.clone()
        out[mask] = vectors.to(out.dtype).repeat(len(out), 1)  # row-major: row b's k slots in order
        return out

    handle = input_embedding(text_encoder).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class InversionAttack(Attack):
    """options: tokens (k), steps, lr, restarts, words (the concept words the placeholders replace), batch,
    trajectory_steps, guidance, seed."""

    kind = "inversion"
    victim_dependent = True

    def make(self, ctx, rows, base_context):
        from eval.attacks.softprompt import base_pool
        from unlearn.xt_sources import prompt_seed

        o = self.options
        k = int(o["tokens"])
        concepts = unique(r.prompt for r in rows)
        word, token_id = placeholder_word(ctx.tokenizer, [p for r in rows for p in (r.prompt, r.benign)])
        templates = [template(c, list(o["words"]), word, k) for c in concepts]
        x, t, targets = base_pool(ctx, ctx.encode(concepts), o, base_context, "\n".join(concepts))
        which = torch.arange(len(x)) % len(concepts)  # state i comes from concept prompt i % P (base_pool's order)
        table = input_embedding(ctx.text_encoder).weight.detach().float()
        starts = start_ids(ctx.tokenizer, rows)
        found, infos = [], []
        for restart in range(int(o["restarts"])):
            gen = torch.Generator().manual_seed(prompt_seed(int(o["seed"]) + 1000 * restart, "inversion"))
            ids = ([starts[(restart + j) % len(starts)] for j in range(k)] if starts
                   else torch.randint(len(table), (k,), generator=gen).tolist())
            init = table[torch.tensor(ids, device=table.device)].clone()
            vectors, info = self._optimise(ctx, templates, token_id, init, x, t, targets, which, gen)
            with torch.no_grad(), pseudo_tokens(ctx.text_encoder, token_id, vectors):
                found.append(self._encode(ctx, templates).float().cpu())  # [P, L, D]
            infos.append(info)
        info = {"tokens": k, "placeholder": word, "restarts": len(found),
                **{key: [i[key] for i in infos] for key in infos[0]}}
        stacked = torch.stack(found, 1)  # [P, R, L, D]
        at = {c: i for i, c in enumerate(concepts)}
        return [Attacked(r.id, r.benign, stacked[at[r.prompt]],
                         {**info, "template": templates[at[r.prompt]]}) for r in rows]

    @staticmethod
    def _encode(ctx, texts: list[str]) -> torch.Tensor:
        # the family's own encoding without its @torch.no_grad(): the same computation, differentiable in P
        encode = inspect.unwrap(ctx.spec_cls.encode_prompts)
        enc = encode(ctx.tokenizer, ctx.text_encoder, list(texts), ctx.max_length)
        return enc.to(ctx.device, torch.float32)

    def _optimise(self, ctx, templates, token_id, init, x, t, targets, which, gen):
        o, spec = self.options, ctx.spec
        vectors = init.requires_grad_(True)
        opt = torch.optim.Adam([vectors], lr=float(o["lr"]))
        batch = min(int(o["batch"]), len(x))
        losses = []
        for _ in range(int(o["steps"])):
            idx = torch.randperm(len(x), generator=gen)[:batch]
            with pseudo_tokens(ctx.text_encoder, token_id, vectors):
                emb = self._encode(ctx, [templates[int(i)] for i in which[idx]])
            idx = idx.to(x.device)
            pred = spec.velocity(x[idx], t[idx], emb.to(ctx.dtype)).float()
            loss = torch.nn.functional.mse_loss(pred, targets[idx])
            (vectors.grad,) = torch.autograd.grad(loss, [vectors])
            opt.step()
            losses.append(float(loss.detach()))
        vectors = vectors.detach()
        return vectors, {"token_norm": round(float(vectors.norm(dim=1).mean()), 4),
                         "loss_first": round(losses[0], 6) if losses else None,
                         "loss_last": round(losses[-1], 6) if losses else None}
