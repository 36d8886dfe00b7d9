"""Wan's block accounting for the memory plan (`t2vu plan`): what a forward keeps per block.

Wan (self-attention over the Nv video tokens only, cross-attention to Nt = 512 text keys, FFN of
width F = ffn_dim; the block's LayerNorms and the q/k RMSNorms run in fp32 on `.float()` copies):
with U4 = R x Nv x D x 4 B, Ue = R x Nv x D x act bytes, S = R x Nv x 4 B (a norm statistic), a
block after the first erased one saves
    6 U4  norm1/norm2/norm3 inputs (fp32 copies in bf16) + attn1 q, k and attn2 q RMSNorm inputs
  + 6 Ue  SDPA q, k, v, out of attn1 and q, out of attn2
  + R x Nv x F x act bytes (GELU input) + 2 R x Nt x D x act bytes (attn2 text k, v)
  + S x (9 + 2 H)  norm statistics (mean/rstd x 3, rstd x 3) and two logsumexps [R, H, Nv]
  + 8 M  the AdaLN modulation: the chunked [R, 6, D] fp32 sum (the gates are views of it) and
         the two (1 + scale) tensors; M = R x D x 4 B, or R x Nv x D x 4 B with per-token
         timesteps (Wan 2.2 TI2V: `expand_timesteps`, the modulation is [R, Nv, 6, D] fp32).
The first erased block saves only what follows its eraser (after attn2: norm3 input, GELU input,
7 M; after attn1: also norm2 and attn2), the output norm saves U4 + 2 S + M, and the attn1 RoPE
multiplies keep the [1, Nv, 1, head_dim] fp32 cos/sin tables once. Gradient checkpointing keeps
each block's input (1 Ue), the shared text states and timestep projection (6 Ue with per-token
timesteps) and recomputes one block at a time.
The no-grad forward's peak (counted from the block's statements, not measured) is the largest of:
the FFN (block input, residual, norm3 output, the [R, Nv, F] projection and GELU output), the
gated residual add (4 Ue + 3 U4 in bf16: two `.float()` copies and the product; 6 U4 in fp32),
the q RMSNorm (5 Ue + its fp32 temporaries) and the attention (6 Ue) -- plus the block's live
modulation (6 M), the text states and the timestep projection. Backward holds the GELU's
grad-out and grad-in ([R, Nv, F] each) and the residual stream's fp32 and act-dtype gradients.

Counting method: unlearn.models.memory_terms.
"""

from __future__ import annotations

from unlearn.models.memory_terms import GIB, grad_pass_terms, inner_rows


class WanBlocks:
    """Wan: video self-attention (RoPE, q/k RMSNorm), cross-attention to the text, an ffn_dim-wide FFN."""

    encoders = "UMT5 + Wan VAE"  # what an eval pipeline holds besides the transformer(s)
    vae_live_frames = 4  # the causal decoder's frames per latent frame, decoded at once

    @staticmethod
    def tokens(x) -> int:
        return x.video_tokens

    @staticmethod
    def _m(x, rows: int, video_tokens: int) -> float:
        return 4.0 * rows * (video_tokens if x.expand_timesteps else 1) * x.hidden

    @classmethod
    def saved_block(cls, x, rows: int) -> float:
        """Bytes one block saves for backward when its input needs grad (eraser tensors excluded)."""
        nv, d, e = x.video_tokens, x.hidden, x.act_bytes
        u4, ue, s = 4.0 * rows * nv * d, float(e) * rows * nv * d, 4.0 * rows * nv
        return (6 * u4 + 6 * ue + e * rows * nv * x.ffn_dim + 2.0 * e * rows * x.text_len * d
                + s * (9 + 2 * x.heads) + 8 * cls._m(x, rows, nv))

    @classmethod
    def saved_first(cls, x, rows: int) -> float:
        """The first erased block: only what follows its eraser (after attn2, or after attn1)."""
        nv, d, e = x.video_tokens, x.hidden, x.act_bytes
        u4, ue, s = 4.0 * rows * nv * d, float(e) * rows * nv * d, 4.0 * rows * nv
        tail = u4 + e * rows * nv * x.ffn_dim + 2 * s + 7 * cls._m(x, rows, nv)  # norm3 + FFN + gates
        if x.eraser_site == "attn1":
            tail += 2 * u4 + 2 * ue + 2.0 * e * rows * x.text_len * d + s * (3 + x.heads)  # norm2 + attn2
        return tail

    @classmethod
    def saved_model(cls, x, rows: int, graph_blocks: int) -> float:
        """Outside the blocks: the output norm's input, statistics and (1 + scale); the RoPE tables."""
        nv = x.video_tokens
        rope = 2 * 4.0 * nv * x.head_dim if graph_blocks > 1 else 0.0  # a later block's attn1 needs grad
        return 4.0 * rows * nv * x.hidden + 2 * 4.0 * rows * nv + cls._m(x, rows, nv) + rope

    @classmethod
    def no_grad_forward(cls, x, rows: int, video_tokens: int, act_bytes: int) -> float:
        nv, d, e = video_tokens, x.hidden, act_bytes
        u4, ue = 4.0 * rows * nv * d, float(e) * rows * nv * d
        ffn = 3 * ue + 2.0 * e * rows * nv * x.ffn_dim
        gate = 4 * ue + (3 if e != 4 else 2) * u4
        qnorm = 5 * ue + (3 if e != 4 else 2) * u4  # q, k, v + the block input and norm1 output; fp32 temporaries
        attn = 6 * ue
        m = cls._m(x, rows, nv)
        start = ue + (12 if e != 4 else 6) * m  # the [R, ., 6, D] fp32 modulation and, in bf16, its upcast input
        model = e * rows * x.text_len * d * 3 + (7.0 * e * rows * nv * d if x.expand_timesteps else 0.0)
        return max(ffn + 6 * m, gate + 6 * m, qnorm + 6 * m, attn + 6 * m, start) + model

    @classmethod
    def attention_time(cls, x, rows: int) -> float:
        """Alive at attn2 when the capture runs: block input, residual, norm2 output, q; text k, v; modulation."""
        ue = float(x.act_bytes) * rows * x.video_tokens * x.hidden
        return 4 * ue + 2.0 * x.act_bytes * rows * x.text_len * x.hidden + 6 * cls._m(x, rows, x.video_tokens)

    @classmethod
    def forward2(cls, x) -> list[tuple[str, float, str]]:
        return cls._grad_pass(x, x.concept_rows + x.preserve_rows + x.extra_rows, x.layers - min(x.eraser_blocks), False)

    @classmethod
    def inner_attack(cls, x) -> list[tuple[str, float, str]]:
        return cls._grad_pass(inner_rows(x), x.concept_rows, x.layers, True)

    @classmethod
    def _grad_pass(cls, x, r2: int, g: int, first_full: bool) -> list[tuple[str, float, str]]:
        nv, d, e = x.video_tokens, x.hidden, x.act_bytes
        first = cls.saved_block(x, r2) if first_full else cls.saved_first(x, r2)
        saved = (first + cls.saved_block(x, r2) * (g - 1) + cls.saved_model(x, r2, g)) if g else 0.0
        ue = float(e) * r2 * nv * d
        text = e * r2 * x.text_len * d + (6.0 * ue if x.expand_timesteps else 0.0)  # text states, timestep proj
        ckpt = g * ue + text + cls.saved_model(x, r2, g) if g else 0.0
        grads = 2.0 * e * r2 * nv * x.ffn_dim + 4.0 * r2 * nv * d + ue
        block = cls.saved_block(x, r2)
        return grad_pass_terms(x, saved, f"{block / GIB:.3g} GB x {g - 1} blocks + first + output norm (counted)",
                         ckpt, block, grads,
                         "GELU grad-out + grad-in [R2, Nv, ffn_dim] + residual grads (fp32 and act dtype)")
