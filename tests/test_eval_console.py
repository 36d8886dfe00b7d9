"""What `t2vu eval` shows a person: the shipped toy config runs as documented (it names its prompt files), the
end is a short table (headline metrics base -> erased, the flagged rows, where the report is), `--json` prints
one JSON object instead, and the progress bar draws on a terminal but never into a log or a pipe."""

from __future__ import annotations

import io
import json
from pathlib import Path

from pipelines.cli.commands.eval import console_summary
from pipelines.cli.entry import main

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "configs" / "eval" / "toy.yaml"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_summary_table_leads_with_collateral_and_counts_flags():
    s = {"target_rate_base": 1.0, "target_rate_erased": 0.0, "target_rate_erased_se": 0.0,
         "unasked_concept_rate_base": 0.0, "unasked_concept_rate_erased": 0.125, "unasked_concept_rows": 8,
         "unasked_concept_videos_base": 0, "unasked_concept_videos_erased": 1, "preserve_nontarget_acc_base": 1.0,
         "preserve_nontarget_acc_erased": 0.875, "target_target_pixels_base": 41.5, "psnr_preserve": 24.1534,
         "target_content_kept_base": 1.0, "target_content_kept_erased": 0.75, "target_content_kept": 0.75,
         "rows_total": 32, "degenerate_rows": 2, "rows_truncated": 3, "rows_skipped": 1, "rows_resumed": 30,
         "eraser": "/e", "report": "/o/report.md", "results_csv": "/o/results.csv", "wall_seconds": 12.4}
    lines = console_summary(s).strip().splitlines()
    table = [ln.split()[0] for ln in lines[1:6]]
    assert lines[0] == "== eval summary"  # each metric once (target_content_kept is also a bare key)
    assert table == ["unasked_concept_rate", "target_rate", "preserve_nontarget_acc", "target_content_kept",
                     "psnr_preserve"]
    assert "base 0.125" not in lines[1] and lines[1].split()[-1] == "0.125" and "->  erased" in lines[1]
    assert "24.15" in lines[5] and "target_target_pixels" not in console_summary(s)  # headline only, 4 digits
    flagged = next(ln for ln in lines if ln.split()[0] == "flagged")
    assert "degenerate 2 of 32 rows" in flagged and "truncated prompts 3 of 32" in flagged
    assert "concept where not asked for 0 -> 1 of 8 videos" in flagged and "bad rows skipped 1" in flagged
    assert any(ln.split()[:2] == ["report", "/o/report.md"] for ln in lines)
    assert "30 from an earlier run" in console_summary(s) and "wall time    12 s" in console_summary(s)


def test_toy_eval_runs_as_documented_human_summary_and_json(tmp_path, capsys, monkeypatch):
    import pipelines.runtime.console as console

    doc = (ROOT / "docs" / "toy-world.md").read_text()
    assert "t2vu eval --config configs/eval/toy.yaml --output" in doc  # the command this test runs
    term = Terminal()
    monkeypatch.setattr(console, "progress_stream", lambda: term)
    assert main(["eval", "--config", str(TOY), "--output", str(tmp_path / "a"), "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "== eval summary" in out and "target_rate" in out and str(tmp_path / "a" / "report.md") in out
    assert not out.lstrip().startswith("{")  # a table, not JSON
    assert "eval rows" in term.getvalue()  # the bar, drawn on the (fake) terminal
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["rows_target"] == 1 and s["rows_preserve"] == 1 and s["prompts_path"].endswith("toy_red.csv")

    monkeypatch.undo()  # stderr is pytest's capture now: not a terminal, so no bar
    assert main(["eval", "--config", str(TOY), "--output", str(tmp_path / "b"), "--limit", "1", "--json"]) == 0
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["rows_total"] == 2
    assert "eval rows" not in cap.err and "%|" not in cap.err
