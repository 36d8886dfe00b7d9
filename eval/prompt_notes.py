"""What reading a prompt CSV found, said in words: the notes of a run (console, summary.json, report.md).

Why a module of its own: the reader (eval.prompts) decides, this module explains; a user of a
public prompt set must see, without opening results.csv, which column gave the seeds (or that
seeds were derived), which column was dropped as an index, which rows were filtered out,
duplicated or skipped, and why.
"""

from __future__ import annotations

from typing import Any

MAX_LISTED = 10  # duplicated rows named in a note (every skipped row is named in summary.json)


def set_notes(src: str, cfg, info: dict[str, Any], duplicates: list[tuple[int, int]]) -> list[tuple[bool, str]]:
    """Notes about one prompt CSV as (is a warning, text): warnings are shown on the console as the
    run starts, every note goes to summary.json and report.md. duplicates: (data row, the earlier
    data row it repeats), 1-based."""
    from eval.prompt_config import SEED_COLUMNS

    notes: list[tuple[bool, str]] = []

    def add(text: str, warn: bool = True) -> None:
        notes.append((warn, text))

    if info["seed_column"]:
        add(f"{src}: seeds from column '{info['seed_column']}'", warn=False)
    elif cfg.default_seed_policy == "plus_row_index":
        looked = f"looked for {', '.join(SEED_COLUMNS)}" if cfg.seed_column == "auto" else "seed_column: null"
        add(f"{src}: no seed column ({looked}): data row i (0-based) gets seed default_seed + i = "
                     f"{cfg.default_seed} + i, one distinct seed per row (results.csv seed_source)")
    else:
        add(f"{src}: no seed column: every row gets seed {cfg.default_seed} (default_seed_policy: same)")
    if info["index_columns"]:
        cols = ", ".join(repr(c) for c in info["index_columns"])
        add(f"{src}: leading column {cols} is a pandas index, not data: dropped", warn=False)
    if info["guidance_column"]:
        add(f"{src}: guidance scale per row from column '{info['guidance_column']}' (an empty cell: "
                     "generation.guidance_scale); guidance_column: null uses generation.guidance_scale for all")
    if info["filters"]:
        add(f"{src}: filters ({'; '.join(info['filters'])}) dropped {info['filtered_out']} rows", warn=False)
    if duplicates:
        pairs = ", ".join(f"{r} = {first}" for r, first in duplicates[:MAX_LISTED])
        more = f" and {len(duplicates) - MAX_LISTED} more" if len(duplicates) > MAX_LISTED else ""
        if cfg.dedupe:
            add(f"{src}: dedupe dropped {len(duplicates)} rows repeating an earlier row's prompt and seed "
                         f"(data rows {pairs}{more})")
        else:
            add(f"{src}: {len(duplicates)} rows repeat an earlier row's prompt and seed (data rows "
                         f"{pairs}{more}): the same video counted twice; dedupe: true drops them")
    if info["skipped"]:
        add(f"{src}: skipped {len(info['skipped'])} bad rows: " + "; ".join(info["skipped"]))
    return notes
