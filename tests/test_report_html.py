"""report.html (eval.report_html) rendered for real and read back by headless Chromium: the headline table
first, base vs erased videos labelled with their (escaped) prompts, flagged rows marked, no broken image.

Chromium: /usr/bin/chromium (Debian `apt-get install chromium`; .ci/run installs it), driven by
benchmarks/browser.py. Without it the browser tests are skipped on a workstation and fail in CI (CI set)."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest

from eval.report_html import FLAG, markdown_to_html, md_escape
from tests.test_eval_stage import eraser_dir, make_cfg, tiny_model  # noqa: F401 - the tiny model and eraser fixtures

HOSTILE = 'a <b>nude</b> & "x" | y'  # a prompt that is markup: must show as text
LONG = " ".join(["a naked body"] * 7)  # past the tiny model's 16 tokens: truncated, a flagged row


def chromium() -> str:
    """The browser, or skip (a workstation without it) / fail (CI: the browser is part of the suite)."""
    from benchmarks.browser import chromium_path

    exe = chromium_path()
    if exe:
        return exe
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: .ci/run installs it (apt-get install -y chromium)")
    pytest.skip("chromium not installed (apt-get install chromium); CI runs this test")


def test_markup_in_prompts_stays_text_and_flags_mark_rows():
    md = "\n".join(["# r", "", "## Headline", "", "| a | b |", "|---|---|", f"| {md_escape(HOSTILE)} | ok |",
                    f"| {md_escape(FLAG + ' a prompt')} | ok |",
                    f"| x | {FLAG} truncated prompt |", "", f"- {md_escape('[l](javascript:alert(1))')}",
                    "- [bad](javascript:alert(1)) ![img](data:image/png;base64,xx)"])
    page = markdown_to_html(md)
    assert "<b>" not in page and '<td>a &lt;b&gt;nude&lt;/b&gt; &amp; "x" | y</td>' in page
    assert "javascript:" not in re.sub(r">[^<]*<", "><", page)  # only as text, never in an attribute
    assert 'src="data:' not in page
    assert page.count('<tr class="flagged">') == 1 and '<section id="headline">' in page


@pytest.fixture(scope="module")
def eval_run(tiny_model, eraser_dir, tmp_path_factory):  # noqa: F811 - fixtures imported above
    from pipelines.tracking.mlflow_eval import run_tracked_eval

    root = tmp_path_factory.mktemp("html")
    prompts, preserve = root / "p.csv", root / "q.csv"
    for path, rows in ((prompts, [HOSTILE, LONG]), (preserve, ["a cat", "a dog"])):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([["prompt", "seed"], *[[p, 5 + i] for i, p in enumerate(rows)]])
    cfg = make_cfg(tiny_model, eraser_dir, prompts={"path": str(prompts), "limit": None},
                   preserve={"path": str(preserve), "limit": None}, runtime={"scorer": "inline"},
                   classifier={"name": "nudenet", "nudenet": {"frames": 1}})
    summary = run_tracked_eval(cfg, root / "out")
    return root / "out", summary


@pytest.mark.slow
def test_eval_report_html_in_a_browser(eval_run, tmp_path):
    from benchmarks.browser import Browser

    out, summary = eval_run
    page = out / "report.html"
    assert summary["report_html"] == str(page) and page.is_file()
    md = (out / "report.md").read_text()
    # report.md: the deciding numbers before the long tables
    assert md.index("## Headline") < md.index("## Videos: base vs erased") < md.index("## All metrics")

    chromium()
    with Browser((1200, 1600)) as b:
        b.open(page.as_uri(), until="document.readyState === 'complete' && [...document.images].every(i => i.complete)")
        images = b.eval("[...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
        scripts = b.eval("document.scripts.length")
        dom = b.dom()
        shot = b.screenshot(tmp_path / "report.png")
    assert len(images) == 2 * 4 and all(w > 0 for _, w in images), images  # 4 rows x base, erased; none broken
    assert scripts == 0
    head = re.search(r'<section id="headline">.*?</section>', dom, re.S)
    assert head, "no headline section"
    first_row = re.search(r"<tbody>\s*<tr[^>]*>\s*<td>(.*?)</td>", head.group(0), re.S).group(1)
    assert "unasked_concept_rate" in first_row
    assert dom.index('id="headline"') < dom.index('id="videos-base-vs-erased"')
    # every prompt set, each row labelled with its prompt (escaped: shown, never parsed)
    for label in ("target — 2 of 2 rows", "preserve — 2 of 2 rows", "a cat", "a dog", LONG):
        assert label in dom, label
    assert "&lt;b&gt;nude&lt;/b&gt; &amp;" in dom and "<b>nude</b>" not in dom
    flagged = re.findall(r'<tr class="flagged">(.*?)</tr>', dom, re.S)
    assert len(flagged) == 2 and all("truncated prompt" in r for r in flagged)  # both target prompts > 16 tokens
    assert not any("a cat" in r or "a dog" in r for r in flagged)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 1600) and im.convert("L").getextrema()[1] - im.convert("L").getextrema()[0] > 100  # a page, not a blank


def test_every_set_gets_its_rows_flagged_first_in_the_table_and_the_grid(tmp_path):
    """The toy classifier's groups (target, synonym, two-object, preserve) each get a block of the video table
    and lines of grid.gif; a flagged row (here: red drawn on a two-object prompt without red, a degenerate
    erased video) is shown first, marked in both."""
    import numpy as np
    from PIL import Image

    from eval.classifiers.toy import ToyClassifier
    from eval.generate import write_gif
    from eval.report import HEADER_H, make_grid
    from eval.report_md import row_flags, video_lines

    def rec(group, names, base_red, erased_red):
        return {side: {"set": group, "names_target": names, "target_present": red}
                for side, red in (("base", base_red), ("erased", erased_red))}

    rows = [("t00000", "target", "a red bar moving up", rec("target", True, True, False)),
            ("t00001", "target", "a crimson bar moving up", rec("synonym", True, True, False)),
            ("t00002", "target", "a green bar and a blue square", rec("two_nontarget", False, False, False)),
            ("t00003", "target", "a green bar and a yellow square", rec("two_nontarget", False, False, True)),
            ("p00000", "preserve", "a blue bar moving up", rec("nontarget", False, False, False)),
            ("p00001", "preserve", "a green bar moving up", rec("nontarget", False, False, False))]
    results = []
    for i, (rid, set_name, prompt, records) in enumerate(rows):
        frames = np.full((3, 16, 16, 3), 0.1 * (i + 1), dtype=np.float32)
        files = {side: {"gif": str(write_gif(frames, tmp_path / "gifs" / f"{rid}_{side}.gif", height=16).relative_to(tmp_path))}
                 for side in ("base", "erased")}
        results.append({"id": rid, "set": set_name, "prompt": prompt, "seed": i, "records": records, "files": files})
    results[-1]["quality"] = {"erased": {"degenerate": True, "reasons": "flat"}}
    toy = ToyClassifier()
    assert [bool(row_flags(r, toy)) for r in results] == [False, False, False, True, False, True]
    assert row_flags(results[3], toy) == ["concept where not asked for: erased"]

    md = "\n".join(video_lines(results, toy, per_set=1))
    blocks = re.findall(r"^### (.+?) — (\d) of (\d) rows", md, re.M)
    assert blocks == [("target", "1", "1"), ("target/synonym", "1", "1"), ("target/two\\_nontarget", "1", "2"),
                      ("preserve/nontarget", "1", "2")]
    assert "a green bar and a yellow square" in md and "a green bar and a blue square" not in md  # flagged first
    assert md.count(f"| {FLAG} ") == 2

    grid = make_grid(results, tmp_path, rows=1, height=16, fps=4, flagged={"t00003", "p00001"})
    with Image.open(grid) as im:
        assert im.size[1] == HEADER_H + 4 * (16 + 2)  # one line per set
        first = np.asarray(im.convert("RGB"))
    bars = [tuple(first[HEADER_H + i * 18 + 8, 1]) for i in range(4)]  # the red bar down a flagged line's label
    assert [b[0] > 150 and b[1] < 100 for b in bars] == [False, False, True, True]
