"""What the family-parameterised contract tests need to know about each model family.

A new family adds one `FamilyCase` here (its registry name, the text-embedding width of
its tiny model, and an explicit, by-hand computation of the attention its capture
processor records); `tests/test_family_contract.py` then runs the whole contract on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


def cogvideox_explicit_attention(attn, kwargs):
    """Full joint softmax by hand from the module's weights (post-norm, post-RoPE).

    Returns (head-averaged P(video query -> text key) [B, Nv, Nt], the module's video output).
    """
    from diffusers.models.embeddings import apply_rotary_emb

    norm_hidden, norm_text, rope = kwargs["hidden_states"], kwargs["encoder_hidden_states"], kwargs["image_rotary_emb"]
    nt = norm_text.shape[1]
    hs = torch.cat([norm_text, norm_hidden], 1)
    b, n, _ = hs.shape
    h = attn.heads
    q = attn.to_q(hs).view(b, n, h, -1).transpose(1, 2)
    k = attn.to_k(hs).view(b, n, h, -1).transpose(1, 2)
    v = attn.to_v(hs).view(b, n, h, -1).transpose(1, 2)
    q, k = attn.norm_q(q), attn.norm_k(k)
    q = torch.cat([q[:, :, :nt], apply_rotary_emb(q[:, :, nt:], rope)], 2)
    k = torch.cat([k[:, :, :nt], apply_rotary_emb(k[:, :, nt:], rope)], 2)
    p = torch.softmax(q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5, -1)  # full, explicit, fp32
    out = (p.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, -1)
    out = attn.to_out[0](out)
    return p[:, :, nt:, :nt].mean(1), out[:, nt:]


def wan_explicit_cross_attention(attn, kwargs):
    """Wan's cross-attention `attn2` by hand: RMSNorm across heads on q and k, no RoPE, softmax over text keys.

    Returns (head-averaged P(video query -> text key) [B, Nv, Nt], the module's output).
    """
    x, ctx = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
    assert attn.add_k_proj is None, "text-to-video Wan has no image branch"
    b, nv, _ = x.shape
    nt, h = ctx.shape[1], attn.heads
    q = attn.norm_q(attn.to_q(x)).view(b, nv, h, -1).transpose(1, 2)
    k = attn.norm_k(attn.to_k(ctx)).view(b, nt, h, -1).transpose(1, 2)
    v = attn.to_v(ctx).view(b, nt, h, -1).transpose(1, 2)
    p = torch.softmax(q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5, -1)  # full, explicit, fp32
    out = attn.to_out[0]((p.to(v.dtype) @ v).transpose(1, 2).reshape(b, nv, -1))
    return p.mean(1), out


@dataclass(frozen=True)
class FamilyCase:
    family: str
    text_dim: int  # width of the tiny model's text embeddings
    geometry: tuple[int, int, int]  # (frames, height, width) in pixels the tiny model accepts
    explicit_attention: Callable  # (capture module, its forward kwargs) -> (probs [B,Nv,Nt], video output)
    tiny_kwargs: dict = field(default_factory=dict)  # for the family's tiny builder (experts=2: Wan 2.2 A14B)
    name: str = ""

    @property
    def experts(self) -> int:
        return int(self.tiny_kwargs.get("experts", 1))

    def __str__(self) -> str:
        return self.name or self.family


CASES = [
    FamilyCase("cogvideox", text_dim=32, geometry=(9, 32, 32), explicit_attention=cogvideox_explicit_attention),
    FamilyCase("wan", text_dim=32, geometry=(9, 32, 32), explicit_attention=wan_explicit_cross_attention),
    # the eraser after self-attention attn1 (a site variant of wan); the mask still comes from attn2
    FamilyCase("wan-attn1", text_dim=32, geometry=(9, 32, 32), explicit_attention=wan_explicit_cross_attention),
    # Wan 2.2 A14B: two experts (transformer / transformer_2 by noise level), one eraser set per expert
    FamilyCase("wan", text_dim=32, geometry=(9, 32, 32), explicit_attention=wan_explicit_cross_attention,
               tiny_kwargs={"experts": 2}, name="wan-a14b"),
]


def perturb(eraser_set, seed: int = 1, scale: float = 0.3) -> None:
    """Give a zero-initialised eraser set random non-zero weights (so it changes the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in eraser_set.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def loaded_eraser_forward(model_dir, eraser_dir):
    """The two-line load (`CogVideoXPipeline.from_pretrained` + `load_eraser`) on a tiny CogVideoX, and one transformer
    forward on a fixed random input with the eraser on and off: (handle, erased output, base output). The caller
    removes the handle."""
    from diffusers import CogVideoXPipeline

    from unlearn.eraser import load_eraser

    pipe = CogVideoXPipeline.from_pretrained(model_dir)
    handle = load_eraser(pipe, eraser_dir)
    x = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(1, 16, pipe.transformer.config.text_embed_dim, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    with torch.no_grad():
        erased = pipe.transformer(x, emb, t, return_dict=False)[0]
        with handle.disabled():
            base = pipe.transformer(x, emb, t, return_dict=False)[0]
    return handle, erased, base
