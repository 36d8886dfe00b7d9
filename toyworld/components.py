"""The toy model's components: tiny CogVideoX parts in the real diffusers classes.

Text side (a T5 tokenizer over the world's words + a frozen random tiny T5 encoder), the
VAE (3 down/up blocks -> 4x spatial, 4x temporal), the transformer (4 layers, 2 heads x 32,
patch 2, no RoPE, TEXT_LEN text tokens), the CogVideoX-2b DDIM scheduler, and the pipeline
that joins them. Nothing here trains; `toyworld.training` does, `toyworld.build` saves.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from unlearn.models.tiny import SCHEDULER_KW
from toyworld import world

FAMILY = "cogvideox"
PIPELINE_CLASS = "CogVideoXPipeline"

#: BuildConfig fields whose defaults differ for this family (none: BuildConfig's defaults are this family's).
BUILD_DEFAULTS: dict = {}

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

# THUDM/CogVideoX-2b's scheduler_config.json, the one the tiny test model uses too.
SCHEDULER_CONFIG = SCHEDULER_KW


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


def load_pipeline(model_dir: str | os.PathLike):
    """A saved toy model through `CogVideoXPipeline.from_pretrained`, progress bars off."""
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def decode_for_training(vae, z: torch.Tensor) -> torch.Tensor:
    """The VAE's reconstruction during its training: `vae.decode(z).sample`."""
    return vae.decode(z).sample


def latent_stats(z: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """VAE means [N,C,F,h,w] -> (scaled latents in the transformer's layout [N,F,C,h,w], VAE config).

    One `scaling_factor` = 1/std(latents), as CogVideoX's VAE config holds it.
    """
    sf = float(1.0 / z.std())
    return (z * sf).permute(0, 2, 1, 3, 4).contiguous(), {"scaling_factor": sf}


def noised(scheduler, x0: torch.Tensor, noise: torch.Tensor, rng: np.random.Generator, cfg):
    """(x_t, timestep, v-prediction target) of a training batch on the DDIM schedule.

    Timesteps uniform over the schedule, `cfg.tf_t_high_frac` of them redrawn from its noisier half.
    """
    b = x0.shape[0]
    T = scheduler.config.num_train_timesteps
    t = rng.integers(0, T, b)
    if cfg.tf_t_high_frac > 0:  # oversample noisy timesteps, where shape must come from the text
        high = rng.random(b) < cfg.tf_t_high_frac
        t = np.where(high, rng.integers(T // 2, T, b), t)
    t = torch.from_numpy(t)
    return scheduler.add_noise(x0, noise, t), t, scheduler.get_velocity(x0, noise, t)
