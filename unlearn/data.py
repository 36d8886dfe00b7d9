"""Prompt-only training data (the seed's `PromptOnlyDataset` idea): no videos anywhere.

Each concept item is a prompt containing the target concept, its reference
prompts for the negative guidance (the empty prompt, anchor substitutions, or
a paired prompt from a CSV), and the positions of the concept's tokens.
Preserved prompts are concepts whose predictions must not move; the empty
prompt is among them by default because erasers also run in the
unconditional branch of classifier-free guidance at inference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearn.config import ConceptConfig, ConfigError
from unlearn.masks import concept_token_positions


@dataclass(frozen=True)
class ConceptItem:
    prompt: str
    references: tuple[str, ...]
    positions: tuple[int, ...]


def substitute(prompt: str, target: str, replacement: str) -> str:
    """Replace whole-word occurrences of `target` (case-insensitive)."""
    pattern = re.compile(rf"(?<!\w){re.escape(target)}(?!\w)", re.IGNORECASE)
    out, n = pattern.subn(replacement, prompt)
    if n == 0:
        raise ConfigError(
            f"concept.target {target!r} does not occur in concept prompt {prompt!r}: every concept prompt must "
            "contain the target word (it is what the anchors replace and where the mask looks)"
        )
    return re.sub(r"\s+", " ", out).strip()


def read_prompt_csv(path: str | Path, columns: list[str]) -> list[dict]:
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"concept.prompts_file {path} does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several parser error types
        raise ConfigError(f"concept.prompts_file {path} cannot be parsed as CSV: {' '.join(str(exc).split())}") from exc
    for c in columns:
        if c not in df.columns:
            raise ConfigError(f"{path}: column {c!r} not found (columns: {list(df.columns)}); set concept.prompts_column / paired_column")
    rows = df[columns].to_dict("records")
    for i, r in enumerate(rows, start=2):  # header is line 1
        for c in columns:
            if not str(r[c]).strip():
                raise ConfigError(f"{path}, line {i}: empty {c!r}")
    return rows


class PromptOnlyData:
    def __init__(self, cfg: ConceptConfig, tokenizer, text_len: int, base_dir: str | Path | None = None):
        self.cfg = cfg
        pairs: list[tuple[str, tuple[str, ...]]] = []
        prompts = list(cfg.prompts)
        paired: list[str] = []
        if cfg.prompts_file:
            path = Path(cfg.prompts_file)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            cols = [cfg.prompts_column] + ([cfg.paired_column] if cfg.reference == "paired" else [])
            rows = read_prompt_csv(path, cols)
            prompts = [r[cfg.prompts_column].strip() for r in rows]
            paired = [r[cfg.paired_column].strip() for r in rows] if cfg.reference == "paired" else []
        if not prompts:
            raise ConfigError("No concept prompts: set concept.prompts (a list) or concept.prompts_file (a CSV)")
        for i, p in enumerate(prompts):
            if cfg.reference == "empty":
                refs = ("",)
            elif cfg.reference == "anchors":
                refs = tuple(substitute(p, cfg.target, a) for a in cfg.anchors)
            else:
                refs = (paired[i],)
            pairs.append((p, refs))
        self.items = [
            ConceptItem(p, refs, tuple(concept_token_positions(tokenizer, p, cfg.target, text_len)))
            for p, refs in pairs
        ]
        self.preserve = list(dict.fromkeys(list(cfg.preserve) + ([""] if cfg.preserve_empty else [])))

    def shard(self, rank: int, world: int, pick) -> "PromptOnlyData":
        """A copy holding this rank's share of the concept items and preserve prompts (`pick(prompts, rank, world)`)."""
        import copy

        out = copy.copy(self)
        keep = set(pick([it.prompt for it in self.items], rank, world))
        out.items = [it for it in self.items if it.prompt in keep]
        out.preserve = pick(self.preserve, rank, world) if self.preserve else []
        return out

    def all_prompts(self) -> list[str]:
        out = [""]  # CFG's unconditional prompt is needed for trajectory sampling
        for it in self.items:
            out += [it.prompt, *it.references]
        return list(dict.fromkeys(out + self.preserve))

    def sample(self, gen: torch.Generator, batch_size: int, preserve_batch_size: int):
        ci = torch.randint(len(self.items), (batch_size,), generator=gen).tolist()
        items = [self.items[i] for i in ci]
        pres = []
        if preserve_batch_size and self.preserve:
            pi = torch.randint(len(self.preserve), (preserve_batch_size,), generator=gen).tolist()
            pres = [self.preserve[i] for i in pi]
        return items, pres
