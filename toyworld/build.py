"""Build the toy model: a tiny CogVideoX (or Wan) trained on the toy world, in the real diffusers layout.

`BuildConfig.family` picks the components: "cogvideox" (below; `builtin:toy`) or "wan"
(`toyworld.components_wan`, `t2vu toy build --family wan DIR`, `builtin:toy-wan`: the same
stages with AutoencoderKLWan, a UMT5 encoder, WanTransformer3DModel and flow matching,
loading through `WanPipeline.from_pretrained(DIR)`).

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

The stages live in `toyworld.components` (the diffusers parts), `toyworld.training`
(stages 2-4, `BuildConfig`) and `toyworld.quality` (stage 5); this module runs them in
order and saves. Their public names stay importable from here.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from toyworld.components import (
    GENERATION,
    SCHEDULER_CONFIG,
    TEXT_LEN,
    make_pipeline,
    make_scheduler,
    make_text_side,
    make_transformer,
    make_vae,
)
from toyworld.parts import parts_of
from toyworld.quality import QUALITY_BARS, generate, measure_dir, measure_quality, score_videos, write_quality
from toyworld.training import (
    BuildConfig,
    default_log,
    encode_prompts,
    encode_world,
    reconstruction_agreement,
    reuse_vae,
    train_transformer,
    train_vae,
)

__all__ = [
    "GENERATION", "QUALITY_BARS", "SCHEDULER_CONFIG", "TEXT_LEN", "BuildConfig", "build", "encode_prompts",
    "encode_world", "generate", "make_pipeline", "make_scheduler", "make_text_side", "make_transformer",
    "make_vae", "measure_dir", "measure_quality", "reconstruction_agreement", "score_videos",
    "train_transformer", "train_vae",
]


def build(out_dir: str | os.PathLike, cfg: BuildConfig | None = None, log: Callable[[str], None] = default_log) -> dict:
    """Train and save the toy model to `out_dir`; return (and write) its measured quality."""
    cfg = cfg or BuildConfig()
    parts = parts_of(cfg.family)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # never deleted: its files may not be ours
        raise FileExistsError(f"{out} already exists and is not an empty folder; build into a new one "
                              "(`t2vu toy build DIR` replaces only what an earlier build wrote there)")
    torch.set_num_threads(cfg.threads)
    # Wall time depends on whatever else shares the CPU; process CPU time does not (much),
    # so both are recorded.
    t_start, cpu_start = time.time(), time.process_time()
    tokenizer, text_encoder = parts.make_text_side(cfg.seed)
    log(f"{cfg.family} toy model; text side: vocab {len(tokenizer)}; training VAE (<= {cfg.vae_steps} steps)")
    vae, vae_stats = reuse_vae(cfg, log) if cfg.vae_from else train_vae(cfg, log)
    scenes, latents, vae_config = encode_world(vae, cfg.family)
    vae.register_to_config(**vae_config)
    log(f"VAE done in {vae_stats['time_s']:.0f}s ({vae_stats['steps']} steps); latent scaling {vae_config}")
    pipe = parts.make_pipeline(tokenizer, text_encoder, vae, parts.make_transformer())
    tf, tf_stats = train_transformer(cfg, pipe, scenes, latents, log)
    pipe = parts.make_pipeline(tokenizer, text_encoder, vae, tf)
    pipe.save_pretrained(out)
    train_s = time.time() - t_start
    log(f"saved to {out} after {train_s:.0f}s; measuring quality through {parts.PIPELINE_CLASS}.from_pretrained")

    quality = measure_quality(parts.load_pipeline(out), cfg.eval_n, cfg.eval_batch)
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
    write_quality(out, quality)
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
