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
    Steps: the file's text (_read_text), its header (_read_header), its data rows (_read_rows), then every
    problem at once (_raise_problems) and what was found (info, notes).
    """
    path = Path(path)
    src = str(path)
    raw, text = _read_text(path, cfg.prompt_column)
    limit = cfg.limit if limit is None else limit
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    cols = _read_header(reader, cfg, src)
    found = _read_rows(reader, cfg, cols, set_name, src, limit)
    _raise_problems(found, cfg, src)
    derived = _derived_seeds(cfg)
    info = {
        "path": str(path.resolve()), "sha256": hashlib.sha256(raw).hexdigest(), "rows": len(found.rows),
        "seed_column": cols.seed, "seeds": f"column {cols.seed}" if cols.seed else f"{derived} (default_seed {cfg.default_seed})",
        "guidance_column": cols.guidance, "index_columns": cols.index, "filters": [f.describe() for f in cfg.filters],
        "filtered_out": found.filtered, "duplicates": len(found.duplicates),
        "deduped": len(found.duplicates) if cfg.dedupe else 0,
        "repeated_prompts": found.repeated_prompts, "skipped": found.skipped, "limit": limit,
    }
    from eval.prompt_notes import set_notes

    return PromptSet(found.rows, info, set_notes(src, cfg, info, found.duplicates))


def _read_text(path: Path, prompt_column: str) -> tuple[bytes, str]:
    """The file's bytes (hashed into info) and its text, BOM dropped; missing, non-UTF-8 or empty: refused."""
    if not path.is_file():
        raise PromptFileError(f"Prompt file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # drops a UTF-8 BOM (spreadsheet exports carry one)
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path}: cannot be parsed as a CSV: not UTF-8 text ({exc})") from None
    if not text.strip():
        raise PromptFileError(f"{path}: the file is empty; expected a header line with a '{prompt_column}' column")
    return raw, text


@dataclass(frozen=True)
class _Columns:
    """What a file's header maps onto: its columns, the leading index columns, the seed and guidance columns
    in use (None: derived seeds / generation.guidance_scale), and every column mapped onto a row field."""

    header: list[str]
    index: list[str]
    seed: str | None
    guidance: str | None
    mapped: tuple[str, ...]


def _read_header(reader, cfg, src: str) -> _Columns:
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
    return _Columns(header, index_cols, seed_col, guidance_col, mapped)


def _derived_seeds(cfg) -> str:
    return "default_seed + row index" if cfg.default_seed_policy == "plus_row_index" else "default_seed"


@dataclass
class _Found:
    """What reading the data rows found: the usable rows, the problems (refused) or skipped rows (reported),
    duplicates as (row, earlier row), and the counts summary.json reports."""

    rows: list[PromptRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    seen: dict[tuple, int] = field(default_factory=dict)
    prompts_seen: set[str] = field(default_factory=set)
    repeated_prompts: int = 0
    filtered: int = 0
    n_data: int = 0  # data rows read so far (blank lines not counted): row numbers in messages, derived seeds

    def keeps(self, key: tuple, dedupe: bool) -> bool:
        """Record the row (prompt, seed, guidance) as the n_data-th; False when dedupe drops it as a repeat."""
        if key in self.seen:
            self.duplicates.append((self.n_data, self.seen[key]))
            return not dedupe
        self.seen[key] = self.n_data
        self.repeated_prompts += key[0] in self.prompts_seen
        self.prompts_seen.add(key[0])
        return True


def _read_rows(reader, cfg, cols: _Columns, set_name: str, src: str, limit: int | None) -> _Found:
    found = _Found()
    derived = _derived_seeds(cfg)
    line_start = reader.line_num + 1
    while limit is None or len(found.rows) < limit:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            found.problems.append(f"row {found.n_data + 1} (line {line_start}): cannot be parsed as CSV: {exc}")
            break  # the reader's position is unreliable after a parse error
        values = [unescape_cell(v) for v in values]
        where = f"row {found.n_data + 1} (line {line_start})"
        line_start = reader.line_num + 1
        if not values or all(not v.strip() for v in values):
            continue  # blank line
        found.n_data += 1
        rec, bad = _record(values, cfg, cols.header, where)
        if rec is None and not bad:
            found.filtered += 1
            continue
        if not bad:
            prompt, seed, guidance, bad = _row_values(rec, cfg, cols, found.n_data, where)
        if bad:
            (found.skipped if cfg.on_bad_row == "skip" else found.problems).extend(bad)
            continue
        if not found.keeps((prompt, seed, guidance), cfg.dedupe):
            continue
        concept = rec.get(cfg.concept_column, "").strip() if cfg.concept_column else ""
        ctype = rec.get(cfg.concept_type_column, "").strip() if cfg.concept_type_column else ""
        found.rows.append(PromptRow(
            set=set_name, index=found.n_data - 1, prompt=prompt, seed=seed, concept=concept, concept_type=ctype,
            fields={k: v for k, v in rec.items() if k not in cols.index}, source=src,
            seed_source=f"column {cols.seed}" if cols.seed else derived, guidance=guidance, mapped=cols.mapped,
        ))
    return found


def _record(values: list[str], cfg, header: list[str], where: str) -> tuple[dict[str, str] | None, list[str]]:
    """(the row as {column: cell}, []) when it passes the filters; (None, []) when a filter drops it;
    (None, [problem]) when its field count is wrong or a numeric filter meets a non-number."""
    if len(values) != len(header):
        return None, [f"{where}: has {len(values)} fields, the header has {len(header)} (unquoted comma?)"]
    rec = dict(zip(header, values))
    try:
        if not all(f.keeps(rec[f.column]) for f in cfg.filters):
            return None, []
    except ValueError as exc:
        return None, [f"{where}: {exc}"]
    return rec, []


def _row_values(rec: dict[str, str], cfg, cols: _Columns, n_data: int, where: str):
    """(prompt, seed, guidance, problems) of one row that passed the filters."""
    bad: list[str] = []
    prompt = rec[cfg.prompt_column].strip()
    if not prompt:
        bad.append(f"{where}: empty prompt in column '{cfg.prompt_column}'")
    seed = cfg.default_seed + (n_data - 1 if cfg.default_seed_policy == "plus_row_index" else 0)
    if cols.seed is not None:
        try:
            seed = parse_seed(rec[cols.seed])
        except ValueError as exc:
            bad.append(f"{where}: seed {rec[cols.seed]!r} in column '{cols.seed}' {exc}")
    guidance = None
    if cols.guidance is not None:
        try:
            guidance = parse_guidance(rec[cols.guidance])
        except ValueError as exc:
            bad.append(f"{where}: guidance {rec[cols.guidance]!r} in column '{cols.guidance}' {exc}")
    return prompt, seed, guidance, bad


def _raise_problems(found: _Found, cfg, src: str) -> None:
    """Every problem of the file in one error (the first MAX_REPORTED listed), or no usable row at all."""
    problems = found.problems
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        fixable = cfg.on_bad_row == "error" and any("cannot be parsed as CSV" not in p for p in problems)
        hint = "\n  (on_bad_row: skip, or t2vu eval --skip-bad-rows, leaves such rows out, each reported)" if fixable else ""
        raise PromptFileError(
            f"{src}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:\n  " + "\n  ".join(shown) + more + hint
        )
    if not found.rows:
        why = f" ({found.filtered} filtered out, {len(found.skipped)} skipped)" if found.filtered or found.skipped else ""
        raise PromptFileError(f"{src}: no data rows after the header{why}")


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
