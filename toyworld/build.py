"""Build the toy model: a tiny CogVideoX trained on the toy world, in the real diffusers layout.

`build(out_dir)` (CLI: `t2vu toy build DIR`) writes a directory laid out like
THUDM/CogVideoX-2b (`model_index.json`, `transformer/`, `vae/`, `text_encoder/`,
`tokenizer/`, `scheduler/`) that loads with `CogVideoXPipeline.from_pretrained(DIR)`,
plus `toy_quality.json` (what the detector reads from videos generated through that
pipeline, plus the build's timings and config). Stages and their measured cost in CPU
seconds on one thread of the dev machine (about 14.5 CPU-minutes in all; wall time is
longer when other jobs share the CPU):

1. Text side (< 1 s): a T5 tokenizer whose pieces are the world's words
   (`unlearn.models.tokenizer.build_t5_tokenizer`) and a frozen, random-init tiny
   `T5EncoderModel` (d_model 64). Random features separate the words well enough; nothing
   here is trained, so the text side costs nothing and is reproducible from the seed.
2. VAE (~230 s, 500 steps of batch 8): `AutoencoderKLCogVideoX`, 3 down/up blocks (8,16,32) -> 4x spatial,
   4x temporal: video 9x32x32 RGB <-> latent 3x4x8x8. Recipe "run B" of the VAE probe:
   decode the posterior mean plus 0.1*std noise (a sampled posterior starts at unit
   variance and learns far too slowly on a CPU), L1+MSE with object pixels weighted 5x
   (the background is most of the frame), tiny KL. Every `vae_check_every` steps the
   detector reads reconstructions of the world's videos; training stops at the first check
   after `vae_min_steps` where it agrees with ground truth on >= 99% of them.
   `scaling_factor` = 1/std(latents).
3. Latents (~2 s): the world has 400 distinct videos (fixed layout), encoded once
   (`latent_dist.mean * scaling_factor`), so the transformer step never runs the VAE.
4. Transformer (~600 s, 6000 steps of batch 32): `CogVideoXTransformer3DModel`, 4 layers, 2 heads x 32, patch 2,
   no RoPE, text length 16 (= the pipeline's `max_sequence_length`: the sin-cos position
   table has exactly text + video positions). v-prediction on the CogVideoX-2b DDIM
   schedule, 10% of prompts dropped to "" so classifier-free guidance works, AdamW
   (lr 2e-3) with warmup and cosine decay, an EMA of the weights for sampling. Per CPU
   second, batch 32 / lr 2e-3 learned shape faster than the probe's batch 64 / lr 1e-3.
5. Quality (~40 s for 640 videos): `CogVideoXPipeline` saved, reloaded from disk, and run on every
   benchmark prompt set (`world.eval_rows`, 128 prompt/seed pairs each) at the benchmark's
   sampler settings (`GENERATION`); the detector scores the frames.

Single-threaded on purpose: on the 2-core dev machine 2 torch threads were 3x slower
than 1 for these tiny ops (see ../shared/notes/toy-world-probe.md).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from unlearn.fsutil import atomic_write_text
from unlearn.models.tiny import SCHEDULER_KW
from toyworld import detector, world

TEXT_LEN = 16  # tokens; == transformer max_text_seq_length == pipeline max_sequence_length

#: Sampler settings the toy model was validated with (and the benchmark uses).
GENERATION = dict(
    num_inference_steps=20,
    guidance_scale=5.0,
    height=world.HEIGHT,
    width=world.WIDTH,
    num_frames=world.NUM_FRAMES,
    max_sequence_length=TEXT_LEN,
)

#: The base-quality bars of issue 3 (single-object colour/shape/motion, two-object both colours).
QUALITY_BARS = {"colour_acc": 0.95, "shape_acc": 0.90, "motion_acc": 0.90, "two_object_both_present": 0.90}

# THUDM/CogVideoX-2b's scheduler_config.json, the one the tiny test model uses too.
SCHEDULER_CONFIG = SCHEDULER_KW


@dataclass
class BuildConfig:
    seed: int = 0
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


def _log(msg: str) -> None:
    print(f"[toy-build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- components
def make_text_side(seed: int):
    """Tokenizer over the world's vocabulary + frozen random tiny T5 encoder."""
    from transformers import T5Config, T5EncoderModel

    from unlearn.models.tokenizer import build_t5_tokenizer

    tokenizer = build_t5_tokenizer(world.vocabulary())
    torch.manual_seed(seed + 1234)
    enc = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        )
    ).eval()
    enc.requires_grad_(False)
    return tokenizer, enc


def make_vae(channels: tuple[int, ...] = (8, 16, 32)):
    from diffusers import AutoencoderKLCogVideoX

    n = len(channels)
    return AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * n, up_block_types=("CogVideoXUpBlock3D",) * n,
        block_out_channels=tuple(channels), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        temporal_compression_ratio=4, sample_height=world.HEIGHT, sample_width=world.WIDTH,
        force_upcast=False,
    )


def make_transformer():
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4, time_embed_dim=128,
        text_embed_dim=64, num_layers=4, sample_width=world.WIDTH // 4, sample_height=world.HEIGHT // 4,
        sample_frames=world.NUM_FRAMES, temporal_compression_ratio=4, patch_size=2,
        max_text_seq_length=TEXT_LEN, use_rotary_positional_embeddings=False,
    )


def make_scheduler():
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)


def make_pipeline(tokenizer, text_encoder, vae, transformer, scheduler=None):
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=scheduler or make_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


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


def train_vae(cfg: BuildConfig, log: Callable[[str], None] = _log):
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    vae = make_vae(cfg.vae_channels)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / cfg.vae_steps, 1.0))) * 0.95 + 0.05
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
        rec = vae.decode(z).sample
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


def encode_world(vae) -> tuple[list[world.Scene], torch.Tensor, float]:
    """All 400 scenes -> (scenes, latents [N,F,C,h,w] * scaling_factor, scaling_factor)."""
    scenes = world.all_scenes()
    zs = []
    with torch.no_grad():
        for i in range(0, len(scenes), 50):
            x, _ = _batch_videos(scenes[i : i + 50])
            zs.append(vae.encode(x).latent_dist.mean)
    z = torch.cat(zs)  # [N, C, F, h, w]
    sf = float(1.0 / z.std())
    return scenes, (z * sf).permute(0, 2, 1, 3, 4).contiguous(), sf


# ----------------------------------------------------------------------------- transformer
@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], batch: int = 256) -> torch.Tensor:
    """Prompt embeddings exactly as `CogVideoXPipeline` computes them (padded to TEXT_LEN, no mask)."""
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


def train_transformer(cfg: BuildConfig, pipe, scenes, latents, log: Callable[[str], None] = _log):
    """v-prediction training on the world's latents; returns the EMA transformer and stats."""
    torch.manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 1)
    tf = make_transformer()
    ema = copy.deepcopy(tf).requires_grad_(False)
    scheduler = make_scheduler()
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
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))

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
        T = scheduler.config.num_train_timesteps
        t = rng.integers(0, T, B)
        if cfg.tf_t_high_frac > 0:  # oversample noisy timesteps, where shape must come from the text
            high = rng.random(B) < cfg.tf_t_high_frac
            t = np.where(high, rng.integers(T // 2, T, B), t)
        t = torch.from_numpy(t)
        xt = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
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
                q = measure_quality(make_pipeline(pipe.tokenizer, pipe.text_encoder, pipe.vae, ema), cfg.tf_eval_n)
                keys = ("colour_acc", "shape_acc", "motion_acc", "two_object_both_present")
                entry["quality"] = {k: q["summary"][k] for k in keys}
                msg += " quality(n=%d/set) " % cfg.tf_eval_n + " ".join(f"{k} {v:.2f}" for k, v in entry["quality"].items())
            history.append(entry)
            log(msg)
    ema.eval()
    stats = {"steps": cfg.tf_steps, "time_s": time.time() - t0, "cpu_s": time.process_time() - c0}
    return ema, {**stats, "final_loss_ema": loss_ema, "history": history}


# ----------------------------------------------------------------------------- generation + quality
def generate(pipe, rows: list[dict], batch_size: int = 32, **settings) -> np.ndarray:
    """Videos for prompt rows through `CogVideoXPipeline`, one seeded generator per row.

    Returns float32 [N, F, H, W, 3] in [0, 1]. `settings` override `GENERATION`.
    """
    kw = {**GENERATION, **settings}
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        gens = [torch.Generator().manual_seed(int(r["seed"])) for r in chunk]
        res = pipe(prompt=[r["prompt"] for r in chunk], generator=gens, output_type="np", **kw)
        out.append(np.asarray(res.frames, dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def score_videos(rows: list[dict], frames: np.ndarray) -> dict:
    """Detector-based quality of generated videos, per set and pooled.

    Single-object sets: colour / shape / motion accuracy (colour = the prompt's colour is
    the only colour present). Two-object sets: both named colours present (order-invariant),
    exactly those colours, and colour-shape binding.
    """
    per_set: dict[str, dict[str, list[bool]]] = {}
    for r, f in zip(rows, frames):
        scene = world.parse_prompt(r["prompt"])
        det = detector.detect(f)
        acc = per_set.setdefault(r["set"], {})
        if len(scene.objects) == 1:
            a = detector.agrees(det, scene)
            for k in ("colour", "shape", "motion"):
                acc.setdefault(k, []).append(a[k])
            acc.setdefault("all", []).append(all(a.values()))
        else:
            acc.setdefault("both_present", []).append(set(scene.colours) <= set(det.colours))
            acc.setdefault("exact_colours", []).append(set(scene.colours) == set(det.colours))
            acc.setdefault("binding", []).append(detector.agrees(det, scene)["shape"])
    sets = {s: {k: float(np.mean(v)) for k, v in acc.items()} | {"n": len(next(iter(acc.values())))} for s, acc in per_set.items()}
    single = [s for s in sets if not s.startswith("two")]
    two = [s for s in sets if s.startswith("two")]

    def pooled(names, key):
        vals = [v for s in names for v in per_set[s][key]]
        return float(np.mean(vals)) if vals else float("nan")

    summary = {
        "colour_acc": pooled(single, "colour"),
        "shape_acc": pooled(single, "shape"),
        "motion_acc": pooled(single, "motion"),
        "all_three_acc": pooled(single, "all"),
        "two_object_both_present": pooled(two, "both_present"),
        "two_object_exact_colours": pooled(two, "exact_colours"),
        "two_object_binding": pooled(two, "binding"),
        "n_single": sum(sets[s]["n"] for s in single),
        "n_two_object": sum(sets[s]["n"] for s in two),
    }
    summary["meets_bars"] = all(summary[k] >= v for k, v in QUALITY_BARS.items())
    return {"summary": summary, "sets": sets}


def measure_quality(pipe, n: int = world.FULL_SET_SIZE, batch_size: int = 32, seed: int = 0, **settings) -> dict:
    """Generate every benchmark set (`n` rows each) and score it with the detector."""
    rows = world.all_eval_rows(n, seed=seed)
    t0 = time.time()
    frames = generate(pipe, rows, batch_size, **settings)
    gen_s = time.time() - t0  # wall time, shared CPU included
    q = score_videos(rows, frames)
    q["generation"] = {**GENERATION, **settings, "n_videos": len(rows), "seconds": round(gen_s, 1), "row_seed": seed}
    return q


def measure_dir(model_dir: str | os.PathLike, n: int = world.FULL_SET_SIZE, write: bool = True) -> dict:
    """Re-measure a built model directory with the current detector (no training).

    Loads through `CogVideoXPipeline.from_pretrained`, scores every benchmark set and, with
    `write`, rewrites `toy_quality.json` keeping its `build` section.
    """
    from diffusers import CogVideoXPipeline

    model_dir = Path(model_dir)
    pipe = CogVideoXPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    quality = measure_quality(pipe, n)
    path = model_dir / "toy_quality.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if "build" in old:
            quality["build"] = old["build"]
    if write:
        atomic_write_text(path, json.dumps(quality, indent=2, default=str) + "\n")
    return quality


# ----------------------------------------------------------------------------- the build
def build(out_dir: str | os.PathLike, cfg: BuildConfig | None = None, log: Callable[[str], None] = _log) -> dict:
    """Train and save the toy model to `out_dir`; return (and write) its measured quality."""
    from diffusers import CogVideoXPipeline

    cfg = cfg or BuildConfig()
    out = Path(out_dir)
    torch.set_num_threads(cfg.threads)
    # Wall time depends on whatever else shares the CPU; process CPU time does not (much),
    # so both are recorded.
    t_start, cpu_start = time.time(), time.process_time()
    tokenizer, text_encoder = make_text_side(cfg.seed)
    log(f"text side: vocab {len(tokenizer)}; training VAE (<= {cfg.vae_steps} steps)")
    vae, vae_stats = train_vae(cfg, log)
    scenes, latents, sf = encode_world(vae)
    vae.register_to_config(scaling_factor=sf)
    log(f"VAE done in {vae_stats['time_s']:.0f}s ({vae_stats['steps']} steps); scaling_factor {sf:.4f}")
    pipe = make_pipeline(tokenizer, text_encoder, vae, make_transformer())
    tf, tf_stats = train_transformer(cfg, pipe, scenes, latents, log)
    pipe = make_pipeline(tokenizer, text_encoder, vae, tf)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out)
    train_s = time.time() - t_start
    log(f"saved to {out} after {train_s:.0f}s; measuring quality through CogVideoXPipeline.from_pretrained")

    loaded = CogVideoXPipeline.from_pretrained(out)
    loaded.set_progress_bar_config(disable=True)
    quality = measure_quality(loaded, cfg.eval_n, cfg.eval_batch)
    total_s = time.time() - t_start
    quality["build"] = {
        "seconds_total": round(total_s, 1),
        "seconds_training": round(train_s, 1),
        "cpu_seconds_total": round(time.process_time() - cpu_start, 1),
        "vae": {k: v for k, v in vae_stats.items()},
        "transformer": tf_stats,
        "config": asdict(cfg),
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(),
    }
    atomic_write_text(out / "toy_quality.json", json.dumps(quality, indent=2, default=str) + "\n")
    s = quality["summary"]
    log(
        f"done in {total_s:.0f}s wall ({quality['build']['cpu_seconds_total']:.0f}s CPU): colour {s['colour_acc']:.3f} shape {s['shape_acc']:.3f} "
        f"motion {s['motion_acc']:.3f} two-object both {s['two_object_both_present']:.3f} "
        f"meets bars: {s['meets_bars']}"
    )
    return quality


def _versions() -> dict:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}
