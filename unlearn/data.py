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


def token_counts(tokenizer, prompts: list[str]) -> list[int]:
    """Tokens per prompt as the model's tokenizer makes them, special tokens included (T5: the words plus
    </s>). Encoding pads or cuts to the text length; a count above it means the words past it are dropped.
    The one count of training (`check_prompt_lengths`) and evaluation (`eval.generate.prompt_token_counts`)."""
    return [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True).input_ids] if prompts else []


class PromptTooLongError(ConfigError):
    """A training prompt longer than the text encoder's limit (the message names the config field)."""


def check_prompt_lengths(tokenizer, text_len: int, named: list[tuple[str, str]]) -> None:
    """Refuse prompts the encoder would cut: `named` = [(config field, prompt)].

    Training encodes every prompt padded or cut to `text_len` tokens; a cut prompt would train the
    eraser on words the user did not write to stop where they stop, silently (evaluation only warns,
    `checks.on_truncation`: a cut eval prompt is still a prompt a user may type; a cut training prompt is
    a config mistake, shortened in a moment). No use case needs it, so it is refused, not warned."""
    uniq = list(dict.fromkeys(p for _, p in named))
    counts = dict(zip(uniq, token_counts(tokenizer, uniq)))
    long = [(where, p, counts[p]) for where, p in named if counts[p] > text_len]
    if not long:
        return
    where, p, n = long[0]
    shown = p if len(p) <= 60 else p[:57] + "..."
    more = f" (and {len(long) - 1} more over the limit)" if len(long) > 1 else ""
    raise PromptTooLongError(
        f"{where} is {n} tokens, over the text encoder's limit of {text_len} ({shown!r}){more}: training would cut "
        f"it to its first {text_len} tokens without a word; shorten it"
    )


class PromptOnlyData:
    def __init__(self, cfg: ConceptConfig, tokenizer, text_len: int, base_dir: str | Path | None = None):
        self.cfg = cfg
        pairs: list[tuple[str, tuple[str, ...]]] = []
        prompts = list(cfg.prompts)
        paired: list[str] = []
        prompt_field = [f"concept.prompts[{i}]" for i in range(len(prompts))]
        if cfg.prompts_file:
            path = Path(cfg.prompts_file)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            cols = [cfg.prompts_column] + ([cfg.paired_column] if cfg.reference == "paired" else [])
            rows = read_prompt_csv(path, cols)
            prompts = [r[cfg.prompts_column].strip() for r in rows]
            paired = [r[cfg.paired_column].strip() for r in rows] if cfg.reference == "paired" else []
            prompt_field = [f"concept.prompts_file {path} line {i + 2} ({cfg.prompts_column!r})" for i in range(len(prompts))]
        if not prompts:
            raise ConfigError("No concept prompts: set concept.prompts (a list) or concept.prompts_file (a CSV)")
        named: list[tuple[str, str]] = []
        for i, p in enumerate(prompts):
            named.append((prompt_field[i], p))
            if cfg.reference == "empty":
                refs = ("",)
            elif cfg.reference == "anchors":
                refs = tuple(substitute(p, cfg.target, a) for a in cfg.anchors)
                named += [(f"concept.anchors[{j}] in {prompt_field[i]}", r) for j, r in enumerate(refs)]
            else:
                refs = (paired[i],)
                named.append((f"concept.prompts_file {path} line {i + 2} ({cfg.paired_column!r})", paired[i]))
            pairs.append((p, refs))
        named += [(f"concept.preserve[{i}]", p) for i, p in enumerate(cfg.preserve)]
        check_prompt_lengths(tokenizer, text_len, named)
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
