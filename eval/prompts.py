"""Prompt CSVs: load, map columns, validate — all before any model loads.

Reference schema (`../shared/data/nudity_cogvideox.csv`): `prompt,seed,concept,concept_type`.
Other files are mapped through `PromptsConfig` (e.g. `prompt_column: "normal prompt"`,
`seed_column: evaluation_seed`, or `seed_column: null` with a default seed).

Every problem is reported with the file, the data row number (1 = first row after the
header) and the physical line, all problems of a file at once:

    prompts.csv: 2 problems:
      row 3 (line 4): empty prompt in column 'prompt'
      row 7 (line 8): seed 'abc' in column 'seed' is not an integer
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.config import ConfigError

MAX_SEED = 2**63 - 1
MAX_REPORTED = 20

# Which evaluation set a row belongs to: prompts that name the target, or prompts to preserve.
TARGET, PRESERVE = "target", "preserve"
SET_PREFIX = {TARGET: "t", PRESERVE: "p"}


class PromptFileError(ConfigError):
    """A prompt CSV is missing, unparseable or has bad rows (message names file and rows)."""


@dataclass(frozen=True)
class PromptRow:
    set: str  # "target" | "preserve"
    index: int  # 0-based data row in its CSV
    prompt: str
    seed: int
    concept: str = ""
    concept_type: str = ""
    # Every column of the CSV row as read (strings), for classifiers and results.csv.
    fields: dict[str, str] = field(default_factory=dict)
    source: str = ""
    # Tokens of the prompt with the pipeline's tokenizer, and the text encoder's limit (set by
    # eval.planning): above the limit the pipeline cuts the prompt.
    prompt_tokens: int | None = None
    token_limit: int | None = None

    @property
    def truncated(self) -> bool:
        return self.prompt_tokens is not None and self.token_limit is not None and self.prompt_tokens > self.token_limit

    def result_fields(self) -> dict[str, Any]:
        """What results.csv records about how this row was prompted (besides prompt and seed)."""
        return {"prompt_tokens": self.prompt_tokens, "truncated": self.truncated}

    @property
    def id(self) -> str:
        """Stable row id: set prefix + index, e.g. t00003 / p00000 (file names, resume keys)."""
        return f"{SET_PREFIX[self.set]}{self.index:05d}"

    def as_dict(self) -> dict[str, Any]:
        """What a classifier sees as `row`: every CSV field, plus the normalised prompt, seed,
        concept, concept_type and this stage's own keys (`row_id`, `eval_set`, `row_index`).
        CSV columns are never overwritten by the stage's keys (e.g. a toy CSV's `set`)."""
        d: dict[str, Any] = dict(self.fields)
        d.update(prompt=self.prompt, seed=self.seed)
        if self.concept or "concept" not in d:
            d["concept"] = self.concept
        if self.concept_type or "concept_type" not in d:
            d["concept_type"] = self.concept_type
        d.update(row_id=self.id, eval_set=self.set, row_index=self.index)
        return d


def parse_seed(raw: str) -> int:
    """An integer seed; '42', ' 42 ', '42.0' and '4.2e1' are accepted, '4.5', 'abc', '' are not."""
    text = raw.strip()
    if not text:
        raise ValueError("is empty")
    try:
        value = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            raise ValueError("is not an integer") from None
        if not f.is_integer():
            raise ValueError("is not an integer") from None
        value = int(f)
    if not 0 <= value <= MAX_SEED:
        raise ValueError("is out of range (0 .. 2**63-1)")
    return value


def read_prompt_csv(path: str | Path, cfg, set_name: str = TARGET, limit: int | None = None) -> list[PromptRow]:
    """Read and validate one prompt CSV under column mapping `cfg` (`eval.config.PromptsConfig`).

    `limit` (or cfg.limit when None) keeps the first N rows; rows beyond it are not validated.
    Raises PromptFileError naming the file and every bad row.
    """
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise PromptFileError(f"Prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{src}: cannot be parsed as a CSV: not UTF-8 text ({exc})") from None
    if not text.strip():
        raise PromptFileError(f"{src}: the file is empty; expected a header line with a '{cfg.prompt_column}' column")

    limit = cfg.limit if limit is None else limit
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise PromptFileError(f"{src}: cannot be parsed as a CSV at line {reader.line_num}: {exc}") from None
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise PromptFileError(f"{src}: duplicate column names {dupes} in the header")
    if cfg.prompt_column not in header:
        raise PromptFileError(
            f"{src}: no prompt column '{cfg.prompt_column}' in the header (columns: {header}); "
            "set prompt_column in the prompts/preserve section of the eval config"
        )
    if cfg.seed_column is not None and cfg.seed_column not in header:
        raise PromptFileError(
            f"{src}: no seed column '{cfg.seed_column}' in the header (columns: {header}); set seed_column "
            "to the column holding per-row seeds, or seed_column: null to use default_seed for every row"
        )

    rows: list[PromptRow] = []
    problems: list[str] = []
    n_data = 0
    line_start = reader.line_num + 1
    while True:
        if limit is not None and n_data >= limit:
            break
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"row {n_data + 1} (line {line_start}): cannot be parsed as CSV: {exc}")
            break  # the reader's position is unreliable after a parse error
        where = f"row {n_data + 1} (line {line_start})"
        line_start = reader.line_num + 1
        if not values or all(not v.strip() for v in values):
            continue  # blank line
        n_data += 1
        if len(values) != len(header):
            problems.append(f"{where}: has {len(values)} fields, the header has {len(header)} (unquoted comma?)")
            continue
        rec = dict(zip(header, values))
        prompt = rec[cfg.prompt_column].strip()
        if not prompt:
            problems.append(f"{where}: empty prompt in column '{cfg.prompt_column}'")
        if cfg.seed_column is not None:
            raw = rec[cfg.seed_column]
            try:
                seed = parse_seed(raw)
            except ValueError as exc:
                problems.append(f"{where}: seed {raw!r} in column '{cfg.seed_column}' {exc}")
                seed = -1
        else:
            seed = cfg.default_seed + (n_data - 1 if cfg.default_seed_policy == "plus_row_index" else 0)
        concept = rec.get(cfg.concept_column, "").strip() if cfg.concept_column else ""
        ctype = rec.get(cfg.concept_type_column, "").strip() if cfg.concept_type_column else ""
        rows.append(
            PromptRow(set=set_name, index=n_data - 1, prompt=prompt, seed=seed, concept=concept,
                      concept_type=ctype, fields=rec, source=src)
        )
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise PromptFileError(
            f"{src}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:\n  " + "\n  ".join(shown) + more
        )
    if not rows:
        raise PromptFileError(f"{src}: no data rows after the header")
    return rows


def load_eval_rows(cfg, prompts: str | Path | None = None, limit: int | None = None) -> list[PromptRow]:
    """All rows of an eval config: the target set, then the preserve set (if configured).

    `prompts` overrides `cfg.prompts.path`; `limit` overrides the limit of both sets.
    """
    target_path = prompts if prompts is not None else cfg.resolve_path(cfg.prompts.path)
    if target_path is None:
        raise ConfigError("No prompt file: set prompts.path in the eval config or pass --prompts CSV")
    rows = read_prompt_csv(Path(target_path), cfg.prompts, TARGET, limit)
    if cfg.preserve.path:
        rows += read_prompt_csv(cfg.resolve_path(cfg.preserve.path), cfg.preserve, PRESERVE, limit)
    return rows
