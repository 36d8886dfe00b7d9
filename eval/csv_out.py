"""The one way the project writes a CSV meant for people: eval `results.csv`, attack cells' `results.csv`,
the search's `results.csv`, the toy benchmark's `table.csv`.

Prompts, attacked texts and user CSV columns end up in these cells, and a spreadsheet runs a cell that
starts with `=`, `+`, `-`, `@` (or a tab / carriage return before one) as a formula: a prompt such as
`=HYPERLINK(...)` or `=cmd|' /C calc'!A0` would execute when the file is opened. So every text cell that
starts with one of those characters and is not a number gets a leading `'` (OWASP's CSV-injection rule:
the spreadsheet shows the text, the quote hidden; a reader of the raw file strips exactly one leading `'`
from such cells to get the original back). Numbers — negative ones included — stay numbers. C0 control
characters other than tab, newline and carriage return (e.g. a NUL, which some readers treat as the end
of the file) are written as the visible escape `\\xNN`. Nothing the project reads back comes from these
files: eval resumes from its per-row JSON files, searches from their trial folders.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any, Iterable, Mapping, Sequence

FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def safe_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text or a number, never evaluates."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return value
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    if s.startswith(FORMULA_LEAD) and not _is_number(s.strip()):
        return "'" + s
    return s


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> str:
    """CSV text of `rows` (sequences in header order, or mappings by column name; a missing key is an
    empty cell), every cell through `safe_cell`."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([safe_cell(h) for h in header])
    for row in rows:
        cells = [row.get(h, "") for h in header] if isinstance(row, Mapping) else row
        w.writerow([safe_cell(c) for c in cells])
    return buf.getvalue()
