"""Tiny Wan model directories in the real diffusers layout, built offline.

Laid out exactly like Wan-AI/Wan2.1-T2V-1.3B-Diffusers (model_index.json `WanPipeline`,
transformer/ `WanTransformer3DModel`, vae/ `AutoencoderKLWan`, text_encoder/
`UMT5EncoderModel`, tokenizer/, scheduler/ `UniPCMultistepScheduler` with flow sigmas,
shift 3) and loaded through the same `from_pretrained(path)` code as the real ones.
Random weights, deterministic from a seed: 2 blocks x 2 heads x 12 (hidden 24), text
width 32, 16 latent channels, VAE 4x temporal / 8x spatial, 16 text tokens (the
tokenizer's model_max_length, which the spec reads as the text length).
`experts=2` adds `transformer_2` (its own random weights) and `boundary_ratio` 0.875 to
model_index.json, laid out and loaded as Wan-AI/Wan2.2-T2V-A14B-Diffusers is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unlearn.fsutil import atomic_replace_dir
from unlearn.models.tiny import TINY_WORDS

TINY_WAN_TEXT_LEN = 16

SCHEDULER_KW = dict(  # Wan2.1-T2V-1.3B-Diffusers' scheduler_config.json
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
    solver_order=2, solver_type="bh2", lower_order_final=True, timestep_spacing="linspace",
)


A14B_BOUNDARY_RATIO = 0.875  # Wan2.2-T2V-A14B-Diffusers' model_index.json


def build_tiny_wan_pipeline(seed: int = 0, words=TINY_WORDS, num_layers: int = 2, scheduler: str = "unipc",
                            experts: int = 1):
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    from unlearn.models.tokenizer import build_t5_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer(words)
    tokenizer.model_max_length = TINY_WAN_TEXT_LEN
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        )
    ).eval()
    if experts not in (1, 2):
        raise ValueError(f"experts={experts}: a Wan model has 1 transformer or 2 (Wan 2.2 A14B)")

    def make_transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=48, num_layers=num_layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
        )

    transformer = make_transformer()
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    # Fan-in-scaled weights: a random model with O(1) outputs and attention that varies over tokens
    # (as in unlearn.models.tiny), so tests can see learning and a non-trivial mask.
    transformers = [transformer] + ([make_transformer()] if experts == 2 else [])
    with torch.no_grad():
        for t in transformers:
            for m in t.modules():
                if isinstance(m, torch.nn.Linear):
                    torch.nn.init.normal_(m.weight, std=m.in_features**-0.5)
    if scheduler == "unipc":
        sched = UniPCMultistepScheduler(**SCHEDULER_KW)
    else:
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    extra = {"transformer_2": transformers[1], "boundary_ratio": A14B_BOUNDARY_RATIO} if experts == 2 else {}
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=sched, **extra)


def make_tiny_wan(path: str | Path, seed: int = 0, overwrite: bool = False, **kw) -> Path:
    """Write a tiny Wan directory to `path` (idempotent unless overwrite)."""
    path = Path(path)
    if (path / "model_index.json").exists() and not overwrite:
        return path
    pipe = build_tiny_wan_pipeline(seed=seed, **kw)
    return atomic_replace_dir(path, lambda d: pipe.save_pretrained(str(d), safe_serialization=True))
