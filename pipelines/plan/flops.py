"""FLOPs of the configured model's passes, from its architecture numbers alone (no torch).

A FLOP is a multiply or an add (a multiply-accumulate = 2), counted for the matmuls and convolutions
only, as `torch.utils.flop_counter.FlopCounterMode` counts them (tests/test_search_cost.py holds a
tiny CogVideoX and a tiny Wan transformer to these formulas). Norms, softmax, activations and
elementwise work are not counted: on a GPU they cost memory traffic, which the utilisation assumption
of `pipelines.plan.search_cost` absorbs.

Per row (one video's tokens) of a transformer forward, D = heads x head_dim, Nv video and Nt text tokens:
- CogVideoX (joint attention over N = Nt + Nv tokens): q, k, v, out 4 x 2ND^2; FF D -> 4D -> D 16ND^2;
  attention QK^T and PV 2 x 2N^2D; two AdaLN-zero projections temb -> 6D per block; embeddings
  (patch, text projection, time MLP) and the output projection once.
- Wan: self-attention over Nv (4 x 2NvD^2 + 4Nv^2D), cross-attention (q, o on Nv, k, v on Nt, 4NvNtD),
  FFN 2 x 2NvDF; the text (2-layer MLP on Nt), time (MLP + temb -> 6D, per token on Wan 2.2 TI2V)
  embedders, patch embedding and output projection once.
Backward of the frozen transformer (gradients flow to the erasers only): each Linear computes its
input gradient (1x its forward) but no weight gradient; the fused attention kernel's backward does
five N^2 matmuls against the forward's two (2.5x: it recomputes the scores).
"""

from __future__ import annotations

import math

ATTN_BACKWARD = 2.5  # flash/memory-efficient SDPA backward: QK^T again, dP, dS->dQ, dK, dV against QK^T + PV


def _cfg_int(cfg: dict, key: str, default: int) -> int:
    v = cfg.get(key)
    return int(default if v is None else v)


def transformer_forward(arch, video_tokens: int, text_tokens: int | None = None) -> dict[str, float]:
    """FLOPs of one row's forward by part: "blocks" (the blocks' weight matmuls; Wan's cross-attention text
    keys/values apart, "text_kv"), "adaln" (their timestep
    modulation projections), "embed" (patch, text and time embeddings), "head" (output projection),
    "attention" (score and value matmuls)."""
    t = arch.transformer
    d, nv, L, p2 = arch.hidden, int(video_tokens), arch.layers, arch.patch ** 2 * (arch.patch_t or 1)
    nt = arch.text_len if text_tokens is None else int(text_tokens)
    c_in, c_out = arch.latent_channels, _cfg_int(t, "out_channels", arch.latent_channels)
    if arch.family == "wan":
        f = arch.ffn_dim
        freq, text_dim = _cfg_int(t, "freq_dim", 256), _cfg_int(t, "text_dim", 4096)
        temb_rows = nv if arch.expand_timesteps else 1  # Wan 2.2 TI2V: one timestep per video token
        blocks = L * (2 * nv * 4 * d * d + 2 * nv * 2 * d * d + 2 * nv * 2 * d * f)
        text_kv = L * 2 * nt * 2 * d * d  # cross-attention keys/values of the text: no gradient flows into them
        adaln = 0  # Wan blocks add a learned table to one shared projection (counted in embed)
        embed = 2 * nv * c_in * p2 * d + 2 * nt * (text_dim * d + d * d) + temb_rows * 2 * (freq * d + d * d + d * 6 * d)
        head = 2 * nv * d * c_out * p2
        attention = L * (4 * nv * nv * d + 4 * nv * nt * d)
    else:
        n = nv + nt
        temb, text_dim = _cfg_int(t, "time_embed_dim", 512), _cfg_int(t, "text_embed_dim", 4096)
        inner = d  # diffusers' TimestepEmbedding: D sinusoid channels -> temb -> temb
        blocks = L * 2 * n * 12 * d * d
        text_kv = 0  # joint attention: the text tokens are part of the stream the gradient flows through
        adaln = L * 2 * 2 * temb * 6 * d  # norm1, norm2: AdaLN-zero temb -> 6D, per row
        embed = 2 * nv * c_in * p2 * d + 2 * nt * text_dim * d + 2 * (inner * temb + temb * temb)
        head = 2 * temb * 2 * d + 2 * nv * d * c_out * p2  # norm_out's AdaLN + proj_out
        attention = L * 4 * n * n * d
    return {k: float(v) for k, v in
            {"blocks": blocks, "text_kv": text_kv, "adaln": adaln, "embed": embed, "head": head,
             "attention": attention}.items()}


def forward_flops(arch, video_tokens: int, rows: float, text_tokens: int | None = None) -> float:
    return rows * sum(transformer_forward(arch, video_tokens, text_tokens).values())


def frozen_backward_flops(arch, video_tokens: int, rows: float, text_tokens: int | None = None) -> float:
    """Input gradients through the frozen blocks and head (no weight gradients; the timestep and text
    inputs need none, and the erasers sit in the blocks: nothing flows back into the embeddings)."""
    f = transformer_forward(arch, video_tokens, text_tokens)
    return rows * (f["blocks"] + f["head"] + ATTN_BACKWARD * f["attention"])


def eraser_flops(hidden: int, rank: int, sites: int, video_tokens: int) -> float:
    """One row's eraser forward over the video tokens: down D -> r and up r -> D at each site."""
    return float(sites * 2 * video_tokens * 2 * hidden * rank)


def capture_flops(arch, video_tokens: int, concept_rows: int, layers: int) -> float:
    """The attention capture (unlearn/attention.py): the [B, H, Nv, Nt] text-column scores per captured layer
    (the query's log-sum-exp comes from the kernel the block runs anyway), in fp32 with autocast off."""
    return float(layers * concept_rows * 2 * arch.heads * video_tokens * arch.text_len * arch.head_dim)


def text_encoder_flops(params_text_encoder: int, tokens: int, prompts: int) -> float:
    """T5 / UMT5 encoder: 2 FLOPs per weight per token (its attention is negligible at 226-512 tokens)."""
    return float(2 * params_text_encoder * tokens * prompts)


def vae_decode_flops(arch, num_frames: int, height: int, width: int) -> float:
    """Estimate of one video's VAE decode: the decoder's 3x3x3 convolutions (2 x 27 x Cin x Cout per output
    position) level by level, from the latent up. Not counted against a model (the decode is ~2% of an eval
    video at 2B); the up-sampler convolutions are counted as one 3x3x3 convolution at the finer level."""
    v = arch.vae
    frames_latent = (num_frames - 1) // arch.vae_temporal + 1
    if arch.family == "wan":
        base = _cfg_int(v, "decoder_base_dim", _cfg_int(v, "base_dim", 96))
        chans = [base * m for m in v.get("dim_mult", [1, 2, 4, 4])][::-1]
        per_level, mid = _cfg_int(v, "num_res_blocks", 2) + 1, 2
        z = _cfg_int(v, "z_dim", 16)
    else:
        chans = list(v["block_out_channels"])[::-1]
        per_level, mid = _cfg_int(v, "layers_per_block", 3) + 1, 2
        z = _cfg_int(v, "latent_channels", 16)
    levels = len(chans)
    t_ups = int(round(math.log2(arch.vae_temporal)))
    k = 2 * 27
    h, w, f = height // arch.vae_spatial, width // arch.vae_spatial, frames_latent
    total = k * z * chans[0] * f * h * w + mid * 2 * k * chans[0] ** 2 * f * h * w  # conv_in, mid block resnets
    prev = chans[0]
    for i, c in enumerate(chans):
        pos = f * h * w
        total += k * prev * c * pos + (2 * per_level - 1) * k * c * c * pos  # resnets (the first changes width)
        prev = c
        if i < levels - 1:  # up-sample: x2 in space, x2 in time for the first log2(temporal) levels
            h, w = 2 * h, 2 * w
            if i < t_ups:
                f = 2 * f - 1 if arch.family != "wan" else 2 * f
            total += k * c * c * f * h * w
    total += k * prev * 3 * f * h * w  # conv_out to RGB
    return float(total)
