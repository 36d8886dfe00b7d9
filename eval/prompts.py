"""Prompt CSVs as they come: load, map columns, filter, dedupe, validate - all before any model loads.

Reference schema (`../shared/data/nudity_cogvideox.csv`): `prompt,seed,concept,concept_type`.
Other files are read through `PromptsConfig` (eval.prompt_config): a UTF-8 BOM is dropped, the
seed column is found by convention (seed / evaluation_seed / sd_seed) or seeds are derived per
row (default_seed + row index), a per-row guidance column is used, a leading pandas index
column is dropped, row filters apply, duplicated prompt+seed rows are counted (and dropped with
`dedupe: true`). What was found is reported: `PromptSet.info` (summary.json `prompt_sets`) and
`PromptSet.notes` (the console, summary.json `notes`, report.md).

Every problem is reported with the file, the data row number (1 = first row after the
header) and the physical line, all problems of a file at once (or, with `on_bad_row: skip`,
every skipped row with its reason):

    prompts.csv: 2 problems:
      row 3 (line 4): empty prompt in column 'prompt'
      row 7 (line 8): seed 'abc' in column 'seed' is not an integer
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.config import ConfigError
from unlearn.csvsafe import unescape_cell

MAX_SEED = 2**63 - 1
MAX_REPORTED = 20
# pandas' to_csv writes its index as a first column with an empty header; read back and written
# again it becomes "Unnamed: 0" (then "Unnamed: 0.1"): such leading columns are an index, not data.
INDEX_HEADER = re.compile(r"^(|Unnamed: \d+(\.\d+)?)$")

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
    # Where the seed came from: "column <name>", "default_seed + row index" or "default_seed".
    seed_source: str = ""
    # This row's guidance scale (a CSV guidance column); None = generation.guidance_scale.
    guidance: float | None = None
    # CSV columns mapped onto stage fields (prompt, seed, guidance, concept...): not copied as csv.<name>.
    mapped: tuple[str, ...] = ()

    @property
    def truncated(self) -> bool:
        return self.prompt_tokens is not None and self.token_limit is not None and self.prompt_tokens > self.token_limit

    def result_fields(self) -> dict[str, Any]:
        """What results.csv records about how this row was prompted (besides prompt and seed)."""
        return {"prompt_tokens": self.prompt_tokens, "truncated": self.truncated, "seed_source": self.seed_source,
                "guidance": self.guidance, "mapped_columns": list(self.mapped)}

    @property
    def id(self) -> str:
        """Stable row id: set prefix + index, e.g. t00003 / p00000 (file names, resume keys)."""
        return f"{SET_PREFIX[self.set]}{self.index:05d}"

    def as_dict(self) -> dict[str, Any]:
        """What a classifier sees as `row`: every CSV field, plus the normalised prompt, seed,
        concept, concept_type and this stage's own keys (`row_id`, `eval_set`, `row_index`,
        `row_guidance`: the row's guidance scale or None).
        CSV columns are never overwritten by the stage's keys (e.g. a toy CSV's `set`)."""
        d: dict[str, Any] = dict(self.fields)
        d.update(prompt=self.prompt, seed=self.seed)
        if self.concept or "concept" not in d:
            d["concept"] = self.concept
        if self.concept_type or "concept_type" not in d:
            d["concept_type"] = self.concept_type
        d.update(row_id=self.id, eval_set=self.set, row_index=self.index, row_guidance=self.guidance)
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


def parse_guidance(raw: str) -> float | None:
    """A guidance scale >= 0, or None for an empty cell (generation.guidance_scale applies)."""
    text = raw.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number >= 0")
    return value


def _column(choice: str | None, header: list[str], known: tuple[str, ...], key: str, src: str) -> str | None:
    """The column a `seed_column` / `guidance_column` setting names in this header (None: none)."""
    if choice is None:
        return None
    if choice == "auto":
        return next((c for c in known if c in header), None)
    if choice not in header:
        raise PromptFileError(
            f"{src}: no {key.split('_')[0]} column '{choice}' in the header (columns: {header}); set {key} to the "
            f"column to use, {key}: auto (finds {', '.join(known)}), or {key}: null"
        )
    return choice


@dataclass
class PromptSet:
    """The rows of one prompt CSV, and what reading it found (summary.json `prompt_sets`)."""

    rows: list[PromptRow]
    info: dict[str, Any]
    # (is a warning, text): said in the run's output (warnings on the console; all in summary and report)
    notes: list[tuple[bool, str]] = field(default_factory=list)


def read_prompt_csv(path: str | Path, cfg, set_name: str = TARGET, limit: int | None = None) -> list[PromptRow]:
    """The rows of one prompt CSV under `cfg` (`eval.config.PromptsConfig`); see read_prompt_set."""
    return read_prompt_set(path, cfg, set_name, limit).rows


def read_prompt_set(path: str | Path, cfg, set_name: str = TARGET, limit: int | None = None) -> PromptSet:
    """Read, filter, dedupe and validate one prompt CSV under `cfg` (`eval.config.PromptsConfig`).

    `limit` (or cfg.limit when None) keeps the first N usable rows; rows beyond them are not read.
    Raises PromptFileError naming the file and every bad row (unless `cfg.on_bad_row: skip`).
    """
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise PromptFileError(f"Prompt file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # drops a UTF-8 BOM (spreadsheet exports carry one)
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
    # cells the project escaped when it wrote the file (a results.csv given as prompts) read as the
    # original text; any other cell as it stands (unlearn.csvsafe)
    header = [unescape_cell(h).strip() for h in header]
    index_cols: list[str] = []
    for h in header:
        if not INDEX_HEADER.match(h) or len(index_cols) == len(header) - 1:
            break
        index_cols.append(h)
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise PromptFileError(f"{src}: duplicate column names {dupes} in the header")
    if cfg.prompt_column not in header:
        raise PromptFileError(
            f"{src}: no prompt column '{cfg.prompt_column}' in the header (columns: {header}); "
            "set prompt_column in the prompts/preserve section of the eval config"
        )
    from eval.prompt_config import GUIDANCE_COLUMNS, SEED_COLUMNS

    seed_col = _column(cfg.seed_column, header, SEED_COLUMNS, "seed_column", src)
    guidance_col = _column(cfg.guidance_column, header, GUIDANCE_COLUMNS, "guidance_column", src)
    missing = sorted({f.column for f in cfg.filters} - set(header))
    if missing:
        raise PromptFileError(f"{src}: filters name columns {missing} the file does not have (columns: {header})")
    mapped = tuple(c for c in (cfg.prompt_column, seed_col, guidance_col, cfg.concept_column, cfg.concept_type_column)
                   if c and c in header)
    derived = "default_seed + row index" if cfg.default_seed_policy == "plus_row_index" else "default_seed"

    rows: list[PromptRow] = []
    problems: list[str] = []
    skipped: list[str] = []
    seen: dict[tuple, int] = {}
    duplicates: list[tuple[int, int]] = []
    prompts_seen: set[str] = set()
    repeated_prompts = filtered = n_data = 0
    line_start = reader.line_num + 1
    while limit is None or len(rows) < limit:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"row {n_data + 1} (line {line_start}): cannot be parsed as CSV: {exc}")
            break  # the reader's position is unreliable after a parse error
        values = [unescape_cell(v) for v in values]
        where = f"row {n_data + 1} (line {line_start})"
        line_start = reader.line_num + 1
        if not values or all(not v.strip() for v in values):
            continue  # blank line
        n_data += 1
        bad: list[str] = []
        if len(values) != len(header):
            bad.append(f"{where}: has {len(values)} fields, the header has {len(header)} (unquoted comma?)")
        else:
            rec = dict(zip(header, values))
            try:
                if not all(f.keeps(rec[f.column]) for f in cfg.filters):
                    filtered += 1
                    continue
            except ValueError as exc:
                bad.append(f"{where}: {exc}")
        if not bad:
            prompt = rec[cfg.prompt_column].strip()
            if not prompt:
                bad.append(f"{where}: empty prompt in column '{cfg.prompt_column}'")
            seed = cfg.default_seed + (n_data - 1 if cfg.default_seed_policy == "plus_row_index" else 0)
            if seed_col is not None:
                try:
                    seed = parse_seed(rec[seed_col])
                except ValueError as exc:
                    bad.append(f"{where}: seed {rec[seed_col]!r} in column '{seed_col}' {exc}")
            guidance = None
            if guidance_col is not None:
                try:
                    guidance = parse_guidance(rec[guidance_col])
                except ValueError as exc:
                    bad.append(f"{where}: guidance {rec[guidance_col]!r} in column '{guidance_col}' {exc}")
        if bad:
            (skipped if cfg.on_bad_row == "skip" else problems).extend(bad)
            continue
        key = (prompt, seed, guidance)
        if key in seen:
            duplicates.append((n_data, seen[key]))
            if cfg.dedupe:
                continue
        else:
            seen[key] = n_data
            repeated_prompts += prompt in prompts_seen
            prompts_seen.add(prompt)
        concept = rec.get(cfg.concept_column, "").strip() if cfg.concept_column else ""
        ctype = rec.get(cfg.concept_type_column, "").strip() if cfg.concept_type_column else ""
        rows.append(PromptRow(
            set=set_name, index=n_data - 1, prompt=prompt, seed=seed, concept=concept, concept_type=ctype,
            fields={k: v for k, v in rec.items() if k not in index_cols}, source=src,
            seed_source=f"column {seed_col}" if seed_col else derived, guidance=guidance, mapped=mapped,
        ))
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        fixable = cfg.on_bad_row == "error" and any("cannot be parsed as CSV" not in p for p in problems)
        hint = "\n  (on_bad_row: skip, or t2vu eval --skip-bad-rows, leaves such rows out, each reported)" if fixable else ""
        raise PromptFileError(
            f"{src}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:\n  " + "\n  ".join(shown) + more + hint
        )
    if not rows:
        why = f" ({filtered} filtered out, {len(skipped)} skipped)" if filtered or skipped else ""
        raise PromptFileError(f"{src}: no data rows after the header{why}")
    info = {
        "path": str(path.resolve()), "sha256": hashlib.sha256(raw).hexdigest(), "rows": len(rows),
        "seed_column": seed_col, "seeds": f"column {seed_col}" if seed_col else f"{derived} (default_seed {cfg.default_seed})",
        "guidance_column": guidance_col, "index_columns": index_cols, "filters": [f.describe() for f in cfg.filters],
        "filtered_out": filtered, "duplicates": len(duplicates), "deduped": len(duplicates) if cfg.dedupe else 0,
        "repeated_prompts": repeated_prompts, "skipped": skipped, "limit": limit,
    }
    from eval.prompt_notes import set_notes

    return PromptSet(rows, info, set_notes(src, cfg, info, duplicates))


def load_eval_sets(cfg, prompts: str | Path | None = None, limit: int | None = None) -> dict[str, PromptSet]:
    """The prompt sets of an eval config: "target", then "preserve" (if configured).

    `prompts` overrides `cfg.prompts.path` and then evaluates that file alone, unless
    `preserve.with_cli_prompts` adds the preserve set; `limit` overrides the limit of each set.
    """
    target_path = prompts if prompts is not None else cfg.resolve_path(cfg.prompts.path)
    if target_path is None:
        raise ConfigError("No prompt file: set prompts.path in the eval config or pass --prompts CSV")
    sets = {TARGET: read_prompt_set(Path(target_path), cfg.prompts, TARGET, limit)}
    if cfg.preserve.path and (prompts is None or cfg.preserve.with_cli_prompts):
        sets[PRESERVE] = read_prompt_set(cfg.resolve_path(cfg.preserve.path), cfg.preserve, PRESERVE, limit)
    return sets


def load_eval_rows(cfg, prompts: str | Path | None = None, limit: int | None = None) -> list[PromptRow]:
    """All rows of an eval config: the target set, then the preserve set (if configured)."""
    return [r for s in load_eval_sets(cfg, prompts, limit).values() for r in s.rows]
