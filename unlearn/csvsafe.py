"""Every CSV the project writes goes through here, so opening one in a spreadsheet cannot run anything.

A spreadsheet treats a cell that starts with `=`, `+`, `-` or `@` (and, in some, a leading tab or
carriage return) as a formula: a prompt like `=cmd|' /C calc'!A0` in results.csv would be one. Control
characters (a NUL, an escape sequence) corrupt or confuse the tools that read the file.

The rule (`escape_cell`), applied to every cell on write:
- numbers stay numbers: ints, floats and bools are written as they are (`-0.5` stays -0.5), and so is
  a string that is a plain decimal number (`-0.5`, `+3`, `1e-4`);
- any other string that starts with `=` `+` `-` `@` TAB CR or `'`, or that holds a control character,
  is written as `'` + the string with each backslash doubled and each control character (all but TAB
  and LF, which are ordinary quoted CSV content; a CR too, which a `\\n`-terminated CSV would leave
  unquoted) written as `\\xNN`. The leading `'` is what spreadsheets show as text;
- every other string is written unchanged.

The escape is exactly reversible: `unescape_cell` turns a written cell back into the original
string (it strips the leading `'` only from a cell `escape_cell` could have written, so a cell it
did not write, e.g. `'Twas night` in a prompt file a person made, is read as it stands). The
project's readers of prompt CSVs (`eval.prompts`, `eval.attacks.prompts`) apply it, so a
results.csv fed back as `--prompts` gives the original prompts.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")
MARK = "'"
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# control characters escaped anywhere in a cell: all but TAB and LF, which are ordinary CSV content (LF
# is quoted by the writer; a leading TAB is caught by FORMULA_LEAD). CR is escaped too: with "\n" line
# ends the csv module would leave a cell holding a CR unquoted.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ESCAPED = re.compile(r"\\(\\|x[0-9a-f]{2})")


def is_plain_number(s: str) -> bool:
    return bool(_NUMBER.fullmatch(s))


def needs_escape(s: str) -> bool:
    if s.startswith(FORMULA_LEAD):
        return not is_plain_number(s)
    return s.startswith(MARK) or bool(_CONTROL.search(s))


def escape_cell(value: Any) -> Any:
    """The cell as written (see the module doc); non-strings (numbers, bools, None) unchanged."""
    if not isinstance(value, str) or not needs_escape(value):
        return value
    return MARK + _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value.replace("\\", "\\\\"))


def unescape_cell(value: Any) -> Any:
    """The original string of a cell `escape_cell` wrote; any other value unchanged."""
    if not isinstance(value, str) or not value.startswith(MARK):
        return value
    body = value[len(MARK):]
    if _ESCAPED.sub("", body).count("\\"):  # a backslash that is not `\\` or `\xNN`: not written here
        return value
    original = _ESCAPED.sub(lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1)[1:], 16)), body)
    return original if escape_cell(original) == value else value


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> str:
    """The CSV text of `rows` (sequences in header order, or mappings by header key: a missing key is an
    empty cell, extra keys are ignored), every cell, header included, through `escape_cell`."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([escape_cell(h) for h in header])
    for row in rows:
        values = [row.get(k, "") for k in header] if isinstance(row, Mapping) else row
        w.writerow([escape_cell(v) for v in values])
    return buf.getvalue()


def read_rows(text: str) -> list[dict[str, str]]:
    """The rows of a CSV the project wrote, as dicts of the original strings (`unescape_cell` on every
    cell and header)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [unescape_cell(h) for h in next(reader)]
    except StopIteration:
        return []
    return [dict(zip(header, (unescape_cell(c) for c in row))) for row in reader]
