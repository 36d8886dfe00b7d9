"""Wan's cross-attention processor, able to record the mask's attention probabilities.

Each Wan block has a self-attention `attn1` (video tokens, 3D RoPE) and a
cross-attention `attn2` (video queries -> text keys, no RoPE). The localization
mask wants P(video query -> text key) as the model computes it: after `attn2`'s
q/k RMSNorm (taken across all heads, before the head split). With text keys only,
the softmax runs over the Nt text keys, so each chunk of video queries' scores is a whole
softmax row: `unlearn.attention.text_column_probs` with no lse normalises it in place, one
q k^T matmul per chunk in fp32 (never the full [B, H, Nv, Nt] tensor). This is small next to
the block (Nt = 512 keys against the self-attention's Nv), so no kernel lse is needed here.

This processor computes the module output exactly as diffusers' `WanAttnProcessor`
does (same projections, same `dispatch_attention_fn` call). The image branch of
Wan I2V (`add_k_proj`: image tokens prepended to the text) is refused: erasure is
defined for text-to-video models.
"""

from __future__ import annotations

import torch

from unlearn.attention import full_text_probs_reference, kernel_inputs, text_column_probs
from unlearn.models.spec import first_rows


class CapturingWanAttnProcessor:
    """Drop-in for diffusers' `WanAttnProcessor` on a cross-attention that can also record probabilities.

    With `capture_rows = n`, the head-averaged probabilities of the first n batch rows are
    stored in `self.probs` ([n, Nv, Nt], float32). In one expert's sub-batch (Wan 2.2 A14B) the
    rows the other expert served are 0: the mask averages layers and then min-max normalises each
    frame, so a row's mask is that of its own expert's layers.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, chunk: int = 1024, full_matrix: bool = False):
        self.chunk = chunk
        self.full_matrix = full_matrix  # naive reference path (benchmarks)
        self.capture_rows = 0
        self.probs: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if attn.add_k_proj is not None:
            raise NotImplementedError(
                "this Wan cross-attention has an image branch (add_k_proj: Wan I2V); concept erasure here "
                "supports text-to-video Wan only (2.1 T2V, 2.2 TI2V-5B used as T2V)"
            )
        if encoder_hidden_states is None or rotary_emb is not None:
            raise ValueError("CapturingWanAttnProcessor is for Wan's cross-attention attn2 (text keys, no RoPE)")

        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        if self.capture_rows:
            n = self.capture_rows
            c, pos = first_rows(n)  # inside one expert of Wan 2.2 A14B: c of the n rows, at `pos`
            with torch.no_grad():
                # [c, H, Nv, d], [c, H, Nt, d], as the attention computes with them (autocast: its dtype)
                qv, kt = kernel_inputs(query[:c].detach().transpose(1, 2), key[:c].detach().transpose(1, 2))
                text_len, scale = kt.shape[2], qv.shape[-1] ** -0.5  # SDPA's default scale
                if self.full_matrix:
                    probs = full_text_probs_reference(qv, kt, text_len, scale)
                else:
                    probs = text_column_probs(qv, kt, scale, None, self.chunk)
                if pos is None:
                    self.probs = probs
                else:  # the caller's row order; rows the other expert served stay 0 in this layer
                    self.probs = probs.new_zeros((n, *probs.shape[1:])).index_put_((pos,), probs)

        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=self._attention_backend, parallel_config=None,
        )
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states
