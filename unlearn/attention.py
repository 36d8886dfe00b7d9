"""True joint-attention probabilities from video queries to text keys, without the full matrix.

CogVideoX has no cross-attention: each block runs one softmax over
[text; video] keys. The localization mask needs P(video query -> text key)
*as the model computes it* (after the per-head q/k LayerNorm and after RoPE on
video tokens). Materialising the joint matrix costs B*H*Nv*(Nt+Nv) floats:
~19-37 GB for one layer at 49x480x720. Instead we compute, per chunk of
queries, the row-wise log-sum-exp over all keys by streaming key chunks, then
exponentiate only the Nt text columns: extra memory is
H*chunk_q*chunk_k (scores) + B*Nv*Nt (the head-averaged result).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def text_column_probs(
    q_video: torch.Tensor, k_all: torch.Tensor, text_len: int, scale: float, chunk: int = 1024
) -> torch.Tensor:
    """Head-averaged softmax(q k^T * scale)[:, :, :, :text_len] for video queries.

    q_video: [B, H, Nv, d]; k_all: [B, H, Nt+Nv, d] (text keys first). Returns [B, Nv, Nt] (float32).
    """
    b, h, nv, _ = q_video.shape
    n_all = k_all.shape[2]
    out = torch.empty(b, nv, text_len, dtype=torch.float32, device=q_video.device)
    k_text = k_all[:, :, :text_len].float()
    for qs in range(0, nv, chunk):
        q = q_video[:, :, qs : qs + chunk].float() * scale
        lse = None
        for ks in range(0, n_all, chunk):
            s = torch.matmul(q, k_all[:, :, ks : ks + chunk].float().transpose(-1, -2))
            part = torch.logsumexp(s, dim=-1)
            lse = part if lse is None else torch.logaddexp(lse, part)
            del s
        p_text = torch.exp(torch.matmul(q, k_text.transpose(-1, -2)) - lse.unsqueeze(-1))
        out[:, qs : qs + chunk] = p_text.mean(dim=1)
    return out


def full_text_probs_reference(q_video, k_all, text_len, scale) -> torch.Tensor:
    """The naive method (full joint softmax); used by tests and the benchmark only."""
    p = torch.softmax(torch.matmul(q_video.float(), k_all.float().transpose(-1, -2)) * scale, dim=-1)
    return p[..., :text_len].mean(dim=1)


class CapturingCogVideoXAttnProcessor:
    """Drop-in for diffusers' `CogVideoXAttnProcessor2_0` that can also record text-column probabilities.

    Output is computed exactly as the stock processor does (same ops, SDPA), so
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

        if self.capture_rows:
            n = self.capture_rows
            scale = attn.scale if hasattr(attn, "scale") else head_dim**-0.5
            with torch.no_grad():
                qv, ka = query[:n, :, text_seq_length:].detach(), key[:n].detach()
                if self.full_matrix:
                    self.probs = full_text_probs_reference(qv, ka, text_seq_length, scale)
                else:
                    self.probs = text_column_probs(qv, ka, text_seq_length, scale, self.chunk)

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


class AttentionCapture:
    """Installs capturing processors on chosen blocks; `capturing(n)` records the first n rows."""

    def __init__(self, attn_modules, layers: list[int] | None = None, chunk: int = 1024, full_matrix: bool = False):
        n = len(attn_modules)
        self.layers = list(range(n)) if layers is None else sorted(set(layers))
        bad = [i for i in self.layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"loss.mask_layers {bad} out of range: the model has {n} blocks (0..{n - 1})")
        self._modules = {i: attn_modules[i] for i in self.layers}
        self._original = {i: m.processor for i, m in self._modules.items()}
        self.processors = {i: CapturingCogVideoXAttnProcessor(chunk, full_matrix) for i in self.layers}
        for i, m in self._modules.items():
            m.set_processor(self.processors[i])

    @contextlib.contextmanager
    def capturing(self, rows: int):
        for p in self.processors.values():
            p.capture_rows, p.probs = rows, None
        try:
            yield self
        finally:
            for p in self.processors.values():
                p.capture_rows = 0

    def probs(self) -> list[torch.Tensor]:
        out = [p.probs for p in self.processors.values()]
        if any(p is None for p in out):
            raise RuntimeError("attention was not captured: run a forward inside `capturing(rows)`")
        return out

    def remove(self) -> None:
        for i, m in self._modules.items():
            m.set_processor(self._original[i])
