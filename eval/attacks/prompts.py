"""The attack benchmark's prompt files, read and checked before any model loads (one-line errors naming the
file, line or column and the fix)."""

from __future__ import annotations

from pathlib import Path

from eval.attacks.base import AttackRow
from unlearn.config import ConfigError
from unlearn.csvsafe import unescape_cell


def _frame(path: Path, field: str, columns: list[str]):
    path = Path(path)
    import pandas as pd

    if not path.is_file():
        raise ConfigError(f"{field}: file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several parser error types
        raise ConfigError(f"{field}: {path} cannot be parsed as CSV: {' '.join(str(exc).split())}") from None
    # cells the project escaped when it wrote a CSV read as the original text (unlearn.csvsafe)
    df = df.map(unescape_cell)
    df.columns = [unescape_cell(c) for c in df.columns]
    for c in columns:
        if c not in df.columns:
            raise ConfigError(f"{field}: {path} has no column {c!r} (columns: {list(df.columns)}); rename it or set "
                              f"the config's column name")
    if df.empty:
        raise ConfigError(f"{field}: {path} has no rows")
    for i, rec in enumerate(df[columns].to_dict("records"), start=2):
        for c in columns:
            if not str(rec[c]).strip():
                raise ConfigError(f"{field}: {path}, line {i}: empty {c!r}; fill it or drop the row")
    return df


def _seed(raw: str, path: Path, line: int, field: str) -> int:
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{field}: {path}, line {line}: seed {raw!r} is not an integer") from None


def read_attack_rows(pc, path: Path) -> list[AttackRow]:
    """pc: AttackPromptsConfig. Row ids r0000.. in file order; seeds from the seed column, else the line index."""
    cols = [pc.prompt_column, pc.normal_column] + [c for c in (pc.paraphrase_column, pc.seed_column) if c]
    df = _frame(path, "prompts.path", cols)
    recs = df.to_dict("records")[: pc.limit]
    return [AttackRow(f"r{i:04d}", r[pc.prompt_column].strip(), r[pc.normal_column].strip(),
                      r[pc.paraphrase_column].strip() if pc.paraphrase_column else None,
                      _seed(r[pc.seed_column], path, i + 2, "prompts.path") if pc.seed_column else i)
            for i, r in enumerate(recs)]


def read_preserve_rows(pc, path: Path | None) -> list[AttackRow]:
    """pc: PreservePromptsConfig; the rows are their own benign prompt (no attack is applied to them)."""
    if path is None:
        return []
    cols = [pc.prompt_column] + ([pc.seed_column] if pc.seed_column else [])
    recs = _frame(path, "preserve.path", cols).to_dict("records")[: pc.limit]
    return [AttackRow(f"p{i:04d}", r[pc.prompt_column].strip(), r[pc.prompt_column].strip(), None,
                      _seed(r[pc.seed_column], path, i + 2, "preserve.path") if pc.seed_column else i)
            for i, r in enumerate(recs)]


def read_pairs(path: Path, field: str = "ringabell.pairs") -> list[tuple[str, str]]:
    """(concept prompt, normal prompt) pairs of a Ring-A-Bell style CSV (`prompt`, `normal prompt`)."""
    df = _frame(path, field, ["prompt", "normal prompt"])
    return [(r["prompt"].strip(), r["normal prompt"].strip()) for r in df.to_dict("records")]
