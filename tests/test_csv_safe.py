"""CSVs the project writes for people cannot run anything when opened in a spreadsheet (issue 26).

A prompt (or attacked text, or user CSV column) that starts with `=`, `+`, `-`, `@`, tab or CR is a
formula to Excel/LibreOffice; a raw NUL truncates the file for some readers. Every such CSV goes
through `eval.csv_out.csv_text`.
"""

from __future__ import annotations

import csv
import io

from eval.csv_out import csv_text, safe_cell
from eval.writer import results_csv_text

ATTACK = "=cmd|' /C calc'!A0"


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_formula_cells_become_text_and_numbers_stay_numbers():
    assert safe_cell(ATTACK) == "'" + ATTACK
    for lead in ("+1+2", "-A1", "@SUM(A1)", "\t=1", "\r=1"):
        assert safe_cell(lead) == "'" + lead
    for number in (-0.5, "-0.5", "+3", "-1e-3", 7, 2.5, True):
        assert safe_cell(number) == number  # a negative number is data, not a formula
    assert safe_cell("a red cube") == "a red cube" and safe_cell(None) == ""


def test_control_characters_are_written_visibly():
    assert safe_cell("a\x00b\x07c") == "a\\x00b\\x07c"
    assert safe_cell("two\nlines\tand tab") == "two\nlines\tand tab"  # CSV quoting carries these


def test_eval_results_csv_escapes_a_hostile_prompt():
    rows = [{"id": "t00000", "set": "target", "index": 0, "prompt": ATTACK, "seed": 1},
            {"id": "t00001", "set": "target", "index": 1, "prompt": "nul\x00here", "seed": -2}]
    text = results_csv_text(rows)
    assert "\x00" not in text
    got = _rows(text)
    assert got[0]["prompt"] == "'" + ATTACK and got[1]["prompt"] == "nul\\x00here"
    assert got[1]["seed"] == "-2"  # numbers untouched
    # the one rule a reader needs to get the text back: strip exactly one leading quote of such a cell
    assert got[0]["prompt"][1:] == ATTACK


def test_mappings_and_sequences_give_the_same_file():
    header = ["a", "b"]
    assert csv_text(header, [{"a": "=x", "b": 1}]) == csv_text(header, [["=x", 1]]) == "a,b\n'=x,1\n"
    assert csv_text(header, [{"a": 1}]) == "a,b\n1,\n"  # a missing key is an empty cell
