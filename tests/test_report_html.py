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
