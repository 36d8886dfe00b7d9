"""Per-family block accounting of the memory plan: what a forward keeps, per transformer block.

`pipelines.memory_plan` sums the family-independent terms (weights, erasers, optimizer, capture
results, trajectory pool, evals); the activation terms depend on how a family's block is built,
so they live here, one class per family, picked by `blocks_for(x.family)` (the architecture's
transformer class: `CogVideoXTransformer3DModel` -> `cogvideox`, `WanTransformer3DModel` -> `wan`).

Every count below was enumerated with autograd saved-tensor hooks on the real diffusers block
(`torch.autograd.graph.saved_tensors_hooks`, tensors deduplicated by storage, parameters left
out): a frozen Linear saves nothing (its weight needs no grad), SDPA (flash / efficient kernels,
CPU and CUDA alike) saves q, k, v, out and the logsumexp, a LayerNorm / RMSNorm saves its input
and [rows, tokens, 1] statistics. `tests/test_memory_plan.py` re-counts the Wan block with the
hooks at fp32 and bf16, both eraser sites and per-token timesteps, against `WanBlocks.saved_*`.

CogVideoX (joint attention over N = Nv + Nt tokens, U(R) = R x N x D x act bytes): 12 U per
block after the first erased one (GELU input 4 U, SDPA q k v out 4 U, q/k LayerNorm inputs 2 U,
the two AdaLN-norm inputs 2 U), 5 U in the first; the no-grad forward peaks at 12 U (11 counted,
12 measured on CPU: NO_GRAD_FORWARD_U); backward holds 10 U of gradients at the GELU.

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
"""

from __future__ import annotations

from dataclasses import replace

GIB = 2**30
NO_GRAD_FORWARD_U = 12  # CogVideoX: peak of a no-grad forward in U (11 counted from the code, 12 measured on CPU)


def unit(rows: int, tokens: int, hidden: int, nbytes: int) -> float:
    return float(rows) * tokens * hidden * nbytes

# The functions below take `pipelines.memory_plan.PlanInputs` (`x`) and return activation terms as
# (name, bytes, note) for the forward 2 + backward phase (this module imports nothing of the plan's).


def blocks_for(family: str):
    """The block accounting of a family (`cogvideox`, `wan`; variants such as `wan-attn1` map to their base)."""
    base = family.split("-")[0]
    if base not in FAMILY_BLOCKS:
        raise ValueError(f"the memory plan has no block accounting for family {family!r}; known: {', '.join(FAMILY_BLOCKS)}")
    return FAMILY_BLOCKS[base]


def _inner(x):
    """The adversarial inner attack's pass (loss.adv_steps): the B concept rows alone, with grad w.r.t. their text
    embedding (so every block saves, the first included), no energy record; its graph is freed after each pass."""
    return replace(x, preserve_rows=0, extra_rows=0, capture_layers=0)


def _energy(x) -> tuple[float, float]:
    """(energy records kept, fp32 copy of the concept rows' eraser output saved per eraser)."""
    b, nv = x.concept_rows, x.video_tokens
    if not x.capture_layers:
        return 0.0, 0.0
    return 4.0 * b * nv * len(x.eraser_blocks), 4.0 * b * nv * x.hidden


def _eraser_one(x, r2: int) -> float:
    """One eraser's saved tensors: its fp32 input [R2, Nv, D], the [R2, Nv, r] down output and GELU output."""
    return 4.0 * r2 * x.video_tokens * x.hidden + 2 * 4.0 * r2 * x.video_tokens * x.eraser_rank + _energy(x)[1]


def _f2_terms(x, saved: float, note: str, ckpt_saved: float, block: float, grads: float,
              grads_note: str) -> list[tuple[str, float, str]]:
    b, r2, nv = x.concept_rows, x.concept_rows + x.preserve_rows + x.extra_rows, x.video_tokens
    energy = _energy(x)[0]
    n_erasers = len(x.eraser_blocks)
    if x.checkpointing:
        return [
            ("forward 2 saved activations", ckpt_saved, f"R2={r2} rows; checkpointing: block inputs + final norm"),
            ("eraser energy records", energy, f"[{b}, {nv}] fp32 x {n_erasers} blocks"),
            ("backward recompute + grads", block + _eraser_one(x, r2) + grads,
             "one block's saved tensors + its eraser tensors again, and the gradients in flight"),
        ]
    return [
        ("forward 2 saved activations", saved, f"R2={r2} rows; " + note),
        ("eraser saved activations", _eraser_one(x, r2) * n_erasers + energy,
         f"fp32 input copy [R2, Nv, D]{' + [B, Nv, D] energy copy' if x.capture_layers else ''} per eraser x {n_erasers}"),
        ("backward grads in flight", grads, grads_note),
    ]


class CogVideoXBlocks:
    """CogVideoX: one joint attention over video + text tokens, a 4D-wide GELU FFN."""

    @staticmethod
    def tokens(x) -> int:
        return x.video_tokens + x.text_len

    @staticmethod
    def no_grad_forward(x, rows: int, video_tokens: int, act_bytes: int) -> float:
        return NO_GRAD_FORWARD_U * unit(rows, video_tokens + x.text_len, x.hidden, act_bytes)

    @classmethod
    def attention_time(cls, x, rows: int) -> float:
        """Tensors alive while a block's attention runs: input, norms, joint input, q, k, v (7 U)."""
        return 7 * unit(rows, cls.tokens(x), x.hidden, x.act_bytes)

    @classmethod
    def forward2(cls, x) -> list[tuple[str, float, str]]:
        return cls._grad_pass(x, x.concept_rows + x.preserve_rows, x.layers - min(x.eraser_blocks), False)

    @classmethod
    def inner_attack(cls, x) -> list[tuple[str, float, str]]:
        return cls._grad_pass(_inner(x), x.concept_rows, x.layers, True)

    @classmethod
    def _grad_pass(cls, x, r2: int, g: int, first_full: bool) -> list[tuple[str, float, str]]:
        """g blocks whose outputs need grad; the first saves 5 U (after its eraser) or, first_full, all 12 U."""
        u = unit(r2, cls.tokens(x), x.hidden, x.act_bytes)
        final_norms = 2 * unit(r2, x.video_tokens, x.hidden, x.act_bytes)  # norm_final and norm_out inputs
        first = 12 if first_full else 5
        saved = (first * u + 12 * u * (g - 1) + final_norms) if g else 0.0
        return _f2_terms(x, saved, f"12 U x {g - 1} blocks + {first} U + final norms; U={u / GIB:.3g} GB",
                         g * u + final_norms, 12 * u, 10 * u,
                         "GELU grad-out + grad-in [R2, N, 4D] + residual grads: 10 U")


class WanBlocks:
    """Wan: video self-attention (RoPE, q/k RMSNorm), cross-attention to the text, an ffn_dim-wide FFN."""

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
        return cls._grad_pass(_inner(x), x.concept_rows, x.layers, True)

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
        return _f2_terms(x, saved, f"{block / GIB:.3g} GB x {g - 1} blocks + first + output norm (counted)",
                         ckpt, block, grads,
                         "GELU grad-out + grad-in [R2, Nv, ffn_dim] + residual grads (fp32 and act dtype)")


FAMILY_BLOCKS = {"cogvideox": CogVideoXBlocks, "wan": WanBlocks}
