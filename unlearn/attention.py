"""True attention probabilities from video queries to text keys, at the cost of the text columns only.

The localization mask needs P(video query -> text key) *as the model computes it* (after the
family's q/k norms and positional embeddings). Which modules carry that attention and the
processor that records it are the model spec's answers (`capture_modules`, `capture_processor`;
CogVideoX: `unlearn/models/cogvideox_attention.py`, Wan: `unlearn/models/wan_attention.py`).

Joint attention (CogVideoX: one softmax over [text; video] keys). A probability on a text key is
exp(q.k_text * scale - lse(q)), lse(q) the query's log-sum-exp over ALL Nt+Nv keys. The block
runs SDPA over those keys anyway, and every fused SDPA kernel computes lse on the way (it is what
its backward needs): `attention_with_lse` calls that kernel directly and keeps it. The capture
then costs the Nt text columns only -- a [B, H, Nv, Nt] matmul and an exp, chunked over queries
(`text_column_probs`) -- instead of a second pass over all H*Nv*(Nt+Nv) scores. The kernel is the
one `F.scaled_dot_product_attention` itself dispatches to, with its autocast dtype rule, so the
block output is unchanged:
- CPU: `aten._scaled_dot_product_flash_attention_for_cpu` (what F.sdpa runs on CPU), lse [B, H, L];
- CUDA: what `torch._fused_sdp_choice` picks -- flash (`_scaled_dot_product_flash_attention`,
  bf16/fp16) or memory-efficient (`_scaled_dot_product_efficient_attention`, any float dtype;
  also used where cuDNN was picked; its lse comes padded to a multiple of 32 queries, cut back);
  not run on a GPU here: these are the ops and signatures of the installed torch (2.13), and their
  meta kernels are exercised by the tests;
- meta (stands in for CUDA in the tests): flash for bf16/fp16, memory-efficient otherwise
  (both have meta kernels).
Where none applies (math backend picked, an attention mask, another device), the output comes
from F.sdpa and lse from `streaming_logsumexp`: query chunk x key chunk, never the whole matrix.

Cross attention (Wan's attn2: the keys ARE the text) needs no lse from anywhere: each chunk of
[B, H, c, Nt] scores is its own full softmax row (`text_column_probs` with lse=None), one matmul
per chunk.

All capture arithmetic is fp32 with autocast off, on the q/k the kernel saw (under autocast:
rounded to the autocast dtype first, as SDPA's autocast rule does), so the recorded probabilities
are those of the model's attention, computed in fp32.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

_FLASH, _EFFICIENT, _CUDNN = 1, 2, 3  # torch.nn.attention.SDPBackend values, as torch._fused_sdp_choice returns
_LOW = (torch.bfloat16, torch.float16)


def no_autocast(device: torch.device | str):
    """Autocast off on this device type (a device with no autocast, e.g. meta: nothing to turn off)."""
    dev = torch.device(device).type
    return torch.autocast(dev, enabled=False) if torch.amp.is_autocast_available(dev) else contextlib.nullcontext()


def kernel_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors as SDPA computes with them: under autocast, floating inputs (fp64 aside) in the autocast
    dtype (SDPA is on autocast's lower-precision list on CPU and CUDA); otherwise unchanged."""
    dev = tensors[0].device.type
    if not (torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev)):
        return tensors
    dt = torch.get_autocast_dtype(dev)
    return tuple(t.to(dt) if t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors)


def _fused_choice(q, k, v) -> int:
    dev = q.device.type
    if dev == "meta":  # torch answers "math" for meta; mirror CUDA's pick instead (meta stands in for it)
        return _FLASH if q.dtype in _LOW else _EFFICIENT
    if q.shape[-1] % 8:  # F.sdpa pads such head dims before the fused kernels; leave those to it
        return 0
    return torch._fused_sdp_choice(q, k, v, None, 0.0, False)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`F.scaled_dot_product_attention(q, k, v)` (no mask, default scale) and, from the same fused kernel, each
    query's log-sum-exp over all keys ([B, H, Lq] fp32); lse is None where no fused kernel applies.

    q, k, v: [B, H, L, d], taken through `kernel_inputs` (the autocast rule) here.
    """
    q, k, v = kernel_inputs(q, k, v)
    dev, aten = q.device.type, torch.ops.aten
    with no_autocast(q.device):
        choice = _fused_choice(q, k, v) if dev in ("cpu", "cuda", "meta") else 0
        if dev == "cpu" and choice == _FLASH:
            out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)
            return out, lse
        if dev in ("cuda", "meta") and choice == _FLASH:
            out, lse = aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)[:2]
            return out, lse
        if dev in ("cuda", "meta") and choice in (_EFFICIENT, _CUDNN):
            out, lse = aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False)[:2]
            return out, lse[..., : q.shape[2]]  # padded to a multiple of 32 queries
        return F.scaled_dot_product_attention(q, k, v), None


def streaming_logsumexp(q: torch.Tensor, k: torch.Tensor, scale: float, chunk: int = 1024) -> torch.Tensor:
    """log-sum-exp over all keys of softmax(q k^T * scale), fp32, chunk x chunk scores at a time ([B, H, Lq]).

    The fallback for `attention_with_lse` (no fused kernel): it reads every score once, the cost the fused
    kernel's lse saves.
    """
    b, h, lq, _ = q.shape
    lse = torch.empty(b, h, lq, dtype=torch.float32, device=q.device)
    with no_autocast(q.device):
        for qs in range(0, lq, chunk):
            qc = q[:, :, qs : qs + chunk].float() * scale
            acc = None
            for ks in range(0, k.shape[2], chunk):
                part = torch.logsumexp(torch.matmul(qc, k[:, :, ks : ks + chunk].float().transpose(-1, -2)), dim=-1)
                acc = part if acc is None else torch.logaddexp(acc, part)
            lse[:, :, qs : qs + chunk] = acc
    return lse


def text_column_probs(
    q_video: torch.Tensor, k_text: torch.Tensor, scale: float, lse: torch.Tensor | None = None, chunk: int = 1024
) -> torch.Tensor:
    """Head-averaged attention probabilities of video queries on the text keys, fp32: [B, Nv, Nt].

    q_video: [B, H, Nv, d]; k_text: [B, H, Nt, d]. lse: [B, H, Nv], each query's log-sum-exp over ALL the keys
    it attends to (joint attention: `attention_with_lse`); None when the text keys are all of them (cross
    attention: each row is normalised over Nt). Scratch: [B, H, chunk, Nt] fp32, worked in place.
    """
    b, h, nv, _ = q_video.shape
    nt = k_text.shape[2]
    out = torch.empty(b, nv, nt, dtype=torch.float32, device=q_video.device)
    with torch.no_grad(), no_autocast(q_video.device):
        kt = k_text.float().transpose(-1, -2)
        for qs in range(0, nv, chunk):
            s = torch.matmul(q_video[:, :, qs : qs + chunk].float() * scale, kt)
            if lse is None:
                s.sub_(s.amax(dim=-1, keepdim=True)).exp_()
                s.div_(s.sum(dim=-1, keepdim=True))
            else:
                s.sub_(lse[:, :, qs : qs + chunk, None]).exp_()
            out[:, qs : qs + chunk] = s.mean(dim=1)
    return out


def full_text_probs_reference(q_video, k_all, text_len, scale) -> torch.Tensor:
    """The naive method: the full joint softmax in fp32 (the seed's naive objective and the tests)."""
    with torch.no_grad(), no_autocast(q_video.device):
        p = torch.softmax(torch.matmul(q_video.float() * scale, k_all.float().transpose(-1, -2)), dim=-1)
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
