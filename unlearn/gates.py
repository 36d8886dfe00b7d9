"""Content gate (issue 25, "an eraser that fires on content, not on text"): a defence the text cannot switch off.

The diagnosis of issue 25: a trained eraser fires on what the TEXT says; the soft-prompt attack moves the text so
it no longer fires while the backbone still draws the concept. The gate reads the concept from what the model is
about to draw instead: at every transformer call it turns the call's own prediction into the predicted clean
latent x0_hat (CogVideoX, v-prediction: x0_hat = sqrt(a_t) x_t - sqrt(1 - a_t) v; Wan, flow matching with
x_t = (1 - s) x0 + s eps and v = eps - x0: x0_hat = x_t - s v, s = t / 1000, what the Wan schedulers compute as
their x0), scores it with a tiny probe (an MLP per latent position, soft-max pooled over positions: "the concept
is somewhere in the video"), and adds a negatively guided correction scaled by the gate g in [0, 1]:

    v <- v + strength * g(x0_hat, t) * (mean_k v_base(x_t, E(toward_k)) - v_base(x_t, E(concept)))

The correction's prompts are FIXED encodings stored with the gate (not the caller's text), and run through the
base model (erasers off), so an attacker who controls the text controls neither the correction nor its direction;
the only way around it is to make the content not look like the concept, which is the defence's aim. Everything
is differentiable (probe, pooling, sigmoid): white-box attacks optimise through the gate (eval.attacks call the
transformer with the hooks on). The correction passes carry no gradient to the text: they do not depend on it.

Batches with classifier-free guidance hold the same x_t twice (unconditional, conditional rows): their gate is the
minimum over the rows sharing x_t, so both branches get the same correction (it then survives CFG unchanged:
(1 - w) + w = 1), and the unconditional branch (the toy's colourless prior is red) cannot switch it on alone.
WanPipeline runs the two branches as two calls on the same latents tensor (conditional first): a call on the very
tensor of the call before it, unchanged, at the same t, is that second branch and gets the first call's gate and
correction (so again (1 - w) + w = 1, and one base pass fewer). Attacks index their x_t afresh for every call,
so no two of their calls pair.

The gate is part of the eraser file: a submodule `gate` of `EraserSet` (tensors `gate.*` in eraser.safetensors,
its settings in eraser_config.json `extra.gate`), hooked by `unlearn.eraser.attach`, switched off with the erasers
by `handle.disabled()`, so `load_eraser(pipe, dir)` gives the gated model in the usual two lines.
"""

from __future__ import annotations

import inspect
import math
import torch
from torch import nn

from unlearn.gate_config import GateConfig  # noqa: F401 - the section's schema, importable from here

GATE_KEY = "gate"  # EraserMeta.extra key of the gate's settings


# Per prediction type: (latent layout's channel axis in a batch, how x0 is read from the output).
# CogVideoX latents are [B, F, C, H, W] (v-prediction); Wan's [B, C, F, H, W] (flow matching).
CHANNEL_AXIS = {"v_prediction": 2, "flow": 1}


class ContentProbe(nn.Module):
    """logit(x0 [B, ...], t [B]) -> [B]: an MLP per latent position (channels + t/1000), soft-max pooled."""

    def __init__(self, channels: int, hidden: int, tau: float, channel_axis: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels + 1, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.tau = float(tau)
        self.channel_axis = int(channel_axis)

    def forward(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, c = x0.shape[0], x0.shape[self.channel_axis]
        tok = x0.float().movedim(self.channel_axis, -1).reshape(b, -1, c)
        tt = (t.float().to(x0.device) / 1000.0).view(b, 1, 1).expand(b, tok.shape[1], 1)
        s = self.net(torch.cat([tok, tt], -1).to(self.net[0].weight.dtype)).squeeze(-1).float()
        return self.tau * (torch.logsumexp(s / self.tau, 1) - math.log(s.shape[1]))


class ContentGate(nn.Module):
    """Probe + the stored pieces of the correction: sqrt(a_t), sqrt(1 - a_t) [T] (v-prediction; zeros for flow
    models, whose x0 needs only t), the fixed prompt encodings [1 + K, L, D] (row 0: concept, rows 1..K: toward).
    Built from its settings (`EraserMeta.extra['gate']`; files from before Wan support read as v-prediction)."""

    def __init__(self, settings: dict):
        super().__init__()
        self.settings = dict(settings)
        s = self.settings
        self.prediction_type = s.get("prediction_type", "v_prediction")
        self.probe = ContentProbe(int(s["channels"]), int(s["hidden"]), float(s["pool_tau"]),
                                  CHANNEL_AXIS[self.prediction_type])
        self.register_buffer("sqrt_a", torch.zeros(int(s["num_train_timesteps"])))
        self.register_buffer("sqrt_1ma", torch.zeros(int(s["num_train_timesteps"])))
        self.register_buffer("prompts", torch.zeros(1 + len(s["toward_prompts"]), int(s["text_len"]), int(s["text_dim"])))
        self._busy = False
        self._pending = None  # the last hooked call (x, version, t, gate, correction): CFG's second call pairs with it
        self.last_gate: torch.Tensor | None = None  # the gate of the last hooked call (tests, diagnostics)

    def x0_hat(self, x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean latent the prediction `v` at (x_t, t) points to, as the family's scheduler reads it."""
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        if self.prediction_type == "flow":  # x_t = (1 - s) x0 + s eps, v = eps - x0  =>  x0 = x_t - s v
            s = (t.float() / float(self.settings["num_train_timesteps"])).view(shape).to(x_t.device)
            return x_t.float() - s * v.float()
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
        traw = call["timestep"]
        traw = (traw if torch.is_tensor(traw) else torch.tensor(traw)).to(x.device)
        if traw.numel() == 1:
            traw = traw.reshape(1).expand(b)
        t = traw.reshape(b, -1).amax(1)  # Wan 2.2 TI2V passes a timestep per video token: the frame's noise level
        # Only sampling (no grad) pairs calls: an attacker's forward always gets its own gate and its gradient.
        pending, self._pending = self._pending, None
        sampling = not torch.is_grad_enabled()
        version = None if x.is_inference() else x._version  # inference tensors (eval.generate) keep no counter
        if sampling and pending is not None and pending[0] is x and pending[1] == version and torch.equal(pending[2], t):
            g, corr = pending[3], pending[4]  # CFG's second branch as its own call (WanPipeline): the same correction
        else:
            g, corr = self._gate_and_correction(module, handle, call, x, v, traw, t)
            if sampling:
                self._pending = (x, version, t, g.detach(), corr)
        self.last_gate = g.detach()
        if corr is None:
            return output
        scale = float(self.settings["strength"]) * g.view((-1,) + (1,) * (v.dim() - 1))
        new = (v.float() + scale * corr).to(v.dtype)
        if tup:
            return (new, *output[1:])
        output.sample = new
        return output

    def _gate_and_correction(self, module, handle, call: dict, x, v, traw, t):
        """The gate [B] (differentiable in v, the caller's text) and the correction [B, ...] (None: all gates
        under min_gate)."""
        b = x.shape[0]
        g = self.gate(self.x0_hat(x, v, t), t)
        # rows sharing x_t (CFG's two branches) share the smallest gate: one correction that survives guidance
        first = list(range(b))
        for i in range(b):
            for j in range(i):
                if first[j] == j and torch.equal(x[i], x[j]):
                    first[i] = j
                    break
        owner = torch.tensor(first, device=x.device)
        g = torch.stack([g[owner == owner[i]].min() for i in range(b)])
        keys = sorted({first[i] for i in range(b) if float(g[i].detach()) >= float(self.settings["min_gate"])})
        if not keys:
            return g, None
        delta = self._directions(module, handle, call, x[keys], traw[keys])  # [U, ...]
        slot = {k: n for n, k in enumerate(keys)}
        rows = [i for i in range(b) if first[i] in slot]
        corr = torch.zeros_like(v, dtype=torch.float32)
        corr[rows] = delta[[slot[first[i]] for i in rows]]
        return g, corr

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
        kw["timestep"] = tu.repeat(n, *([1] * (tu.dim() - 1)))
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
    """The JSON settings a `ContentGate` is rebuilt from (what eraser_config.json records under extra.gate);
    `cfg` with its prompt fields filled (GateConfig.filled)."""
    if spec.prediction_type not in CHANNEL_AXIS:
        raise ValueError(f"gate.name content: {spec.family} predicts {spec.prediction_type!r}; the gate reads x0 of "
                         f"{' and '.join(CHANNEL_AXIS)} models (CogVideoX, Wan)")
    return {"name": cfg.name, "prediction_type": spec.prediction_type, "channels": int(spec.transformer.config.in_channels),
            "hidden": cfg.hidden, "pool_tau": cfg.pool_tau, "num_train_timesteps": int(spec.num_train_timesteps),
            "text_len": int(prompts.shape[1]), "text_dim": int(prompts.shape[2]),
            "concept_prompt": cfg.concept_prompt, "toward_prompts": list(cfg.toward_prompts),
            "correction": cfg.correction, "strength": cfg.strength, "threshold": cfg.threshold, "sharpness": cfg.sharpness,
            "min_gate": cfg.min_gate}


def new_gate(cfg: GateConfig, spec, prompts: torch.Tensor) -> ContentGate:
    """An untrained gate for `spec` with its buffers filled (the schedule, the fixed prompt encodings); the probe
    initialised from cfg.seed."""
    gate = ContentGate(gate_settings(cfg, spec, prompts))
    if spec.prediction_type == "v_prediction":
        gate.sqrt_a.copy_(spec._sqrt_a.float().cpu())
        gate.sqrt_1ma.copy_(spec._sqrt_1ma.float().cpu())
    gate.prompts.copy_(prompts.float().cpu())
    torch.manual_seed(cfg.seed)
    gate.probe = ContentProbe(gate.probe.net[0].in_features - 1, cfg.hidden, cfg.pool_tau, gate.probe.channel_axis)
    return gate
