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
    probs_per_layer: list[torch.Tensor], sel: torch.Tensor, video_grid: tuple[int, int, int], threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary mask [B, Nv] of video tokens attending to the concept, and the soft map it came from.

    probs: per layer [B, Nv, Nt] head-averaged video->text probabilities. Sum over the concept's
    tokens, average over layers, min-max normalise per frame (so every frame gets its own
    object region), threshold (Receler: 0.1).
    """
    m = torch.stack([torch.einsum("bvt,bt->bv", p, sel) for p in probs_per_layer]).mean(0)
    b = m.shape[0]
    f, h, w = video_grid
    per_frame = m.view(b, f, h * w)
    lo = per_frame.amin(-1, keepdim=True)
    hi = per_frame.amax(-1, keepdim=True)
    soft = ((per_frame - lo) / (hi - lo).clamp_min(1e-12)).view(b, -1)
    return (soft > threshold).float(), soft
