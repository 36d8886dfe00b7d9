"""CogVideoX's block accounting for the memory plan (`t2vu plan`): what a forward keeps per block.

CogVideoX (joint attention over N = Nv + Nt tokens, U(R) = R x N x D x act bytes): 12 U per
block after the first erased one (GELU input 4 U, SDPA q k v out 4 U, q/k LayerNorm inputs 2 U,
the two AdaLN-norm inputs 2 U), 5 U in the first; the no-grad forward peaks at 12 U (11 counted,
12 measured on CPU: NO_GRAD_FORWARD_U); backward holds 10 U of gradients at the GELU.

Counting method: unlearn.models.memory_terms.
"""

from __future__ import annotations

from unlearn.models.memory_terms import GIB, grad_pass_terms, inner_rows, unit

NO_GRAD_FORWARD_U = 12  # peak of a no-grad forward in U (11 counted from the code, 12 measured on CPU)


class CogVideoXBlocks:
    """CogVideoX: one joint attention over video + text tokens, a 4D-wide GELU FFN."""

    encoders = "T5 + VAE"  # what an eval pipeline holds besides the transformer(s)
    vae_live_frames = 9  # frames the VAE decoder keeps ~8 live maps for at once

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
        return cls._grad_pass(inner_rows(x), x.concept_rows, x.layers, True)

    @classmethod
    def _grad_pass(cls, x, r2: int, g: int, first_full: bool) -> list[tuple[str, float, str]]:
        """g blocks whose outputs need grad; the first saves 5 U (after its eraser) or, first_full, all 12 U."""
        u = unit(r2, cls.tokens(x), x.hidden, x.act_bytes)
        final_norms = 2 * unit(r2, x.video_tokens, x.hidden, x.act_bytes)  # norm_final and norm_out inputs
        first = 12 if first_full else 5
        saved = (first * u + 12 * u * (g - 1) + final_norms) if g else 0.0
        return grad_pass_terms(x, saved, f"12 U x {g - 1} blocks + {first} U + final norms; U={u / GIB:.3g} GB",
                         g * u + final_norms, 12 * u, 10 * u,
                         "GELU grad-out + grad-in [R2, N, 4D] + residual grads: 10 U")
