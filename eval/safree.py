"""SAFREE's text-side defence (Yoon et al., "SAFREE: Training-free and adaptive guard for safe text-to-image
and video generation", 2024), for the eval method `safree` (eval.methods).

Followed: the reference implementation, github jaehong31/SAFREE — `cogvideox/cogvideox_pipeline.py`
(`projection_matrix`, `mask_to_onp`, `_masked_encode_prompt`, `_new_encode_negative_prompt2`, `__call__`) and
`models/modified_stable_diffusion_pipeline.py` (`safree_projection`):

1. Concept subspace: each concept keyword prompt is encoded and pooled (CogVideoX version: the text
   encoder's output at the first position, `[:, 0, :]`; `method.safree.pooling: mean` averages each
   prompt's own tokens instead); C = their span, P_C = C (C^T C)^+ C^T.
2. Self-validating token selection: for each prompt token i, the prompt is encoded with token i replaced
   by the pad id (the reference writes id 0, T5's pad) and pooled the same way: p_i. d_i = ||(I - P_C) p_i||
   is how far the prompt without token i lies from the concept subspace. Token i is a trigger token when
   d_i >= (1 + alpha) * mean_{j != i} d_j (removing it takes the prompt away from the concept).
3. Projection: trigger tokens' embeddings e become (I - P_C) P_I e, where P_I projects onto the span of the
   masked-prompt vectors p_1..p_n (the input's own subspace); every other token is left exactly as is. The
   result of a trigger token is orthogonal to the concept subspace.
4. The projected embeddings replace the prompt's at every denoising step (the CogVideoX pipeline's use;
   SAFREE's Stable Diffusion version can limit them to early steps - not done here), and, as in SAFREE's
   CogVideoX pipeline, the concept words joined with ", " are the negative prompt (`method.safree.negative_prompt`).

Where this differs from the reference, and why: the maskable tokens are the tokenizer's non-special tokens
(the reference masks positions 1..n-2, which skips CLIP's BOS/EOS but, ported to T5, also skips the first
word); with fewer than two maskable tokens nothing is selected (the reference's leave-one-out mean is then
empty); all encodings use the model spec's own `encode_prompts` (padded to the pipeline's text length, as the
pipeline encodes prompts), the projections are computed in float64. The latent-side Fourier re-attention is
not implemented (the run's notes say so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CHUNK = 16  # masked prompts encoded per text-encoder call


def text_parts(pipe, model_path: str | Path, gen):
    """(spec class, tokenizer, text encoder, text length) of a loaded pipeline: what SAFREE encodes with."""
    from unlearn.config import ConfigError
    from unlearn.models.families import family_of_model_dir, spec_class

    spec = getattr(pipe, "t2vu_spec", None) or spec_class(family_of_model_dir(model_path))
    tokenizer, text_encoder = getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)
    if tokenizer is None or text_encoder is None:
        raise ConfigError(f"method.name: safree needs the pipeline's tokenizer and text_encoder ({model_path} has none)")
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"method.name: safree masks tokens with the pad token, but the tokenizer of {model_path} has none")
    return spec, tokenizer, text_encoder, int(gen.max_sequence_length or spec.text_len_of(model_path))


POOLING = ("first", "mean")


def pooled(embeds: torch.Tensor, lengths: list[int], mode: str = "first") -> torch.Tensor:
    """One vector per text encoding [N, L, D] -> [N, D]: `first` = the first position (SAFREE's CogVideoX
    pipeline, `[:, 0, :]`), `mean` = the mean over each prompt's own tokens (its first `lengths[i]` positions)."""
    if mode == "first":
        return embeds[:, 0, :]
    if mode != "mean":
        raise ValueError(f"pooling must be one of {POOLING}, got {mode!r}")
    n = embeds.shape[1]
    mask = (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).to(embeds.device, embeds.dtype)
    return (embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


def _lengths(tokenizer, texts: list[str], max_length: int) -> list[int]:
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length).input_ids
    return [len(i) for i in ids]


class MaskingTokenizer:
    """A tokenizer that tokenizes as the real one, then writes `mask_id` at one position per prompt.

    Lets `spec.encode_prompts` (which takes strings) encode token-masked prompts exactly, without
    decoding ids back to text.
    """

    def __init__(self, tokenizer, positions: list[int], mask_id: int):
        self._tokenizer, self._positions, self._mask_id = tokenizer, positions, mask_id

    def __call__(self, texts, **kwargs):
        enc = self._tokenizer(texts, **kwargs)
        ids = torch.as_tensor(enc["input_ids"]).clone()
        for row, pos in enumerate(self._positions):
            ids[row, pos] = self._mask_id
        enc["input_ids"] = ids
        return enc

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _encode(spec, tokenizer, text_encoder, prompts: list[str], max_length: int) -> torch.Tensor:
    with torch.inference_mode():
        return spec.encode_prompts(tokenizer, text_encoder, prompts, max_length)


def concept_pooled(spec, tokenizer, text_encoder, words: list[str], max_length: int,
                   pooling: str = "first") -> torch.Tensor:
    """[K, D] float64 pooled encodings of the concept keyword prompts (rows span the concept subspace)."""
    enc = _encode(spec, tokenizer, text_encoder, list(words), max_length)
    return pooled(enc, _lengths(tokenizer, words, max_length), pooling).double().cpu()


def project(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Rows of x [M, D] projected onto the span of the rows of basis [K, D]: x B^T (B B^T)^+ B."""
    return x @ basis.T @ torch.linalg.pinv(basis @ basis.T) @ basis


def select_tokens(masked: torch.Tensor, concept: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected [n] bool, distances [n]): token i is selected when the prompt without it lies at least
    (1 + alpha) x the mean of the others' distances away from the concept subspace."""
    dist = (masked - project(masked, concept)).norm(dim=-1)
    n = dist.numel()
    if n < 2:
        return torch.zeros(n, dtype=torch.bool), dist
    mean_others = (dist.sum() - dist) / (n - 1)
    return dist >= (1.0 + alpha) * mean_others, dist


def project_selected(tokens: torch.Tensor, positions: list[int], selected: torch.Tensor, concept: torch.Tensor,
                     masked: torch.Tensor) -> torch.Tensor:
    """tokens [L, D] with the selected positions replaced by (I - P_C) P_I e (float64 math, dtype kept)."""
    out = tokens.clone()
    rows = [p for p, s in zip(positions, selected.tolist()) if s]
    if not rows:
        return out
    e = tokens[rows].double().cpu()
    e_in = project(e, masked)
    new = e_in - project(e_in, concept)
    out[rows] = new.to(device=tokens.device, dtype=tokens.dtype)
    return out


def safree_prompt_embeds(spec, tokenizer, text_encoder, prompt: str, concept: torch.Tensor, max_length: int,
                         alpha: float, pooling: str = "first", tokens: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, dict[str, Any]]:
    """SAFREE's prompt embeddings [1, L, D] for `prompt`, and what was done (tokens, projected positions).

    tokens: [L, D] embeddings to project instead of the prompt's own encoding (an attack's embedding of the
    prompt, eval.attacks); the selection is still made on the prompt's text."""
    enc = tokenizer(prompt, add_special_tokens=True, truncation=True, max_length=max_length,
                    return_special_tokens_mask=True)
    positions = [i for i, special in enumerate(enc["special_tokens_mask"]) if not special]
    if tokens is None:
        tokens = _encode(spec, tokenizer, text_encoder, [prompt], max_length)[0]
    length = len(enc["input_ids"])
    parts = []
    for start in range(0, len(positions), CHUNK):
        chunk = positions[start:start + CHUNK]
        masking = MaskingTokenizer(tokenizer, chunk, tokenizer.pad_token_id)
        masked_enc = _encode(spec, masking, text_encoder, [prompt] * len(chunk), max_length)
        parts.append(pooled(masked_enc, [length] * len(chunk), pooling).double().cpu())
    masked = torch.cat(parts) if parts else torch.zeros((0, tokens.shape[-1]), dtype=torch.float64)
    selected, dist = select_tokens(masked, concept, alpha)
    new = project_selected(tokens, positions, selected, concept, masked)
    picked = [p for p, s in zip(positions, selected.tolist()) if s]
    return new[None], {"tokens": len(positions), "tokens_projected": len(picked), "projected_positions": picked}
