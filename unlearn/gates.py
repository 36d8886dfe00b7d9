"""Content gate (issue 25, "an eraser that fires on content, not on text"): a defence the text cannot switch off.

The diagnosis of issue 25: a trained eraser fires on what the TEXT says; the soft-prompt attack moves the text so
it no longer fires while the backbone still draws the concept. The gate reads the concept from what the model is
about to draw instead: at every transformer call it turns the call's own prediction into the predicted clean
latent x0_hat (v-prediction: x0_hat = sqrt(a_t) x_t - sqrt(1 - a_t) v), scores it with a tiny probe (an MLP per
latent position, soft-max pooled over positions: "the concept is somewhere in the video"), and adds a negatively
guided correction scaled by the gate g in [0, 1]:

    v <- v + strength * g(x0_hat, t) * (mean_k v_base(x_t, E(toward_k)) - v_base(x_t, E(concept)))

The correction's prompts are FIXED encodings stored with the gate (not the caller's text), and run through the
base model (erasers off), so an attacker who controls the text controls neither the correction nor its direction;
the only way around it is to make the content not look like the concept, which is the defence's aim. Everything
is differentiable (probe, pooling, sigmoid): white-box attacks optimise through the gate (eval.attacks call the
transformer with the hooks on). The correction passes carry no gradient to the text: they do not depend on it.

Batches with classifier-free guidance hold the same x_t twice (unconditional, conditional rows): their gate is the
minimum over the rows sharing x_t, so both branches get the same correction (it then survives CFG unchanged:
(1 - w) + w = 1), and the unconditional branch (the toy's colourless prior is red) cannot switch it on alone.

The gate is part of the eraser file: a submodule `gate` of `EraserSet` (tensors `gate.*` in eraser.safetensors,
its settings in eraser_config.json `extra.gate`), hooked by `unlearn.eraser.attach`, switched off with the erasers
by `handle.disabled()`, so `load_eraser(pipe, dir)` gives the gated model in the usual two lines.
"""

from __future__ import annotations

import inspect
import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from unlearn.config import Strict

GATE_KEY = "gate"  # EraserMeta.extra key of the gate's settings


class GateConfig(Strict):
    """The `gate:` section (configs/gates/toy.yaml): which gate, its correction, how its probe is trained."""

    name: Literal["none", "content"] = Field("content", description=(
        "none: no gate (the eraser as trained). content: a probe on the model's own predicted x0 scales a "
        "negatively guided correction away from the concept (unlearn.gates)."))
    concept_prompt: str = Field(description=(
        "The prompt whose prediction the correction moves away from (encoded once, stored with the gate)."))
    toward_prompts: list[str] = Field(min_length=1, description=(
        "Prompts whose mean prediction the correction moves toward (encoded once, stored; one transformer row each "
        "per gated call: keep it to 1-3)."))
    correction: Literal["anchors", "eraser"] = Field("anchors", description=(
        "anchors: mean_k v_base(x, toward_k) - v_base(x, concept) (negative guidance with fixed prompts). eraser: "
        "v_erased(x, concept) - v_base(x, concept), the eraser's own effect under the concept prompt, applied "
        "whatever the text says (needs an eraser)."))
    strength: float = Field(3.0, gt=0, description="Scale of the correction at gate 1.")
    threshold: float = Field(0.0, description="Probe logit at which the gate is 0.5.")
    sharpness: float = Field(1.0, gt=0, description="Gate = sigmoid(sharpness * (logit - threshold)).")
    min_gate: float = Field(1e-3, ge=0, lt=1, description=(
        "Below this gate the correction passes are skipped (their contribution is under strength * min_gate)."))
    hidden: int = Field(16, ge=1, description="Hidden width of the per-position probe MLP.")
    pool_tau: float = Field(0.5, gt=0, description="Temperature of the soft-max pooling over positions.")
    positive: list[str] = Field(min_length=1, description=(
        "Probe training: prompts whose base-model videos show the concept (label 1)."))
    negative: list[str] = Field(min_length=1, description=(
        "Probe training: prompts whose base-model videos do not (label 0)."))
    trajectory_steps: int = Field(20, ge=2, description="Sampler steps of the base trajectories the probe learns from.")
    guidance: float = Field(5.0, ge=1, description="CFG scale of those trajectories.")
    probe_steps: int = Field(300, ge=1, description="Adam steps of probe training.")
    probe_lr: float = Field(1e-2, gt=0, description="Learning rate of probe training.")
    seed: int = Field(0, description="Seed of the trajectories and the probe's initialisation.")


class ContentProbe(nn.Module):
    """logit(x0 [B, F, C, H, W], t [B]) -> [B]: an MLP per latent position (channels + t/1000), soft-max pooled."""

    def __init__(self, channels: int, hidden: int, tau: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels + 1, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.tau = float(tau)

    def forward(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, c = x0.shape[0], x0.shape[2]
        tok = x0.float().movedim(2, -1).reshape(b, -1, c)
        tt = (t.float().to(x0.device) / 1000.0).view(b, 1, 1).expand(b, tok.shape[1], 1)
        s = self.net(torch.cat([tok, tt], -1).to(self.net[0].weight.dtype)).squeeze(-1).float()
        return self.tau * (torch.logsumexp(s / self.tau, 1) - math.log(s.shape[1]))


class ContentGate(nn.Module):
    """Probe + the stored pieces of the correction: sqrt(a_t), sqrt(1 - a_t) [T], the fixed prompt encodings
    [1 + K, L, D] (row 0: concept, rows 1..K: toward). Built from its settings (`EraserMeta.extra['gate']`)."""

    def __init__(self, settings: dict):
        super().__init__()
        self.settings = dict(settings)
        s = self.settings
        self.probe = ContentProbe(int(s["channels"]), int(s["hidden"]), float(s["pool_tau"]))
        self.register_buffer("sqrt_a", torch.zeros(int(s["num_train_timesteps"])))
        self.register_buffer("sqrt_1ma", torch.zeros(int(s["num_train_timesteps"])))
        self.register_buffer("prompts", torch.zeros(1 + len(s["toward_prompts"]), int(s["text_len"]), int(s["text_dim"])))
        self._busy = False
        self.last_gate: torch.Tensor | None = None  # the gate of the last hooked call (tests, diagnostics)

    def x0_hat(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        idx = t.long().to(self.sqrt_a.device)
        a, s = self.sqrt_a[idx].float().view(shape), self.sqrt_1ma[idx].float().view(shape)
        return a.to(x_t.device) * x_t.float() - s.to(x_t.device) * v.float()

    def gate(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return torch.sigmoid(float(s["sharpness"]) * (self.probe(x0, t) - float(s["threshold"])))

    def attach(self, transformer: nn.Module, handle):
        """Hook the gate onto `transformer` (a forward hook with kwargs); `handle` is the EraserHandle whose
        `enabled` switches the gate with the erasers. Returns the hook's removable handle."""
        sig = inspect.signature(transformer.forward)

        def hook(module, args, kwargs, output):
            if self._busy or not handle.enabled:
                return output
            bound = sig.bind(*args, **kwargs).arguments
            return self._correct(module, handle, bound, output)

        return transformer.register_forward_hook(hook, with_kwargs=True)

    def _correct(self, module, handle, call: dict, output):
        tup = isinstance(output, tuple)
        v = output[0] if tup else output.sample
        x = call["hidden_states"]
        b = x.shape[0]
        t = call["timestep"]
        t = (t if torch.is_tensor(t) else torch.tensor(t)).reshape(-1).to(x.device)
        t = t.expand(b) if t.numel() == 1 else t
        g = self.gate(self.x0_hat(x, v, t), t)  # [B], differentiable in v (the caller's text)
        # rows sharing x_t (CFG's two branches) share the smallest gate: one correction that survives guidance
        first = list(range(b))
        for i in range(b):
            for j in range(i):
                if first[j] == j and torch.equal(x[i], x[j]):
                    first[i] = j
                    break
        owner = torch.tensor(first, device=x.device)
        g = torch.stack([g[owner == owner[i]].min() for i in range(b)])
        self.last_gate = g.detach()
        keys = sorted({first[i] for i in range(b) if float(g[i].detach()) >= float(self.settings["min_gate"])})
        if not keys:
            return output
        delta = self._directions(module, handle, call, x[keys], t[keys])  # [U, ...]
        slot = {k: n for n, k in enumerate(keys)}
        rows = [i for i in range(b) if first[i] in slot]
        corr = torch.zeros_like(v, dtype=torch.float32)
        corr[rows] = delta[[slot[first[i]] for i in rows]]
        scale = float(self.settings["strength"]) * g.view((-1,) + (1,) * (v.dim() - 1))
        new = (v.float() + scale * corr).to(v.dtype)
        if tup:
            return (new, *output[1:])
        output.sample = new
        return output

    def _directions(self, module, handle, call: dict, xu: torch.Tensor, tu: torch.Tensor) -> torch.Tensor:
        """The correction for each distinct x (no gradient: it does not depend on the caller's text).
        anchors: mean_k v_base(x, E(toward_k)) - v_base(x, E(concept)), one batched base pass.
        eraser: v_erased(x, E(concept)) - v_base(x, E(concept)): what the eraser does where the text names the
        concept (where it works), applied whatever the text says."""
        eraser = self.settings.get("correction", "anchors") == "eraser"
        prompts = self.prompts[:1] if eraser else self.prompts
        n, u = prompts.shape[0], xu.shape[0]
        kw = dict(call)
        kw["hidden_states"] = xu.repeat(n, *([1] * (xu.dim() - 1)))  # prompt-major: row p * u + i
        kw["encoder_hidden_states"] = prompts.to(xu.device, xu.dtype).repeat_interleave(u, 0)
        kw["timestep"] = tu.repeat(n)
        kw["return_dict"] = False
        prev, self._busy = handle.enabled, True
        try:
            with torch.no_grad():
                handle.enabled = False
                out = module(**kw)[0].float().view(n, u, *xu.shape[1:])
                if eraser:
                    handle.enabled = True  # the erasers on, this hook still off (_busy)
                    return module(**kw)[0].float().view(u, *xu.shape[1:]) - out[0]
        finally:
            handle.enabled, self._busy = prev, False
        return out[1:].mean(0) - out[0]


def gate_settings(cfg: GateConfig, spec, prompts: torch.Tensor) -> dict:
    """The JSON settings a `ContentGate` is rebuilt from (what eraser_config.json records under extra.gate)."""
    if spec.prediction_type != "v_prediction":
        raise ValueError(f"gate.name content: only v-prediction models (CogVideoX) are supported yet, not "
                         f"{spec.prediction_type!r} ({spec.family})")
    return {"name": cfg.name, "channels": int(spec.transformer.config.in_channels), "hidden": cfg.hidden,
            "pool_tau": cfg.pool_tau, "num_train_timesteps": int(spec.num_train_timesteps),
            "text_len": int(prompts.shape[1]), "text_dim": int(prompts.shape[2]),
            "concept_prompt": cfg.concept_prompt, "toward_prompts": list(cfg.toward_prompts),
            "correction": cfg.correction, "strength": cfg.strength, "threshold": cfg.threshold, "sharpness": cfg.sharpness,
            "min_gate": cfg.min_gate}


def probe_data(spec, encode, cfg: GateConfig, latent_shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0_hat [N, ...], t [N], label [N]) from base-model trajectories (the caller runs it with erasers off):
    the conditional prediction's x0_hat along every prompt's trajectory (label: the prompt's set), plus the
    unconditional one along concept trajectories (label 1: what CFG's other branch sees on concept content)."""
    from unlearn.xt_sources import prompt_seed

    gen = torch.Generator().manual_seed(prompt_seed(cfg.seed, "gate"))
    uncond = encode([""])
    xs, ts, ys = [], [], []
    for prompts, label in ((cfg.positive, 1.0), (cfg.negative, 0.0)):
        for i in range(0, len(prompts), 8):
            emb = encode(prompts[i:i + 8])
            states, times = spec.sample_trajectory(emb, uncond, latent_shape, cfg.trajectory_steps, cfg.guidance, gen)
            s, b = states.shape[:2]
            x = states.flatten(0, 1)
            t = times.repeat_interleave(b)
            with torch.no_grad():
                branches = [emb.repeat(s, 1, 1)] + ([uncond.expand(s * b, -1, -1)] if label else [])
                for e in branches:
                    v = torch.cat([spec.velocity(x[j:j + 16], t[j:j + 16], e[j:j + 16]).float()
                                   for j in range(0, len(x), 16)])
                    a = spec._sqrt_a.to(x.device)[t].view(-1, *([1] * (x.dim() - 1)))
                    m = spec._sqrt_1ma.to(x.device)[t].view(-1, *([1] * (x.dim() - 1)))
                    xs.append((a * x.float() - m * v).cpu())
                    ts.append(t.cpu())
                    ys.append(torch.full((len(x),), label))
    return torch.cat(xs), torch.cat(ts), torch.cat(ys)


def train_probe(probe: ContentProbe, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                seed: int, batch: int = 256) -> list[float]:
    """Class-balanced BCE with Adam; returns the loss curve."""
    gen = torch.Generator().manual_seed(seed)
    w_pos = float((1 - y).sum() / y.sum().clamp(min=1))
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randperm(len(y), generator=gen)[:batch]
        logit = probe(x0[idx], t[idx])
        loss = nn.functional.binary_cross_entropy_with_logits(
            logit, y[idx], pos_weight=torch.tensor(w_pos))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def build_gate(cfg: GateConfig, spec, encode, latent_shape, base_context) -> tuple[ContentGate, dict]:
    """Train a content gate on the base model (inside `base_context()`: erasers off) and fill its buffers.
    encode(list[str]) -> [N, L, D] encodings as the pipeline makes them. Returns (gate, training record)."""
    prompts = encode([cfg.concept_prompt, *cfg.toward_prompts]).float().cpu()
    gate = ContentGate(gate_settings(cfg, spec, prompts))
    gate.sqrt_a.copy_(spec._sqrt_a.float().cpu())
    gate.sqrt_1ma.copy_(spec._sqrt_1ma.float().cpu())
    gate.prompts.copy_(prompts)
    torch.manual_seed(cfg.seed)
    gate.probe = ContentProbe(gate.probe.net[0].in_features - 1, cfg.hidden, cfg.pool_tau)
    with base_context():
        x0, t, y = probe_data(spec, encode, cfg, latent_shape)
    losses = train_probe(gate.probe, x0, t, y, cfg.probe_steps, cfg.probe_lr, cfg.seed)
    with torch.no_grad():
        g = gate.gate(x0, t)
    pos, neg = g[y == 1], g[y == 0]
    record = {"samples": int(len(y)), "positives": int(y.sum()), "loss_first": losses[0], "loss_last": losses[-1],
              "gate_mean_positive": float(pos.mean()), "gate_mean_negative": float(neg.mean()),
              "train_acc": float(((g > 0.5).float() == y).float().mean())}
    return gate, record
