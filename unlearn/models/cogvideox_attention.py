"""CogVideoX's joint-attention processor, able to record the mask's attention probabilities.

CogVideoX has no cross-attention: each block runs one softmax over [text; video]
keys, after the per-head q/k LayerNorm and RoPE on video tokens. This processor
computes the block output exactly as diffusers' `CogVideoXAttnProcessor2_0` does
(same ops, SDPA) and, when asked, the head-averaged probabilities of video queries
on text keys: each query's log-sum-exp over all keys comes from the SDPA kernel the block
runs anyway (`unlearn.attention.attention_with_lse`), and only the Nt text columns are
computed on top (`unlearn.attention.text_column_probs`; never the full joint matrix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearn.attention import (
    attention_with_lse,
    full_text_probs_reference,
    kernel_inputs,
    streaming_logsumexp,
    text_column_probs,
)


class CapturingCogVideoXAttnProcessor:
    """Drop-in for diffusers' `CogVideoXAttnProcessor2_0` that can also record text-column probabilities.

    Output is computed exactly as the stock processor does (same ops, SDPA; a capturing forward
    calls the fused kernel SDPA dispatches to directly, to keep its log-sum-exp), so
    installing it changes nothing. With `capture_rows = n`, the probabilities
    of the first n batch rows are stored in `self.probs` ([n, Nv, Nt]).
    """

    def __init__(self, chunk: int = 1024, full_matrix: bool = False):
        self.chunk = chunk
        self.full_matrix = full_matrix  # naive reference path (benchmarks)
        self.capture_rows = 0
        self.probs: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)

        if self.capture_rows and not self.full_matrix:
            hidden_states = self._attend_and_capture(query, key, value, attention_mask, text_seq_length)
        else:
            if self.capture_rows:  # the naive reference (the seed's objective): the full joint softmax
                n, scale = self.capture_rows, attn.scale if hasattr(attn, "scale") else head_dim**-0.5
                qv, ka = query[:n, :, text_seq_length:].detach(), key[:n].detach()
                self.probs = full_text_probs_reference(qv, ka, text_seq_length, scale)
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states

    def _attend_and_capture(self, query, key, value, attention_mask, nt):
        """SDPA's output, and `self.probs` of the first `capture_rows` rows: P(video query -> text key), fp32.

        The log-sum-exp over all keys is the SDPA kernel's own; only the text columns are computed here.
        """
        n, scale = self.capture_rows, query.shape[-1] ** -0.5  # SDPA's default scale
        query, key, value = kernel_inputs(query, key, value)  # what SDPA computes with (autocast: its dtype)
        if attention_mask is None:
            out, lse = attention_with_lse(query, key, value)
        else:  # no fused lse under a mask (CogVideoX's blocks pass none); the capture's softmax ignores it, as before
            out, lse = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask), None
        with torch.no_grad():
            qv, ka = query[:n, :, nt:].detach(), key[:n].detach()
            lse = lse[:n, :, nt:] if lse is not None else streaming_logsumexp(qv, ka, scale, self.chunk)
            self.probs = text_column_probs(qv, ka[:, :, :nt], scale, lse, self.chunk)
        return out
