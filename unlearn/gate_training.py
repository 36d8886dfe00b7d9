"""Training the content gate's probe (unlearn.gates) and putting the gate into an eraser file.

Two callers, one mechanism:
- a training config's `gate:` key: `gate_trained_eraser(cfg, eraser_dir)` after the eraser is published (single
  process, Ray Train + DeepSpeed, every Tune trial), with the config's concept data as the default prompts and the
  training embedding cache as the encoder;
- an attack config method's `gate:` key (eval.attacks.gating): `build_gate` with the attack context's encoder.
Cost: one base-model trajectory per probe prompt (trajectory_steps x CFG) plus probe_steps Adam steps on the
stored x0 (~50 s for the toy's 68 prompts on one CPU thread). Memory: every x0 sample is kept on the CPU
(prompts x trajectory_steps, concept prompts twice): 1840 tiny latents on the toy, but ~8 GB at CogVideoX-2B's
49 x 480 x 720 (4.5 MB each); real-size models need the states subsampled first (not done yet).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from unlearn.gate_config import GateConfig, gated
from unlearn.gates import GATE_KEY, ContentGate, new_gate

TRAINING_KEY = "gate_training"  # EraserMeta.extra key of the probe's training record


def probe_data(gate: ContentGate, spec, encode, cfg: GateConfig, latent_shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0_hat [N, ...], t [N], label [N]) from base-model trajectories (the caller runs it with erasers off):
    the conditional prediction's x0_hat along every prompt's trajectory (label: the prompt's set), plus the
    unconditional one along concept trajectories (label 1: what CFG's other branch sees on concept content).
    x0_hat is the gate's own (`gate.x0_hat`), so the probe learns on what it will read."""
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
                    e = e.to(x.device)
                    v = torch.cat([spec.velocity(x[j:j + 16], t[j:j + 16], e[j:j + 16]).float()
                                   for j in range(0, len(x), 16)])
                    xs.append(gate.x0_hat(x, v, t).cpu())
                    ts.append(t.cpu())
                    ys.append(torch.full((len(x),), label))
    return torch.cat(xs), torch.cat(ts), torch.cat(ys)


def train_probe(probe: nn.Module, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                seed: int, batch: int = 256) -> list[float]:
    """Class-balanced BCE with Adam; returns the loss curve."""
    gen = torch.Generator().manual_seed(seed)
    w_pos = float((1 - y).sum() / y.sum().clamp(min=1))
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randperm(len(y), generator=gen)[:batch]
        logit = probe(x0[idx], t[idx])
        loss = nn.functional.binary_cross_entropy_with_logits(logit, y[idx], pos_weight=torch.tensor(w_pos))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def build_gate(cfg: GateConfig, spec, encode, latent_shape, base_context) -> tuple[ContentGate, dict]:
    """Train a content gate on the base model (inside `base_context()`: erasers off) and fill its buffers.
    `cfg` has every prompt field set (GateConfig.filled); encode(list[str]) -> [N, L, D] encodings as the
    pipeline makes them. Returns (gate, training record)."""
    if cfg.missing():
        raise ValueError(f"gate: {', '.join(cfg.missing())} not set (an attack config must list them)")
    gate = new_gate(cfg, spec, encode([cfg.concept_prompt, *cfg.toward_prompts]).float().cpu())
    with base_context():
        x0, t, y = probe_data(gate, spec, encode, cfg, latent_shape)
    gate.probe.to(x0.device)
    losses = train_probe(gate.probe, x0, t, y, cfg.probe_steps, cfg.probe_lr, cfg.seed)
    with torch.no_grad():
        g = gate.gate(x0, t)
    pos, neg = g[y == 1], g[y == 0]
    record = {"samples": int(len(y)), "positives": int(y.sum()), "loss_first": losses[0], "loss_last": losses[-1],
              "gate_mean_positive": float(pos.mean()), "gate_mean_negative": float(neg.mean()),
              "train_acc": float(((g > 0.5).float() == y).float().mean())}
    return gate, record


def put_gate(eraser_set, gate: ContentGate, record: dict) -> None:
    """Make `gate` part of `eraser_set` (saved as `gate.*` tensors + extra.gate / extra.gate_training)."""
    eraser_set.gate = gate.to("cpu")
    eraser_set.meta.extra = {**eraser_set.meta.extra, GATE_KEY: gate.settings, TRAINING_KEY: record}


def with_settings(gate: ContentGate, cfg: GateConfig) -> ContentGate:
    """The same trained probe with cfg's inference settings (strength, threshold, sharpness, min_gate, correction):
    no retraining needed for them."""
    out = ContentGate({**gate.settings, **{k: getattr(cfg, k) for k in
                                           ("strength", "threshold", "sharpness", "min_gate", "correction")}})
    out.load_state_dict(gate.state_dict())
    return out


def concept_defaults(cfg, config_dir=None) -> GateConfig:
    """A training config's gate section with its prompt fields filled from the concept section (ValueError naming
    an empty default)."""
    from unlearn.session import load_data, model_dir_of
    from unlearn.models.families import spec_class

    model_dir = model_dir_of(cfg)
    data = load_data(cfg, model_dir, spec_class(cfg.model.family).text_len_of(model_dir), config_dir)
    positive = list(dict.fromkeys(it.prompt for it in data.items))
    # concept.preserve without the empty prompt: the toy's colourless prior is the concept itself
    return cfg.gate.filled(cfg.concept.target, cfg.concept.anchors, positive, [p for p in cfg.concept.preserve if p])


def gate_trained_eraser(cfg, eraser_dir: str | Path, config_dir=None, spec=None) -> dict | None:
    """The training config's `gate:` step: train the probe on the base model and write the gated eraser over
    `eraser_dir` (atomically). Returns the training record; None without a gate. A rerun whose file already holds
    this gate does nothing (resume). `spec`: the training spec with no erasers attached (else loaded here)."""
    from unlearn.eraser import read_eraser, save_eraser
    from unlearn.session import model_dir_of, open_cache

    if not gated(cfg):
        return None
    gcfg = concept_defaults(cfg, config_dir)
    es = read_eraser(eraser_dir)
    done = es.meta.extra.get(TRAINING_KEY, {})
    if es.gate is not None and done.get("config") == gcfg.model_dump(mode="json"):
        return done
    if spec is None:  # the Ray driver / a Tune trial: the backbone again, on the training device
        from unlearn.devices import resolve_device
        from unlearn.models.families import spec_class

        spec = spec_class(cfg.model.family).from_pretrained(model_dir_of(cfg), cfg.model.dtype)
        spec.transformer.to(resolve_device(cfg.train.device))
    cache = open_cache(cfg, model_dir_of(cfg), spec.text_len)

    def encode(prompts: list[str]) -> torch.Tensor:
        cache.fill(prompts)
        return cache.get(prompts).to(next(spec.transformer.parameters()).device)

    latent_shape = spec.latent_shape(cfg.model.num_frames, cfg.model.height, cfg.model.width)
    gate, record = build_gate(gcfg, spec, encode, latent_shape, contextlib.nullcontext)
    record["config"] = gcfg.model_dump(mode="json")
    put_gate(es, gate, record)
    save_eraser(es, eraser_dir)
    return record
