"""True attention probabilities from video queries to text keys, without the full matrix.

The localization mask needs P(video query -> text key) *as the model computes
it* (after the family's q/k norms and positional embeddings). Which modules carry
that attention and the processor that records it are the model spec's answers
(`capture_modules`, `capture_processor`; CogVideoX: `unlearn/models/cogvideox_attention.py`).
For joint attention (CogVideoX: one softmax over [text; video] keys) materialising
the matrix costs B*H*Nv*(Nt+Nv) floats: ~19-37 GB for one layer at 49x480x720.
Instead we compute, per chunk of queries, the row-wise log-sum-exp over all keys by
streaming key chunks, then exponentiate only the Nt text columns: extra memory is
H*chunk_q*chunk_k (scores) + B*Nv*Nt (the head-averaged result). Cross attention
(text keys only) is the same function with no video keys.
"""

from __future__ import annotations

import contextlib

import torch


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


class AttentionCapture:
    """Installs capturing processors on chosen blocks; `capturing(n)` records the first n rows.

    `make_processor(chunk, full_matrix)` is the spec's `capture_processor`: an attention
    processor with `capture_rows` / `probs` attributes.
    """

    def __init__(self, attn_modules, make_processor, layers: list[int] | None = None, chunk: int = 1024,
                 full_matrix: bool = False):
        n = len(attn_modules)
        self.layers = list(range(n)) if layers is None else sorted(set(layers))
        bad = [i for i in self.layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"loss.mask_layers {bad} out of range: the model has {n} blocks (0..{n - 1})")
        self._modules = {i: attn_modules[i] for i in self.layers}
        self._original = {i: m.processor for i, m in self._modules.items()}
        self.processors = {i: make_processor(chunk, full_matrix) for i in self.layers}
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
        """The captured layers. A layer whose module did not run is left out: a denoiser of experts
        (Wan 2.2 A14B) runs only the experts whose noise levels the batch holds."""
        out = [p.probs for p in self.processors.values() if p.probs is not None]
        if not out:
            raise RuntimeError("attention was not captured: run a forward inside `capturing(rows)`")
        return out

    def remove(self) -> None:
        for i, m in self._modules.items():
            m.set_processor(self._original[i])
