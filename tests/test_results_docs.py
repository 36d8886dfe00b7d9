"""The docs' benchmark numbers come from committed results files and agree with them.

`benchmarks/results/<name>.json` is written by the command that measured it (format:
`pipelines/runtime/results_file.py`); `benchmarks/render_results.py` draws the marked blocks
(`<!-- results:NAME -->` ... `<!-- /results -->`) of README.md, docs/*.md and benchmarks/*.md from
them. Fast (no model runs): the re-measuring test is tests/test_toy_benchmark_remeasure.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from benchmarks import render_results as rr
from pipelines.runtime.results_file import RESULTS_DIR, read_results, write_results

ROOT = Path(__file__).resolve().parent.parent


def test_every_marked_table_agrees_with_its_results_file():
    problems = rr.check()
    assert not problems, "\n".join(problems)


def test_every_results_file_says_what_measured_it():
    files = sorted(RESULTS_DIR.glob("*.json"))
    assert {"toy_benchmark", "toy_benchmark_small"} <= {f.stem for f in files}
    for f in files:
        rec = read_results(f)
        assert rec["command"].strip(), f
        assert re.fullmatch(r"[0-9a-f]{40}|unknown", rec["git_sha"]), f
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["date"]), f
        assert {"cpu_count", "torch", "platform"} <= set(rec["machine"]), f
        assert rec["figures"], f


def test_the_toy_tables_are_rendered_where_a_reader_looks():
    blocks = {p.relative_to(ROOT).as_posix(): rr.BLOCK.findall(p.read_text()) for p in rr.doc_files()}
    names = {f: {name for name, _ in found} for f, found in blocks.items()}
    assert "toy_headline" in names["README.md"]
    assert {"toy_benchmark", "toy_benchmark_small"} <= names["docs/benchmarks.md"]
    assert "toy_benchmark" in names["benchmarks/toy_results.md"]
    # every rendered toy figure names its source and how it was measured
    body = dict(blocks["README.md"])["toy_headline"]
    assert "benchmarks/results/toy_benchmark.json" in body and "t2vu toy benchmark" in body


def test_the_toy_headline_reports_the_files_figures():
    rec = read_results(RESULTS_DIR / "toy_benchmark.json")
    d = rec["figures"]["default"]
    body = rr.render_block("toy_headline", ROOT / "README.md")
    row = next(line for line in body.splitlines() if line.startswith("| second object kept"))
    assert f"{d['second_object_kept']:.3f}" in row
    assert row.rstrip(" |").endswith("yes" if d["targets_met"]["second_object_kept"] else "**no**")
    assert f"{d['targets_met_count']} of {d['targets_total']} targets met" in body


def _doc_with_block(tmp_path: Path, results: Path, name: str = "toy_headline") -> Path:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\nintro\n\n<!-- results:{name} -->\nold\n<!-- /results -->\n\nafter\n")
    new, problems = rr.render_text(doc.read_text(), doc, results)
    assert not problems
    doc.write_text(new)
    return doc


def test_check_fails_on_a_stale_table_and_on_a_missing_results_file(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(RESULTS_DIR, results)
    doc = _doc_with_block(tmp_path, results)
    assert rr.check([doc], results) == []
    text = doc.read_text()
    assert text.startswith("# Title\n\nintro\n\n<!-- results:toy_headline -->\n") and text.endswith("\nafter\n")

    # the measurement moved, the doc did not
    rec = json.loads((results / "toy_benchmark.json").read_text())
    rec["figures"]["default"]["second_object_kept"] = 0.5
    (results / "toy_benchmark.json").write_text(json.dumps(rec))
    problems = rr.check([doc], results)
    assert len(problems) == 1 and "differs from its results file" in problems[0] and "0.500" in problems[0]

    # a hand edit inside the block
    _doc_with_block(tmp_path, results)
    doc.write_text(doc.read_text().replace("0.500", "0.984"))
    assert rr.check([doc], results)

    (results / "toy_benchmark.json").unlink()
    problems = rr.check([doc], results)
    assert any("toy_benchmark.json is missing" in p for p in problems)


def test_unbalanced_markers_and_unknown_files_are_reported(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- results:toy_headline -->\nno end marker\n")
    assert any("unbalanced" in p for p in rr.check([doc]))
    doc.write_text("<!-- results:no_such_benchmark -->\n<!-- /results -->\n")
    assert any("no_such_benchmark.json is missing" in p for p in rr.check([doc]))


def test_any_results_file_renders_as_a_figure_table(tmp_path):
    results = tmp_path / "results"
    write_results(results / "some_bench.json", {"speedup": 1.5444, "peak_gb": {"a": 0.25, "b": None}, "ok": True},
                  argv=["python", "benchmarks/some_bench.py", "--rounds", "2"])
    doc = _doc_with_block(tmp_path, results, "some_bench")
    text = doc.read_text()
    for cell in ("| `speedup` | 1.544 |", "| `peak_gb.a` | 0.25 |", "| `peak_gb.b` | — |", "| `ok` | yes |",
                 "`python benchmarks/some_bench.py --rounds 2`", "some_bench.json](results/some_bench.json)"):
        assert cell in text, cell


def test_write_results_records_provenance_atomically_and_as_strict_json(tmp_path):
    path = tmp_path / "r" / "x.json"
    rec = write_results(path, {"a": float("nan"), "b": (1, 2)}, argv=["t2vu", "toy", "benchmark", "--output", "a b"],
                        settings={"n": 8}, timings={"wall_s": 1.0})
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left behind
    on_disk = json.loads(path.read_text())  # strict JSON: NaN became null
    assert on_disk == rec and rec["figures"] == {"a": None, "b": [1, 2]}
    assert rec["command"] == "t2vu toy benchmark --output 'a b'" and rec["name"] == "x"
    assert isinstance(rec["git_dirty"], bool) and rec["machine"]["cpu_count"]
