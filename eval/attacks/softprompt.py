"""`softprompt`: a white-box attack on the defended model (UnlearnDiffAtk / "circumventing concept erasure"
style, on the text embedding, which bypasses the tokenizer and the text encoder).

For each (concept prompt, benign prompt) pair: the base model (the eval method's `base_context()`) samples
`pool_size` trajectories of the concept prompt with its own sampler (`spec.sample_trajectory`, CFG at the
generation guidance); its predictions v_base(x_t, t, E(concept)) on those states are the targets. An additive
perturbation delta of E(benign) is optimised with Adam for `steps` steps so that the DEFENDED model's
prediction v_def(x_t, t, E(benign) + delta) matches them (MSE over `batch` random states a step), delta
projected after every step onto the ball ||delta|| <= budget x ||E(concept) - E(benign)|| (Frobenius norms of
the full [L, D] encodings: the natural distance between the concept prompt and its anchor). Gradients are
taken for delta only (`torch.autograd.grad`): no parameter of the model accumulates any.
"""

from __future__ import annotations

import torch

from eval.attacks.base import Attack, Attacked, unique


class SoftPromptAttack(Attack):
    """options: budget, steps, lr, pool_size, batch, trajectory_steps, guidance, seed."""

    kind = "softprompt"
    victim_dependent = True

    def make(self, ctx, rows, base_context):
        found = {pair: self._attack_pair(ctx, *pair, base_context) for pair in unique((r.prompt, r.benign) for r in rows)}
        return [Attacked(r.id, r.benign, found[(r.prompt, r.benign)][0], found[(r.prompt, r.benign)][1]) for r in rows]

    def _attack_pair(self, ctx, concept: str, benign: str, base_context) -> tuple[torch.Tensor, dict]:
        from unlearn.xt_sources import prompt_seed

        o = self.options
        spec = ctx.spec
        e_c, e_b = ctx.encode([concept, benign])
        uncond = ctx.encode([ctx.gen.negative_prompt or ""])
        radius = float(o["budget"]) * float((e_c - e_b).norm())
        gen = torch.Generator().manual_seed(prompt_seed(int(o["seed"]), concept))
        pool = int(o["pool_size"])
        with base_context(), torch.no_grad():
            states, times = spec.sample_trajectory(e_c[None].expand(pool, -1, -1), uncond, ctx.latent_shape(),
                                                   int(o["trajectory_steps"]), float(o["guidance"]), gen)
            x = states.flatten(0, 1)  # [S * pool, ...]
            t = times.repeat_interleave(pool)
            targets = torch.cat([spec.velocity(x[i:i + 8], t[i:i + 8], e_c[None].expand(len(x[i:i + 8]), -1, -1)).float()
                                 for i in range(0, len(x), 8)])
        delta = torch.zeros_like(e_b, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=float(o["lr"]))
        pick = torch.Generator().manual_seed(prompt_seed(int(o["seed"]) + 1, concept))
        batch = min(int(o["batch"]), len(x))
        losses = []
        for _ in range(int(o["steps"])):
            idx = torch.randperm(len(x), generator=pick)[:batch].to(x.device)
            pred = spec.velocity(x[idx], t[idx], (e_b + delta)[None].expand(batch, -1, -1)).float()
            loss = torch.nn.functional.mse_loss(pred, targets[idx])
            (delta.grad,) = torch.autograd.grad(loss, [delta])
            opt.step()
            with torch.no_grad():
                norm = float(delta.norm())
                if norm > radius:
                    delta.mul_(radius / norm)
            losses.append(float(loss.detach()))
        info = {"budget": float(o["budget"]), "radius": round(radius, 5), "delta_norm": round(float(delta.detach().norm()), 5),
                "loss_first": round(losses[0], 6) if losses else None, "loss_last": round(losses[-1], 6) if losses else None}
        return (e_b + delta).detach().float().cpu(), info
