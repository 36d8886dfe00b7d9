"""CogVideoX's block accounting for the memory plan (`t2vu plan`): what a forward keeps per block.

CogVideoX (joint attention over N = Nv + Nt tokens, U(R) = R x N x D x act bytes): 12 U per
block after the first erased one (GELU input 4 U, SDPA q k v out 4 U, q/k LayerNorm inputs 2 U,
the two AdaLN-norm inputs 2 U), 5 U in the first; the no-grad forward peaks at 12 U (11 counted,
12 measured on CPU: NO_GRAD_FORWARD_U); backward holds 10 U of gradients at the GELU.

Where autocast runs layer_norm in fp32 (CUDA autocast does, CPU autocast does not:
unlearn/models/autocast_rules.py, `PlanInputs.fp32_ops`), the 4 norm inputs a block saves are the
fp32 copies autocast made (4 Un, Un = U at 4 bytes: 8 U + 4 Un a block, 4 U + Un the first, the
two output norms fp32), and the norms' fp32 outputs flow on: the joint attention input built from
them and the q/k after their norms are fp32 too, so a block's attention holds 13 U (input 1, norm1
outputs 2, joint input 2, normed q and k 4, v 1, SDPA's bf16 casts of q and k 2, its output 1)
where it holds 7 without, and the no-grad forward's peak (at the GELU) holds the FF input, built
from norm2's fp32 output, in fp32: 1 U more. Both differences measured on this CPU with torch's
CUDA list applied to the real block (+6.0 U and +1.0 U; tests/test_autocast_plan.py).

Counting method: unlearn.models.memory_terms.
"""

from __future__ import annotations

from unlearn.models.memory_terms import GIB, grad_pass_terms, inner_rows, unit

NO_GRAD_FORWARD_U = 12  # peak of a no-grad forward in U (11 counted from the code, 12 measured on CPU)
NO_GRAD_FORWARD_U_FP32_NORMS = NO_GRAD_FORWARD_U + 1  # fp32 norms (CUDA autocast): the FF input is fp32
ATTENTION_TIME_U, ATTENTION_TIME_U_FP32_NORMS = 7, 13


def fp32_norms(x) -> bool:
    """The block's LayerNorms run in fp32 on a lower-precision activation stream (CUDA autocast)."""
    return x.act_bytes != 4 and "layer_norm" in x.fp32_ops


class CogVideoXBlocks:
    """CogVideoX: one joint attention over video + text tokens, a 4D-wide GELU FFN."""

    encoders = "T5 + VAE"  # what an eval pipeline holds besides the transformer(s)
    vae_live_frames = 9  # frames the VAE decoder keeps ~8 live maps for at once

    @staticmethod
    def tokens(x) -> int:
        return x.video_tokens + x.text_len

    @staticmethod
    def no_grad_forward(x, rows: int, video_tokens: int, act_bytes: int) -> float:
        u = NO_GRAD_FORWARD_U_FP32_NORMS if fp32_norms(x) else NO_GRAD_FORWARD_U
        return u * unit(rows, video_tokens + x.text_len, x.hidden, act_bytes)

    @classmethod
    def attention_time(cls, x, rows: int) -> float:
        """Tensors alive while a block's attention runs: input, norms, joint input, q, k, v (7 U; 13 U with fp32 norms)."""
        u = ATTENTION_TIME_U_FP32_NORMS if fp32_norms(x) else ATTENTION_TIME_U
        return u * unit(rows, cls.tokens(x), x.hidden, x.act_bytes)

    @classmethod
    def forward2(cls, x) -> list[tuple[str, float, str]]:
        return cls._grad_pass(x, x.concept_rows + x.preserve_rows, x.layers - min(x.eraser_blocks), False)

    @classmethod
    def inner_attack(cls, x) -> list[tuple[str, float, str]]:
        return cls._grad_pass(inner_rows(x), x.concept_rows, x.layers, True)

    @classmethod
    def saved_block(cls, x, rows: int, first: bool = False) -> float:
        """Bytes a block saves for backward: 8 U + 4 norm inputs, or (first: after its eraser) 4 U + norm2's input."""
        u = unit(rows, cls.tokens(x), x.hidden, x.act_bytes)
        un = unit(rows, cls.tokens(x), x.hidden, 4 if fp32_norms(x) else x.act_bytes)
        return 4 * u + un if first else 8 * u + 4 * un

    @classmethod
    def _grad_pass(cls, x, r2: int, g: int, first_full: bool) -> list[tuple[str, float, str]]:
        """g blocks whose outputs need grad; the first saves 5 U (after its eraser) or, first_full, all 12 U."""
        u = unit(r2, cls.tokens(x), x.hidden, x.act_bytes)
        norm_bytes = 4 if fp32_norms(x) else x.act_bytes
        final_norms = 2 * unit(r2, x.video_tokens, x.hidden, norm_bytes)  # norm_final and norm_out inputs
        block = cls.saved_block(x, r2)
        saved = (cls.saved_block(x, r2, not first_full) + block * (g - 1) + final_norms) if g else 0.0
        what = "8 U + 4 fp32 norm inputs" if fp32_norms(x) else "12 U"
        return grad_pass_terms(x, saved, f"{what} x {g - 1} blocks + the first + final norms; U={u / GIB:.3g} GB",
                         g * u + final_norms, block, 10 * u,
                         "GELU grad-out + grad-in [R2, N, 4D] + residual grads: 10 U")
