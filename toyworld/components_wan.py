"""The toy Wan's components: the same world in the real Wan classes (`t2vu toy build --family wan`).

Text side: the toy world's offline T5 tokenizer (`model_max_length` TEXT_LEN, which the
Wan spec reads as the text length) and a frozen random tiny `UMT5EncoderModel` (d_model 64,
as the CogVideoX toy's T5) whose relative-position bias is scaled up (TEXT_POSITION_GAIN) so
its outputs carry word order. VAE: `AutoencoderKLWan` (causal 3D convs; channels 8/16/32,
4x spatial and 4x temporal: 9x32x32 RGB <-> 4x3x8x8), with the world's per-channel latent
mean and std written into `latents_mean` / `latents_std`, which `WanPipeline` undoes
before decoding. Transformer: `WanTransformer3DModel` (4 blocks, 2 heads x 32, patch
(1,2,2), 3D RoPE in self-attention, text through cross-attention). Scheduler:
`FlowMatchEulerDiscreteScheduler(shift=SHIFT)`. Training (`noised`) is flow matching as in
diffusers' Wan training: x_t = (1 - s) x0 + s eps on shifted sigmas s, timestep 1000 s,
velocity target eps - x0.

Same interface as `toyworld.components` (the CogVideoX toy); `toyworld.parts` picks one.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from toyworld import world
from toyworld.components import GENERATION as COGVIDEOX_GENERATION
from toyworld.components import TEXT_LEN

FAMILY = "wan"
PIPELINE_CLASS = "WanPipeline"

#: Sampler settings the toy Wan is validated and evaluated with: the CogVideoX toy's (20 steps, 9x32x32, 16
#: text tokens) at classifier-free guidance 2.0, not 5.0. Measured on the shipped build (640 videos per value,
#: unlearn/assets/toy-wan-model/BUILD.md): motion 1.000 / 0.997 / 0.940 / 0.862 / 0.826 and colour 0.992 /
#: 0.982 / 0.958 / 0.948 / 0.945 at guidance 1 / 2 / 3 / 4 / 5 - stronger guidance overshoots this small
#: flow model (objects stop moving or turn; red and its synonyms lose their colour: 0.938 / 0.898 at 5).
#: 2.0 meets every bar and keeps the unconditional branch, which the negative-prompt method needs (at 1.0
#: it would do nothing).
GENERATION: dict = {**COGVIDEOX_GENERATION, "guidance_scale": 2.0}

#: Sigma shift of the flow scheduler, used by training and sampling alike (Wan 2.1 at 480p: 3.0).
SHIFT = 3.0
LATENT_CHANNELS = 4
#: Factor on the random UMT5's relative-position attention bias (init std 0.13). At 1 the frozen random
#: encoder is a bag of words ("red" as word 2 and as word 6 of two-object prompts: cosine 0.9996), and Wan's
#: cross-attention gives text keys no positions of their own, so nothing tells the two objects' colours
#: apart: the first build stalled at 0.41 two-object both-colours-present (4000 steps, 16 rows/set). At 30
#: that cosine is 0.81 (CogVideoX's joint attention adds text positions itself; its toy T5 needs none).
TEXT_POSITION_GAIN = 30.0

#: BuildConfig fields whose Wan defaults differ from the CogVideoX toy's (see unlearn/assets/toy-wan-model/BUILD.md):
#: the causal Wan VAE learns more slowly per step and each step costs more (probe: 0.75 s vs 0.45 s), less
#: latent noise (at 0.1 and lr 1e-3 it had not left the all-background output after 80 steps), and fewer
#: transformer steps (0.125 s each vs 0.086 s) to stay inside the 25-minute budget.
BUILD_DEFAULTS: dict = {"vae_steps": 900, "vae_min_steps": 400, "vae_latent_noise": 0.05, "tf_steps": 5000}

__all__ = ["FAMILY", "GENERATION", "TEXT_LEN", "BUILD_DEFAULTS", "make_text_side", "make_vae", "make_transformer",
           "make_scheduler", "make_pipeline", "load_pipeline", "decode_for_training", "latent_stats", "noised"]


def make_text_side(seed: int):
    """Tokenizer over the world's vocabulary (padded to TEXT_LEN) + frozen random tiny UMT5 encoder."""
    from transformers import UMT5Config, UMT5EncoderModel

    from unlearn.models.tokenizer import build_t5_tokenizer

    tokenizer = build_t5_tokenizer(world.vocabulary())
    tokenizer.model_max_length = TEXT_LEN
    torch.manual_seed(seed + 1234)
    enc = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        )
    ).eval()
    enc.requires_grad_(False)
    with torch.no_grad():
        for block in enc.encoder.block:
            block.layer[0].SelfAttention.relative_attention_bias.weight.mul_(TEXT_POSITION_GAIN)
    return tokenizer, enc


def make_vae(channels: tuple[int, ...] = (8, 16, 32)):
    from diffusers import AutoencoderKLWan

    base = channels[0]
    if any(c % base for c in channels):
        raise ValueError(f"Wan toy VAE channels {channels} must be multiples of the first one")
    n = len(channels)
    return AutoencoderKLWan(
        base_dim=base, z_dim=LATENT_CHANNELS, dim_mult=[c // base for c in channels], num_res_blocks=1,
        temperal_downsample=[True] * (n - 1), latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS, scale_factor_temporal=4, scale_factor_spatial=2 ** (n - 1),
    )


def make_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, text_dim=64, freq_dim=64, ffn_dim=256, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    )


def make_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT)


def make_pipeline(tokenizer, text_encoder, vae, transformer, scheduler=None):
    from diffusers import WanPipeline

    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=scheduler or make_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(model_dir: str | os.PathLike):
    """A saved toy Wan through `WanPipeline.from_pretrained`, progress bars off."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def decode_for_training(vae, z: torch.Tensor) -> torch.Tensor:
    """`AutoencoderKLWan.decode` without its final clamp to [-1, 1] (the same frame-by-frame causal loop).

    Clamped, a pixel that overshoots +-1 gets no gradient and stays wrong: the first build's VAE sat at
    10-25% colour agreement after 200 steps with the clamp. Generation keeps the clamp (`vae.decode`).
    """
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, 2)


def latent_stats(z: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """VAE means [N,C,F,h,w] -> (normalised latents in the transformer's layout [N,C,F,h,w], VAE config).

    Per channel, as Wan's `latents_mean` / `latents_std` (WanPipeline decodes z = x * std + mean).
    """
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4))
    view = (1, -1, 1, 1, 1)
    x = ((z - mean.view(view)) / std.view(view)).contiguous()
    return x, {"latents_mean": [float(v) for v in mean], "latents_std": [float(v) for v in std]}


def noised(scheduler, x0: torch.Tensor, noise: torch.Tensor, rng: np.random.Generator, cfg):
    """(x_t, timestep, velocity target) of a training batch: flow matching on the scheduler's shifted sigmas.

    u ~ U(0,1) (with `cfg.tf_t_high_frac` of it drawn from the noisier half), s = shift u / (1 + (shift-1) u).
    """
    b = x0.shape[0]
    u = rng.random(b)
    if cfg.tf_t_high_frac > 0:
        high = rng.random(b) < cfg.tf_t_high_frac
        u = np.where(high, 0.5 + 0.5 * rng.random(b), u)
    shift = float(scheduler.config.shift)
    s = torch.from_numpy(shift * u / (1 + (shift - 1) * u)).float()
    sv = s.view((-1,) + (1,) * (x0.dim() - 1))
    xt = (1 - sv) * x0 + sv * noise
    return xt, s * scheduler.config.num_train_timesteps, noise - x0
