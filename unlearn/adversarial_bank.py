"""Bank-then-erase (issue 25, defence 1; STEREO / persistent-AdvUnlearn style): erase on what attacks find.

The diagnosis of issue 25: the eraser fires on what the text says, and a soft prompt 0.5x the concept-anchor
distance away from a benign prompt switches it off while the backbone still draws the concept. This component
fine-tunes an eraser in `rounds`; each round
1. attacks the CURRENT eraser at evaluation strength from the training anchors: for `pairs` (concept prompt,
   anchor prompt) pairs of the training config, the project's soft-prompt attack (injected as `attack`:
   `eval.attacks.softprompt.SoftPromptAttack.attack_pair`, reused, not copied; this layer may not import eval),
   restart 0 warm-started from the pair's delta of the previous round (a persistent attack follows the eraser
   instead of searching from scratch), every restart kept: the bank GROWS by pairs x restarts rows a round;
2. adds adversarial-preservation rows: each pair's anchor prompt pushed (PGD, `preserve_steps`) to where the
   eraser moves the prediction most, kept only when the base model's prediction under it has not moved toward
   the concept (its projection on v_base(E(concept)) - v_base(E(anchor)) below `preserve_max_concept`);
3. trains `steps_per_round` steps of the training config's own loss plus
       w_bank x MSE(v_E(x, e_bank), v_b(x, E(anchor)) - eta (v_b(x, E(concept)) - v_b(x, E(anchor))))
       w_adv_preserve x MSE(v_E(x_a, e_pert), v_b(x_a, e_pert))
   on `batch` bank rows and `preserve_batch` preservation rows a step. A bank row's x_t comes from its concept
   prompt's states (the training x_t source) and, with bank_xt: both, from the base model's own trajectory under the
   attacked embedding (where sampling from the attack leads); x_a from the anchor's base trajectory.
Cost: rounds x pairs x restarts x attack_steps defended forward+backward passes (the attacks dominate), one extra
forward (with grad) of batch + preserve_batch rows and two no-grad ones a step. The rounds run after the eraser's
training (the training config's `bank:` key, `unlearn.bank_training`: each round checkpointed, resumed at the next
round). Settings and per-round record: the eraser file's `extra.bank`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from unlearn.bank_config import BankConfig  # noqa: F401 - the section, torch-free
from unlearn.losses import negative_guided_target, preserve_loss, unlearn_loss

BANK_KEY = "bank"  # EraserMeta.extra key of the settings and the round record


class SessionAttackContext:
    """What `eval.attacks` need of a context (`encode`, `spec`, `gen.negative_prompt`, `latent_shape`), served by a
    training session: texts from its embedding cache (no text encoder is loaded), the hooked transformer as the
    defended model, `session.objective.handle.disabled` as the base model."""

    class _Gen:
        negative_prompt = ""  # training samples with E("") as the unconditional branch

    def __init__(self, session):
        self.session, self.spec, self.gen = session, session.spec, self._Gen()
        param = next(session.spec.transformer.parameters())
        self.device, self.dtype = param.device, param.dtype

    def encode(self, prompts: list[str], chunk: int = 64) -> torch.Tensor:
        missing = [p for p in prompts if p not in self.session.emb]
        if missing:
            raise KeyError(f"bank attack: {missing[0]!r} is not a prompt of the training config (its embedding "
                           "cache holds the concept prompts, their anchors and the preserve prompts)")
        return torch.stack([self.session.emb[p] for p in prompts]).float().to(self.device)

    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.session.latent_shape)


@dataclass
class BankRows:
    """Rows of one kind: embeddings [N, L, D], the prompts whose base predictions make their target, and per row
    the states [S_i, ...] / times [S_i] its x_t is drawn from."""

    emb: list = field(default_factory=list)
    concept: list = field(default_factory=list)
    anchor: list = field(default_factory=list)
    states: list = field(default_factory=list)
    times: list = field(default_factory=list)
    round: list = field(default_factory=list)

    def add(self, emb, concept, anchor, states, times, rnd) -> None:
        for k, v in zip(("emb", "concept", "anchor", "states", "times", "round"),
                        (emb, concept, anchor, states, times, rnd)):
            getattr(self, k).append(v)

    def __len__(self) -> int:
        return len(self.emb)

    def sample(self, n: int, gen: torch.Generator):
        """n rows with replacement, one random state each: (idx, x, t, emb)."""
        idx = torch.randint(len(self), (n,), generator=gen).tolist()
        picks = [int(torch.randint(len(self.times[i]), (1,), generator=gen)) for i in idx]
        x = torch.stack([self.states[i][j] for i, j in zip(idx, picks)])
        t = torch.stack([self.times[i][j] for i, j in zip(idx, picks)])
        return idx, x, t, torch.stack([self.emb[i] for i in idx])


class AdversarialBank:
    """The kept attacks (`attacked`), the adversarial-preservation rows (`preserve`) and the last delta per pair."""

    def __init__(self):
        self.attacked, self.preserve = BankRows(), BankRows()
        self.warm: dict[tuple[str, str], torch.Tensor] = {}  # (concept, anchor) -> delta restart 0 starts from


class BankObjective(nn.Module):
    """The training config's objective (unchanged) plus the bank's two losses (module docstring)."""

    def __init__(self, objective, bank: AdversarialBank, cfg: BankConfig, session):
        super().__init__()
        self.objective, self.bank, self.cfg = objective, bank, cfg
        self.__dict__["session"] = session  # not a submodule: the engine sees the erasers only
        self.eta = cfg.eta if cfg.eta is not None else objective.loss_cfg.eta
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        out = self.objective(batch)
        spec, emb, cfg = self.objective.spec, self.session.emb, self.cfg
        dev = batch.x_c.device
        a, p = self.bank.attacked, self.bank.preserve
        n_a = cfg.batch if len(a) and cfg.w_bank > 0 else 0
        n_p = cfg.preserve_batch if len(p) and cfg.w_adv_preserve > 0 else 0
        if not n_a + n_p:
            return out
        parts = []
        for rows, n in ((a, n_a), (p, n_p)):
            idx, x, t, e = rows.sample(n, self.gen) if n else ([], batch.x_c[:0].cpu(), batch.t_c[:0].cpu(),
                                                             batch.emb_c[:0].cpu())
            parts.append((idx, x.to(dev), t.to(dev), e.to(dev, batch.emb_c.dtype)))
        (ia, xa, ta, ea), (_, xp, tp, ep) = parts
        e_c = torch.stack([emb[a.concept[i]] for i in ia]).to(ea) if n_a else ea
        e_b = torch.stack([emb[a.anchor[i]] for i in ia]).to(ea) if n_a else ea
        with torch.no_grad(), self.objective.handle.disabled(), self.objective._amp(dev):
            v0 = spec.velocity(torch.cat([xa, xa, xp]), torch.cat([ta, ta, tp]), torch.cat([e_c, e_b, ep])).float()
        v_c, v_b, v_p = v0.split([n_a, n_a, n_p])
        with self.objective._amp(dev):
            v_e = spec.velocity(torch.cat([xa, xp]), torch.cat([ta, tp]), torch.cat([ea, ep])).float()
        v_ea, v_ep = v_e.split([n_a, n_p])
        zero = out["loss"].new_zeros(())
        out["l_bank"] = unlearn_loss(v_ea, negative_guided_target(v_c, v_b, self.eta)) if n_a else zero
        out["l_adv_preserve"] = preserve_loss(v_ep, v_p) if n_p else zero
        out["loss"] = out["loss"] + cfg.w_bank * out["l_bank"] + cfg.w_adv_preserve * out["l_adv_preserve"]
        return out


def bank_pairs(session, cfg: BankConfig) -> list[tuple[str, str]]:
    """`cfg.pairs` (concept prompt, anchor prompt) pairs: concept prompt i (seeded order) with anchor i mod K."""
    items = session.data.items
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    out = []
    for i, j in enumerate(order[:cfg.pairs]):
        refs = items[j].references
        out.append((items[j].prompt, refs[i % len(refs)]))
    return out


def base_trajectory(session, emb: torch.Tensor, cfg: BankConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's (erasers off) sampler states [S, ...] and times [S] under one embedding [L, D]."""
    spec = session.spec
    dev = next(spec.transformer.parameters()).device
    uncond = session.emb[""].unsqueeze(0).to(dev)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad(), session.objective.handle.disabled():
        states, times = spec.sample_trajectory(emb[None].to(dev, uncond.dtype), uncond, session.latent_shape,
                                               cfg.trajectory_steps, cfg.guidance, gen)
    return states[:, 0].cpu(), times.cpu()


def concept_states(session, prompt: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n x_t of a concept prompt from the training x_t source (its trajectory pool, or noise)."""
    return session.source.draw([prompt] * n, torch.Generator().manual_seed(seed))


def adversarial_anchor(session, cfg: BankConfig, concept: str, anchor: str, seed: int) -> tuple[torch.Tensor | None, dict]:
    """PGD on E(anchor) + delta (||delta|| <= budget x ||E(concept) - E(anchor)||) toward the largest eraser effect
    ||v_E - v_b||^2 on the anchor's base trajectory; (embedding or None when refused, info)."""
    spec, handle, emb = session.spec, session.objective.handle, session.emb
    dev = next(spec.transformer.parameters()).device
    e_a, e_c = emb[anchor].float().to(dev), emb[concept].float().to(dev)
    radius = cfg.budget * float((e_c - e_a).norm())
    x, t = base_trajectory(session, e_a, cfg, seed)
    x, t = x.to(dev), t.to(dev)
    gen = torch.Generator().manual_seed(seed + 1)
    g0 = torch.randn(e_a.shape, generator=gen).to(dev)
    delta = (g0 * (0.5 * radius / float(g0.norm()))).requires_grad_(True)  # a random start: 0 is a saddle (v_E = v_b)
    dt = emb[anchor].dtype  # the model's text dtype
    for _ in range(cfg.preserve_steps):
        idx = torch.randperm(len(x), generator=gen)[:cfg.attack_batch].to(dev)
        e = (e_a + delta)[None].expand(len(idx), -1, -1).to(dt)
        with torch.no_grad(), handle.disabled():
            v_b = spec.velocity(x[idx], t[idx], e).float()
        loss = torch.nn.functional.mse_loss(spec.velocity(x[idx], t[idx], e).float(), v_b)
        (g,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            delta += 0.2 * radius * g / g.norm().clamp_min(1e-12)
            delta *= min(1.0, radius / max(float(delta.norm()), 1e-12))
    def base(e):
        with torch.no_grad(), handle.disabled():
            return torch.cat([spec.velocity(x[i:i + 8], t[i:i + 8], e[None].expand(len(x[i:i + 8]), -1, -1).to(dt))
                              .float() for i in range(0, len(x), 8)])

    v_a, v_c = base(e_a), base(e_c)  # how far toward the concept the BASE prediction moved: the projection on
    d = (v_c - v_a).flatten()        # v_b(E(concept)) - v_b(E(anchor)), as a fraction of it
    delta, score = delta.detach(), float("inf")
    for _ in range(1 + cfg.preserve_shrink):  # refused: the same direction at half the length (6 of 8 were refused
        score = float(((base(e_a + delta) - v_a).flatten() @ d) / (d @ d).clamp_min(1e-12))  # at full length)
        if score <= cfg.preserve_max_concept:
            break
        delta = delta * 0.5
    keep = score <= cfg.preserve_max_concept
    info = {"concept_score": round(score, 4), "kept": keep, "scale": round(float(delta.norm()) / radius, 4),
            "states": (x.cpu(), t.cpu())}
    return ((e_a + delta).cpu() if keep else None), info


AttackFn = Callable[[str, str, "torch.Tensor | None"], "tuple[torch.Tensor, dict]"]


def attack_round(session, bank: AdversarialBank, cfg: BankConfig, attack: AttackFn, rnd: int, log=print) -> dict:
    """One round's attacks on the current eraser (warm-started) and adversarial anchors; the bank grows."""
    t0 = time.perf_counter()
    rec = {"round": rnd, "pairs": [], "preserve_scores": [], "preserve_scales": []}
    for k, (concept, anchor) in enumerate(bank_pairs(session, cfg)):
        seed = cfg.seed + 7919 * rnd + k
        warm = bank.warm.get((concept, anchor))
        embeds, info = attack(concept, anchor, warm)  # [R, L, D] through the defended model
        e_a = session.emb[anchor].float().cpu()
        losses = info.get("loss_last") or [0.0] * len(embeds)
        bank.warm[(concept, anchor)] = embeds[min(range(len(embeds)), key=lambda r: losses[r])].float().cpu() - e_a
        xc, tc = concept_states(session, concept, 4 * cfg.trajectory_steps, seed)
        for e in embeds:
            xs, ts = [xc], [tc]
            if cfg.bank_xt == "both":
                xb, tb = base_trajectory(session, e, cfg, seed)
                xs, ts = xs + [xb.to(xc.dtype)], ts + [tb.to(tc.dtype)]
            bank.attacked.add(e.float().cpu(), concept, anchor, torch.cat(xs), torch.cat(ts), rnd)
        rec["pairs"].append({"concept": concept, "anchor": anchor, "warm": warm is not None,
                             "loss_first": info.get("loss_first"), "loss_last": info.get("loss_last")})
        if cfg.preserve_steps:
            e_p, pinfo = adversarial_anchor(session, cfg, concept, anchor, seed)
            rec["preserve_scores"].append(pinfo["concept_score"])
            rec["preserve_scales"].append(pinfo["scale"])
            if e_p is not None:
                bank.preserve.add(e_p, concept, anchor, *pinfo["states"], rnd)
        log(f"bank round {rnd} pair {k + 1}: {concept!r} <- {anchor!r} loss {info.get('loss_last')}")
    rec.update(bank_rows=len(bank.attacked), preserve_rows=len(bank.preserve),
               seconds=round(time.perf_counter() - t0, 1))
    return rec
