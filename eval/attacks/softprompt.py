"""`softprompt`: a white-box attack on the defended model (UnlearnDiffAtk / "circumventing concept erasure"
style, on the text embedding, which bypasses the tokenizer and the text encoder).

For each (concept prompt, benign prompt) pair: the base model (the eval method's `base_context()`) samples
`pool_size` trajectories of the concept prompt with its own sampler (`spec.sample_trajectory`, CFG at the
generation guidance); its predictions v_base(x_t, t, E(concept)) on those states are the targets (`base_pool`,
shared with the pseudo-token inversion). An additive perturbation delta of E(benign) is optimised with Adam for
`steps` steps so that the DEFENDED model's prediction v_def(x_t, t, E(benign) + delta) matches them (MSE over
`batch` random states a step), delta projected after every step onto the ball ||delta|| <= budget x
||E(concept) - E(benign)|| (Frobenius norms of the full [L, D] encodings: the natural distance between the
concept prompt and its anchor). Gradients are taken for delta only (`torch.autograd.grad`): no parameter of the
model accumulates any.

Evaluation strength (issue 25): a 60-step single start overestimated robustness (0.47 -> 0.59 ASR at 0.5x with
180 steps), so the defaults are 180 steps and `restarts` >= 2 starts per pair: restart 0 starts at delta = 0 (the
shipped attack), restart r > 0 at a seeded random direction at half the radius. Every restart's embedding is
returned ([R, L, D]); the runner generates each and counts the row attacked when ANY succeeds (worst case over
restarts). Cost: R x steps defended forward+backward passes per pair.

`subspace` (the `softprompt-subspace` attack): delta = c @ U, U an orthonormal basis [K, L*D] of the span of the
rows' valid prompts' encodings (concept, benign, paraphrase), so the attack may only move within what real
prompts span (the issue measured only 30-33 % of the free attack's energy there). ||delta|| = ||c|| (U
orthonormal), so the same budget ball applies.
"""

from __future__ import annotations

import torch

from eval.attacks.base import Attack, Attacked, unique


def base_pool(ctx, concept_embeds: torch.Tensor, o: dict, base_context, seed_text: str):
    """The base model's concept trajectories and its predictions on them: (x [N, ...], t [N], targets [N, ...]).

    concept_embeds [P, L, D]: one trajectory per row (P = pool size, or one per concept prompt of a universal
    attack); o: pool_size is not read here, trajectory_steps, guidance, seed."""
    from unlearn.xt_sources import prompt_seed

    spec = ctx.spec
    uncond = ctx.encode([ctx.gen.negative_prompt or ""])
    gen = torch.Generator().manual_seed(prompt_seed(int(o["seed"]), seed_text))
    pool = len(concept_embeds)
    with base_context(), torch.no_grad():
        parts = []  # 8 trajectories at a time: a universal attack samples one per concept prompt (64+)
        for i in range(0, pool, 8):
            states, times = spec.sample_trajectory(concept_embeds[i:i + 8], uncond, ctx.latent_shape(),
                                                   int(o["trajectory_steps"]), float(o["guidance"]), gen)
            parts.append(states)
        states = torch.cat(parts, 1)  # [S, pool, ...]
        x = states.flatten(0, 1)  # [S * pool, ...], state s of trajectory p at index s * pool + p
        t = times.repeat_interleave(pool)
        emb = concept_embeds.repeat(len(times), 1, 1)
        targets = torch.cat([spec.velocity(x[i:i + 8], t[i:i + 8], emb[i:i + 8]).float() for i in range(0, len(x), 8)])
    return x, t, targets


def subspace_basis(ctx, rows) -> torch.Tensor:
    """[K, L*D] orthonormal basis of the span of the rows' prompts' encodings (concept, benign, paraphrase)."""
    texts = unique(p for r in rows for p in (r.prompt, r.benign, r.paraphrase) if p)
    mat = ctx.encode(texts).flatten(1).T  # [L*D, K]
    q, r = torch.linalg.qr(mat)
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max()  # drop directions of linearly dependent prompts
    return q[:, keep].T.contiguous()


class SoftPromptAttack(Attack):
    """options: budget, steps, lr, restarts, subspace, pool_size, batch, trajectory_steps, guidance, seed."""

    kind = "softprompt"
    victim_dependent = True

    def make(self, ctx, rows, base_context):
        basis = subspace_basis(ctx, rows) if self.options.get("subspace") else None
        found = {pair: self.attack_pair(ctx, *pair, base_context, basis)
                 for pair in unique((r.prompt, r.benign) for r in rows)}
        return [Attacked(r.id, r.benign, *found[(r.prompt, r.benign)]) for r in rows]

    def attack_pair(self, ctx, concept: str, benign: str, base_context, basis=None,
                    warm: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """One (concept, benign) pair -> ([R, L, D] attacked embeddings, info). warm: a delta [L, D] restart 0 starts
        from instead of 0 (projected onto the ball): a bank's previous round (unlearn.adversarial_bank) continues
        its attack on the updated eraser instead of searching from scratch."""
        from unlearn.xt_sources import prompt_seed

        o = self.options
        e_c, e_b = ctx.encode([concept, benign])
        radius = float(o["budget"]) * float((e_c - e_b).norm())
        x, t, targets = base_pool(ctx, e_c[None].expand(int(o["pool_size"]), -1, -1), o, base_context, concept)
        out, infos = [], []
        for restart in range(int(o.get("restarts", 1))):
            pick = torch.Generator().manual_seed(prompt_seed(int(o["seed"]) + 1 + 1000 * restart, concept))
            delta, info = self._optimise(ctx, e_b, x, t, targets, radius, basis, restart, pick,
                                         warm if restart == 0 else None)
            out.append((e_b + delta).float().cpu())
            infos.append(info)
        info = {"budget": float(o["budget"]), "radius": round(radius, 5), "restarts": len(out),
                "subspace_dim": None if basis is None else int(basis.shape[0]),
                **{k: [i[k] for i in infos] for k in infos[0]}}
        return torch.stack(out), info

    def _optimise(self, ctx, e_b, x, t, targets, radius: float, basis, restart: int, pick,
                  warm=None) -> tuple[torch.Tensor, dict]:
        o, spec = self.options, ctx.spec
        shape = (basis.shape[0],) if basis is not None else tuple(e_b.shape)
        init = torch.zeros(shape, device=e_b.device)
        if warm is not None and basis is None:  # inside the ball: the previous round's delta, shrunk if it is longer
            init = warm.to(e_b.device, torch.float32).reshape(shape) * min(1.0, radius / max(float(warm.norm()), 1e-12))
        elif restart > 0:  # a random start inside the ball (half the radius): explores another basin
            g = torch.randn(shape, generator=pick).to(e_b.device)
            init = g * (0.5 * radius / float(g.norm()))
        param = init.clone().requires_grad_(True)
        to_delta = (lambda c: (c @ basis).view_as(e_b)) if basis is not None else (lambda d: d)
        opt = torch.optim.Adam([param], lr=float(o["lr"]))
        batch = min(int(o["batch"]), len(x))
        losses = []
        for _ in range(int(o["steps"])):
            idx = torch.randperm(len(x), generator=pick)[:batch].to(x.device)
            pred = spec.velocity(x[idx], t[idx], (e_b + to_delta(param))[None].expand(batch, -1, -1)).float()
            loss = torch.nn.functional.mse_loss(pred, targets[idx])
            (param.grad,) = torch.autograd.grad(loss, [param])
            opt.step()
            with torch.no_grad():  # project onto the ball (||delta|| = ||c|| for an orthonormal basis)
                norm = float(param.norm())
                if norm > radius:
                    param.mul_(radius / norm)
            losses.append(float(loss.detach()))
        delta = to_delta(param.detach())
        return delta, {"delta_norm": round(float(delta.norm()), 5),
                       "loss_first": round(losses[0], 6) if losses else None,
                       "loss_last": round(losses[-1], 6) if losses else None}
