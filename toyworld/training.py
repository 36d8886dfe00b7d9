"""Training the toy model: the VAE (early-stopped on detector agreement), the world's latents,
and the transformer (v-prediction for CogVideoX, flow matching for Wan) with an EMA;
`BuildConfig` holds every knob, `BuildConfig.family` picks the components (`toyworld.parts`).

The recipe and its measured costs are described in `toyworld.build`'s docstring.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from toyworld import detector, world
from toyworld.components import TEXT_LEN
from toyworld.parts import parts_of
from toyworld.quality import measure_quality


@dataclass
class BuildConfig:
    seed: int = 0
    family: str = "cogvideox"  # toy model family (toyworld.parts): cogvideox | wan
    # VAE
    vae_channels: tuple[int, ...] = (8, 16, 32)
    vae_steps: int = 1200  # upper bound; stops early at vae_target agreement
    # ...but not before this: agreement on clean reconstructions is necessary, not sufficient
    # (the decoder also has to cope with the transformer's imperfect latents). Measured: VAE
    # stopped at 300 steps + 4000 transformer steps -> 83% non-target shape accuracy through
    # the pipeline; 500 VAE steps + 6000 transformer steps -> 99%.
    vae_min_steps: int = 500
    vae_batch: int = 8
    vae_lr: float = 3e-3
    vae_object_weight: float = 5.0
    vae_kl_weight: float = 1e-6
    vae_latent_noise: float = 0.1
    vae_jitter_prob: float = 0.25  # +-1 px shifts make the decoder tolerant of imperfect latents
    vae_two_object_frac: float = 0.3
    vae_check_every: int = 100
    vae_target: float = 0.99
    vae_check_limit: int | None = None  # scenes in each check (None: 80 single + 80 two-object)
    # A finished build to take the VAE from instead of training it: the VAE stage depends only on the seed,
    # the family and the vae_* fields, so a build with the same ones has bit for bit the VAE this one trains.
    vae_from: str | None = None
    # transformer
    tf_steps: int = 6000
    tf_batch: int = 32
    tf_lr: float = 2e-3
    tf_warmup: int = 200
    tf_weight_decay: float = 0.01
    tf_two_object_frac: float = 0.3
    tf_ema: float = 0.995
    tf_t_high_frac: float = 0.0  # extra share of timesteps drawn from the noisier half
    # progress check through the real pipeline (EMA weights), tf_eval_n rows per set, ~5 s each
    tf_eval_every: int = 1000
    tf_eval_n: int = 16
    cfg_dropout: float = 0.1
    # quality evaluation
    eval_n: int = world.FULL_SET_SIZE
    eval_batch: int = 32
    threads: int = 1
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_family(cls, family: str, **overrides) -> "BuildConfig":
        """The family's defaults (its components module's BUILD_DEFAULTS), then `overrides`."""
        return cls(**{"family": family, **parts_of(family).BUILD_DEFAULTS, **overrides})


def default_log(msg: str) -> None:
    """The build's progress line: timestamped, flushed (a 15-minute build should show it is alive)."""
    print(f"[toy-build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cosine_to_floor(progress: float) -> float:
    """LR factor of both stages: a cosine from 1 down to a 5% floor as progress goes 0 -> 1."""
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * 0.95 + 0.05


# ----------------------------------------------------------------------------- data
def _batch_videos(scenes: list[world.Scene], jitters=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes -> (x [B,3,F,H,W] in [-1,1], object mask [B,1,F,H,W])."""
    jitters = jitters or [(0, 0)] * len(scenes)
    frames = [world.render(s, j) for s, j in zip(scenes, jitters)]
    x = torch.from_numpy(np.stack([world.to_model_input(f) for f in frames]))
    m = torch.from_numpy(np.stack([world.object_mask(f) for f in frames]))[:, None].float()
    return x, m


def _sample_scenes(rng, n, singles, twos, two_frac) -> list[world.Scene]:
    out = []
    for _ in range(n):
        pool = twos if rng.random() < two_frac else singles
        out.append(pool[int(rng.integers(len(pool)))])
    return out


# ----------------------------------------------------------------------------- VAE
def reconstruction_agreement(vae, scenes: list[world.Scene], batch: int = 40) -> dict:
    """Fraction of scenes whose VAE reconstruction (posterior mean) the detector reads exactly right."""
    ok = {"colour": 0, "shape": 0, "motion": 0, "all": 0}
    with torch.no_grad():
        for i in range(0, len(scenes), batch):
            chunk = scenes[i : i + batch]
            x, _ = _batch_videos(chunk)
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample
            frames = ((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).numpy()
            for scene, f in zip(chunk, frames):
                a = detector.agrees(detector.detect(f), scene)
                for k in ("colour", "shape", "motion"):
                    ok[k] += a[k]
                ok["all"] += all(a.values())
    return {k: v / len(scenes) for k, v in ok.items()}


def train_vae(cfg: BuildConfig, log: Callable[[str], None] = default_log):
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    parts = parts_of(cfg.family)
    vae = parts.make_vae(cfg.vae_channels)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_to_floor(s / cfg.vae_steps)
    )
    singles, twos = world.single_scenes(), world.two_object_scenes()
    # early-stop check: every single-object scene plus a fixed spread of two-object ones
    check = (singles + twos[:: max(1, len(twos) // 80)])[: cfg.vae_check_limit]
    history, t0, c0, steps_done = [], time.time(), time.process_time(), 0
    for step in range(1, cfg.vae_steps + 1):
        scenes = _sample_scenes(rng, cfg.vae_batch, singles, twos, cfg.vae_two_object_frac)
        jit = [
            tuple(int(v) for v in rng.integers(-1, 2, size=2)) if rng.random() < cfg.vae_jitter_prob else (0, 0)
            for _ in scenes
        ]
        x, m = _batch_videos(scenes, jit)
        post = vae.encode(x).latent_dist
        z = post.mean + cfg.vae_latent_noise * post.std * torch.randn_like(post.mean)
        rec = parts.decode_for_training(vae, z)
        w = 1.0 + (cfg.vae_object_weight - 1.0) * m
        err = rec - x
        loss = (w * err.abs()).mean() + (w * err.square()).mean() + cfg.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        steps_done = step
        if step % cfg.vae_check_every == 0 or step == cfg.vae_steps:
            vae.eval()
            agree = reconstruction_agreement(vae, check)
            vae.train()
            history.append({"step": step, "loss": loss.item(), "time_s": time.time() - t0, **agree})
            log(f"vae step {step} loss {loss.item():.4f} recon agreement {agree} ({time.time() - t0:.0f}s)")
            if agree["all"] >= cfg.vae_target and step >= cfg.vae_min_steps:
                break
    vae.eval()
    vae.requires_grad_(False)
    return vae, {"steps": steps_done, "time_s": time.time() - t0, "cpu_s": time.process_time() - c0, "history": history}


def reuse_vae(cfg: BuildConfig, log: Callable[[str], None] = default_log):
    """The VAE of the build in `cfg.vae_from` (refused unless its seed, family and vae_* settings match)."""
    import diffusers

    from toyworld.quality import QUALITY_FILE

    src = Path(cfg.vae_from)
    try:
        old = json.loads((src / QUALITY_FILE).read_text())["build"]
        cls = json.loads((src / "vae" / "config.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--vae-from {src}: not a finished toy build ({exc}); pass a `t2vu toy build` DIR") from None
    mine = json.loads(json.dumps(asdict(cfg)))
    keys = [k for k in mine if k in ("seed", "family") or (k.startswith("vae_") and k != "vae_from")]
    differ = {k: (old["config"].get(k), mine[k]) for k in keys if old["config"].get(k) != mine[k]}
    if differ:
        raise ValueError(f"--vae-from {src}: its VAE was built with other settings {differ} (theirs, this build's); "
                         "build the VAE here (drop --vae-from) or match them")
    vae = getattr(diffusers, cls).from_pretrained(src / "vae").eval()
    vae.requires_grad_(False)
    log(f"VAE taken from {src} ({old['vae']['steps']} steps there)")
    return vae, {**old["vae"], "reused_from": str(src.resolve())}


def encode_world(vae, family: str = "cogvideox") -> tuple[list[world.Scene], torch.Tensor, dict]:
    """All 400 scenes -> (scenes, training latents in the family's transformer layout, the VAE config
    entries that undo their scaling: CogVideoX `scaling_factor`, Wan `latents_mean` / `latents_std`)."""
    scenes = world.all_scenes()
    zs = []
    with torch.no_grad():
        for i in range(0, len(scenes), 50):
            x, _ = _batch_videos(scenes[i : i + 50])
            zs.append(vae.encode(x).latent_dist.mean)
    latents, vae_config = parts_of(family).latent_stats(torch.cat(zs))  # from [N, C, F, h, w]
    return scenes, latents, vae_config


# ----------------------------------------------------------------------------- transformer
@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], batch: int = 256) -> torch.Tensor:
    """Prompt embeddings exactly as the pipeline computes them (padded to TEXT_LEN; Wan zeroes the padding)."""
    out = []
    for i in range(0, len(prompts), batch):
        emb, _ = pipe.encode_prompt(
            prompts[i : i + batch], do_classifier_free_guidance=False, max_sequence_length=TEXT_LEN,
            device=torch.device("cpu"),
        )
        out.append(emb)
    return torch.cat(out)


def _all_training_prompts(scene: world.Scene) -> list[str]:
    if len(scene.objects) == 1:
        return [world.prompt(scene, (w,)) for w in world.SYNONYMS[scene.objects[0].colour]]
    a, b = scene.objects
    return [world.prompt(scene, (w1, w2)) for w1 in world.SYNONYMS[a.colour] for w2 in world.SYNONYMS[b.colour]]


def train_transformer(cfg: BuildConfig, pipe, scenes, latents, log: Callable[[str], None] = default_log):
    """Training on the world's latents (the family's objective); returns the EMA transformer and stats."""
    parts = parts_of(cfg.family)
    torch.manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 1)
    tf = parts.make_transformer()
    ema = copy.deepcopy(tf).requires_grad_(False)
    scheduler = parts.make_scheduler()
    # Text: every phrasing of every scene (1,712 prompts + ""), embedded once (~1 s).
    phrasings = [_all_training_prompts(s) for s in scenes]
    prompts = sorted({p for ps in phrasings for p in ps}) + [""]
    index = {p: i for i, p in enumerate(prompts)}
    emb = encode_prompts(pipe, prompts)
    empty = index[""]
    # per scene: (plain-word prompt index, synonym prompt indices); plain word half the time
    plain = [index[world.prompt(s)] for s in scenes]
    syn = [[index[p] for p in ps if index[p] != pl] for ps, pl in zip(phrasings, plain)]
    single_idx = [i for i, s in enumerate(scenes) if len(s.objects) == 1]
    two_idx = [i for i, s in enumerate(scenes) if len(s.objects) == 2]

    opt = torch.optim.AdamW(tf.parameters(), lr=cfg.tf_lr, weight_decay=cfg.tf_weight_decay)

    def lr_at(s):
        if s < cfg.tf_warmup:
            return (s + 1) / cfg.tf_warmup
        p = (s - cfg.tf_warmup) / max(1, cfg.tf_steps - cfg.tf_warmup)
        return cosine_to_floor(p)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0, c0, loss_ema, history = time.time(), time.process_time(), None, []
    B = cfg.tf_batch
    tf.train()
    for step in range(1, cfg.tf_steps + 1):
        is_two = rng.random(B) < cfg.tf_two_object_frac
        idx = np.where(is_two, rng.choice(two_idx, B), rng.choice(single_idx, B))
        p_idx = [
            plain[i] if (rng.random() < 0.5 or not syn[i]) else syn[i][int(rng.integers(len(syn[i])))] for i in idx
        ]
        p_idx = [empty if rng.random() < cfg.cfg_dropout else p for p in p_idx]
        x0 = latents[torch.from_numpy(idx)]
        noise = torch.randn_like(x0)
        xt, t, target = parts.noised(scheduler, x0, noise, rng, cfg)
        pred = tf(hidden_states=xt, encoder_hidden_states=emb[p_idx], timestep=t, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tf.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = cfg.tf_ema if step > cfg.tf_warmup else 0.0
            for pe, pt in zip(ema.parameters(), tf.parameters()):
                pe.mul_(d).add_(pt.detach(), alpha=1 - d)
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 250 == 0 or step == cfg.tf_steps:
            entry = {"step": step, "loss_ema": loss_ema, "time_s": time.time() - t0}
            msg = f"transformer step {step}/{cfg.tf_steps} loss_ema {loss_ema:.4f} ({time.time() - t0:.0f}s)"
            if cfg.tf_eval_every and step % cfg.tf_eval_every == 0 and step < cfg.tf_steps:
                ema.eval()
                q = measure_quality(parts.make_pipeline(pipe.tokenizer, pipe.text_encoder, pipe.vae, ema), cfg.tf_eval_n)
                keys = ("colour_acc", "shape_acc", "motion_acc", "two_object_both_present")
                entry["quality"] = {k: q["summary"][k] for k in keys}
                msg += " quality(n=%d/set) " % cfg.tf_eval_n + " ".join(f"{k} {v:.2f}" for k, v in entry["quality"].items())
            history.append(entry)
            log(msg)
    ema.eval()
    stats = {"steps": cfg.tf_steps, "time_s": time.time() - t0, "cpu_s": time.process_time() - c0}
    return ema, {**stats, "final_loss_ema": loss_ema, "history": history}


