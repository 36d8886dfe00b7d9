"""Every CSV the project writes escapes formula-leading and control-character cells (`unlearn.csvsafe`),
keeps numbers numeric, and reads back exactly: the property, each writer, and a tiny eval end to end
(escaped results.csv, resume, the results fed back as prompts)."""

from __future__ import annotations

import csv
import io
import json
import random

from unlearn.csvsafe import FORMULA_LEAD, csv_text, escape_cell, is_plain_number, read_rows, unescape_cell

EVIL = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1", "'=already", "a\x00b", "\x1b[31mred",
        "'Twas night", "=", "-"]


def _dangerous(cell: str) -> bool:
    """What a spreadsheet would run or a CSV tool choke on."""
    return (cell.startswith(FORMULA_LEAD) and not is_plain_number(cell)) or any(
        c in cell for c in "\x00\x01\x07\x08\x0b\x0c\r\x1b\x7f")


def _cells(text: str) -> list[str]:
    return [c for row in csv.reader(io.StringIO(text, newline="")) for c in row]


def test_escape_is_reversible_and_leaves_nothing_a_spreadsheet_runs():
    rng = random.Random(0)
    alphabet = ["=", "+", "-", "@", "\t", "\r", "\n", "'", "\\", "x", "0", "7", "f", "a", " ", ".", "e", "|", "é",
                "\x00", "\x1b", "\x7f"]
    for _ in range(20000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        e = escape_cell(s)
        assert unescape_cell(e) == s, (s, e)
        assert not _dangerous(e), (s, e)
    for s in EVIL:
        assert escape_cell(s).startswith("'") and unescape_cell(escape_cell(s)) == s
    for s in ("back\\slash=", "a = b", "plain"):  # nothing to escape: written as it is
        assert escape_cell(s) == s
    for s in ("'Twas night", "'a\\b", "plain", "'"):  # a cell the writer did not make is read as it stands
        assert unescape_cell(s) == s


def test_numbers_stay_numbers():
    for v in (-0.5, 0.25, -3, 7, True, None, float("inf"), float("-inf")):
        assert escape_cell(v) == v
    for s in ("-0.5", "+3", "1e-4", "-2.5E+3", ".5", "12"):
        assert escape_cell(s) == s
    text = csv_text(["x", "y"], [[-0.5, "-0.5"], [-1.23456789, "-1"]])
    assert text == "x,y\n-0.5,-0.5\n-1.23456789,-1\n"
    assert [float(r["x"]) for r in read_rows(text)] == [-0.5, -1.23456789]


def test_mappings_and_sequences_give_the_same_file():
    header = ["a", "b"]
    assert csv_text(header, [{"a": "=x", "b": 1}]) == csv_text(header, [["=x", 1]]) == "a,b\n'=x,1\n"
    assert csv_text(header, [{"a": 1, "extra": 2}]) == csv_text(header, [[1, None]]) == "a,b\n1,\n"
    # a newline or a tab inside a cell is CSV's own business (quoted), not escaped
    assert csv_text(["a"], [["two\nlines\tand tab"]]) == 'a\n"two\nlines\tand tab"\n'


def test_header_and_dict_rows_escaped_and_read_back():
    text = csv_text(["=h", "ok"], [{"=h": "=cmd", "ok": "a\x00b"}, {"=h": -0.5}])
    raw = list(csv.reader(io.StringIO(text)))
    assert raw == [["'=h", "ok"], ["'=cmd", "'a\\x00b"], ["-0.5", ""]] and "\x00" not in text
    assert read_rows(text) == [{"=h": "=cmd", "ok": "a\x00b"}, {"=h": "-0.5", "ok": ""}]


def test_eval_results_csv_writer():
    from eval.writer import results_csv_text

    results = [{"id": f"t{i:05d}", "set": "target", "index": i, "prompt": p, "seed": 1, "psnr": -0.5,
                "records": {"base": {"label": "@x", "score": 0.5}}} for i, p in enumerate(EVIL)]
    text = results_csv_text(results)
    assert not [c for c in _cells(text) if _dangerous(c)]
    back = read_rows(text)
    assert [r["prompt"] for r in back] == EVIL and back[0]["label_base"] == "@x" and back[0]["psnr"] == "-0.5"


def test_attack_cell_csv_writer():
    from eval.attacks.runner import _csv

    rows = [{"id": "a0", "seed": 1, "prompt": "=evil()", "benign": "+x", "attacked_text": "a\x00b",
             "attacked_embeds": False, "flagged": True, "attack_info": {"tokens": "-danger"}, "record": {"s": -0.5}}]
    text = _csv(rows)
    assert not [c for c in _cells(text) if _dangerous(c)]
    back = read_rows(text)[0]
    assert (back["prompt"], back["benign"], back["attacked_text"], back["attack.tokens"], back["record.s"]) == (
        "=evil()", "+x", "a\x00b", "-danger", "-0.5")


def test_search_results_csv_writer(tmp_path):
    from types import SimpleNamespace as NS

    from pipelines.search.report import write_results_csv

    cfg = NS(search=NS(space={"=loss.eta": {}}, metric_names=lambda: ["m"],
                       objective=NS(scalarize=NS(name="score", tie_break=[]))))
    trial = NS(trial_id="=t1", status="TERMINATED", params={"=loss.eta": "@p"}, metrics={"m": -0.5, "score": 1.0},
               steps_done=3, eraser="-e", mlflow_run_id=None)
    result = NS(pareto=[], baseline={"m": 0.1}, methods={}, trials=[trial], best=None)
    text = write_results_csv(tmp_path / "r.csv", result, cfg).read_text()
    assert not [c for c in _cells(text) if _dangerous(c)]
    row = read_rows(text)[-1]
    assert (row["trial_id"], row["param:=loss.eta"], row["m"], row["eraser"]) == ("=t1", "@p", "-0.5", "-e")


def test_toy_table_and_prompt_writers(tmp_path):
    from eval.config import PromptsConfig
    from eval.prompts import read_prompt_set
    from pipelines.toy.benchmark import write_table
    from toyworld import world

    rows = [{"prompt": p, "seed": i, "concept": "=c", "concept_type": "t"} for i, p in enumerate(EVIL)]
    world.write_csv(rows, tmp_path / "p.csv")
    text = (tmp_path / "p.csv").read_text()
    assert not [c for c in _cells(text) if _dangerous(c)]
    assert [r["prompt"] for r in read_rows(text)] == EVIL
    # the prompt reader eval uses gives the original prompts back (trimmed of surrounding whitespace, as always)
    assert [r.prompt for r in read_prompt_set(tmp_path / "p.csv", PromptsConfig()).rows] == [p.strip() for p in EVIL]

    write_table(tmp_path, [{"variant": "=v", "description": "@d", "n": 2, "steps": 1, "train_s": -0.5, "eval_s": 1.0}])
    table = (tmp_path / "table.csv").read_text()
    assert not [c for c in _cells(table) if _dangerous(c)] and "'=v" in table and "-0.5" in table


def test_tiny_eval_writes_escaped_results_and_resumes(tmp_path, capsys):
    """A prompt that is a spreadsheet formula and one with a NUL: results.csv holds the escaped form, a rerun
    resumes every row from its row file, and the results read back (or given as --prompts) are the originals."""
    import yaml

    from eval.config import PromptsConfig
    from eval.prompts import read_prompt_set
    from pipelines.cli.entry import main
    from unlearn.models.registry import resolve_model_path

    prompts = ["=cmd|' /C calc'!A0 naked", "a naked\x00 body", "-a naked person"]
    (tmp_path / "p.csv").write_text(csv_text(["prompt", "seed"], [[p, i] for i, p in enumerate(prompts)]))
    cfg = {
        "model": {"path": str(resolve_model_path("builtin:tiny")), "dtype": "float32"},
        "prompts": {"path": str(tmp_path / "p.csv")},
        "preserve": {"path": None},
        "generation": {"num_inference_steps": 2, "num_frames": 9, "height": 32, "width": 32, "scheduler": "ddim",
                       "vae_tiling": False, "vae_slicing": False},
        "classifier": {"name": "nudenet", "nudenet": {"frames": 1}},
        "checks": {"max_degenerate_fraction": 1.0},
        "output": {"grid_rows": 0, "save_videos": False, "save_gifs": False},
        "runtime": {"num_actors": 0, "scorer": "inline", "progress": False},
    }
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    argv = ["eval", "--config", str(tmp_path / "e.yaml"), "--output", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    first = json.loads((out / "summary.json").read_text())
    text = (out / "results.csv").read_text()
    assert "\x00" not in text and not [c for c in _cells(text) if _dangerous(c)]
    raw = {r["id"]: r["prompt"] for r in csv.DictReader(io.StringIO(text))}
    assert sorted(raw.values()) == sorted(["'=cmd|' /C calc'!A0 naked", "'a naked\\x00 body", "'-a naked person"])
    assert sorted(r["prompt"] for r in read_rows(text)) == sorted(prompts)

    assert main(argv) == 0, capsys.readouterr().err  # resume: every row from its row file
    second = json.loads((out / "summary.json").read_text())
    assert second["rows_resumed"] == len(prompts) and first["rows_resumed"] == 0
    assert (out / "results.csv").read_text() == text
    # the results file given as prompts reads as the original prompts
    assert [r.prompt for r in read_prompt_set(out / "results.csv", PromptsConfig()).rows] == [
        json.loads((out / "rows" / f"{i}.json").read_text())["prompt"] for i in raw]
