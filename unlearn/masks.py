"""Concept token positions and the binary localization mask over video tokens."""

from __future__ import annotations

import torch


class ConceptNotInPromptError(ValueError):
    pass


def find_subsequence(haystack: list[int], needle: list[int]) -> list[int]:
    n = len(needle)
    for i in range(len(haystack) - n + 1):
        if haystack[i : i + n] == needle:
            return list(range(i, i + n))
    return []


def concept_token_positions(tokenizer, prompt: str, concept: str, max_length: int) -> list[int]:
    """Positions of `concept`'s tokens inside the padded prompt ids (special tokens excluded from the concept).

    Tries the concept as a word inside a sentence (leading-space piece) first, then
    as-is; multi-piece words and multi-word concepts are matched as a contiguous run.
    """
    ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True).input_ids
    candidates = []
    for text in (concept, concept.lower(), " " + concept):
        c = tokenizer(text, add_special_tokens=False).input_ids
        if c and c not in candidates:
            candidates.append(c)
    for c in candidates:
        pos = find_subsequence(ids, c)
        if pos:
            return pos
    raise ConceptNotInPromptError(
        f"Concept {concept!r} (token ids {candidates[0] if candidates else []}) does not occur in prompt "
        f"{prompt!r} (ids {ids[:24]}{'...' if len(ids) > 24 else ''}). Every concept prompt must contain the "
        "concept's words as written in concept.target (check spelling/inflection, or the prompt was truncated)."
    )


def selector(positions: list[list[int]], text_len: int, device=None) -> torch.Tensor:
    """[B, Nt] 0/1 matrix selecting each row's concept tokens."""
    sel = torch.zeros(len(positions), text_len, device=device)
    for r, pos in enumerate(positions):
        sel[r, pos] = 1.0
    return sel


def localization_mask(
    probs_per_layer: list[torch.Tensor], sel: torch.Tensor, video_grid: tuple[int, int, int], threshold: float,
    tokens: slice | None = None, reduce_range=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary mask [B, Nv] of video tokens attending to the concept, and the soft map it came from.

    probs: per layer [B, Nv, Nt] head-averaged video->text probabilities. Sum over the concept's
    tokens, average over layers, min-max normalise per frame (so every frame gets its own
    object region), threshold (Receler: 0.1).
    tokens: the probabilities cover only these video tokens (a sequence-parallel shard,
    `unlearn.sequence_parallel`; frames need not align with it): the mask is theirs.
    reduce_range(lo, hi): makes each [B, F] per-frame min / max the group's (a frame's tokens
    span shards; +inf / -inf stand for a frame with none here): 2 x B x F numbers exchanged.
    """
    m = torch.stack([torch.einsum("bvt,bt->bv", p, sel) for p in probs_per_layer]).mean(0)
    b = m.shape[0]
    f, h, w = video_grid
    start = 0 if tokens is None else tokens.start
    frame = (torch.arange(start, start + m.shape[1], device=m.device) // (h * w)).expand(b, -1)
    lo = m.new_full((b, f), float("inf")).scatter_reduce(1, frame, m, "amin")
    hi = m.new_full((b, f), float("-inf")).scatter_reduce(1, frame, m, "amax")
    if reduce_range is not None:
        lo, hi = reduce_range(lo, hi)
    lo, hi = lo.gather(1, frame), hi.gather(1, frame)
    soft = (m - lo) / (hi - lo).clamp_min(1e-12)
    return (soft > threshold).float(), soft
