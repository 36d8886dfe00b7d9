"""Tiny CogVideoX model directories in the real diffusers layout, built offline.

No weights can be downloaded here, so tests and the CPU demo use randomly
initialised models that are laid out exactly like THUDM/CogVideoX-2b
(model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/)
and go through the same `from_pretrained(path)` code as the real ones.
Deterministic from a seed. RoPE is on (as in CogVideoX-5B) so the attention
capture is tested on post-RoPE queries/keys.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unlearn.fsutil import atomic_replace_dir

TINY_WORDS = (
    "a an the and of in on with at to is moving left right up down static naked nude body person "
    "people man woman face clothing clothed dressed background red green blue yellow purple crimson "
    "scarlet square circle cross ring bar beach room street photo portrait standing sitting walking "
    "dog cat car tree house sky sea city night day painting of by"
).split()

TINY_TEXT_LEN = 16

SCHEDULER_KW = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="v_prediction",
    timestep_spacing="trailing",
    rescale_betas_zero_snr=True,
    snr_shift_scale=3.0,
)


def build_tiny_pipeline(seed: int = 0, words=TINY_WORDS, rope: bool = True, num_layers: int = 2):
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    from unlearn.models.tokenizer import build_t5_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer(words)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        )
    ).eval()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=num_layers, sample_width=8, sample_height=8, sample_frames=9,
        patch_size=2, temporal_compression_ratio=4, max_text_seq_length=TINY_TEXT_LEN,
        use_rotary_positional_embeddings=rope,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
        block_out_channels=(8, 16, 32), latent_channels=4, layers_per_block=1, norm_num_groups=4,
        temporal_compression_ratio=4, sample_height=32, sample_width=32,
    )
    # diffusers' init (std 0.02, zero-init output projections) makes a random model predict ~0,
    # so every loss would be ~1e-5 and tests could not see learning. Fan-in-scaled weights give a
    # random model with O(1) outputs and attention that actually varies over tokens.
    with torch.no_grad():
        for m in transformer.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=m.in_features**-0.5)
    scheduler = CogVideoXDDIMScheduler(**SCHEDULER_KW)
    return CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def make_tiny_model(path: str | Path, seed: int = 0, overwrite: bool = False, **kw) -> Path:
    """Write a tiny CogVideoX directory to `path` (idempotent unless overwrite)."""
    path = Path(path)
    if (path / "model_index.json").exists() and not overwrite:
        return path
    pipe = build_tiny_pipeline(seed=seed, **kw)
    return atomic_replace_dir(path, lambda d: pipe.save_pretrained(str(d), safe_serialization=True))
