"""`t2vu run`'s report: report.md (+ report.html) in the run folder and the summary printed at the end.

Both lead with what decides: the concept where it was not asked for (eval.report_md), a flagged eraser energy
(eval.checks), then the headline metrics base -> erased; `t2vu eval` prints its summary with the same helpers
(`base_erased_pairs`, `fmt`).
"""

from __future__ import annotations

from pathlib import Path

from eval.metrics import is_finite_number
from eval.report_md import is_headline
from pipelines.runtime.console import display, terminal
from unlearn.fsutil import atomic_write_text


def base_erased_pairs(ev: dict) -> list[tuple[str, object, object]]:
    """(stem, base, erased) of every `<stem>_base` metric (erased None when the summary has no erased side)."""
    rows = []
    for k, v in ev.items():
        if k.endswith("_base") and is_finite_number(v):
            stem = k[: -len("_base")]
            rows.append((stem, v, ev.get(stem + "_erased")))
    return rows


def _lead_lines(ev: dict, explain: bool = True) -> list[str]:
    """What the summary and report.md say first: the concept where it was not asked for (eval.report_md),
    and a flagged eraser energy (eval.checks)."""
    from eval.report_md import unasked_line

    lines = [x for x in (unasked_line(ev, explain),) if x]
    if ev.get("eraser_energy_ok") is False and ev.get("eraser_energy_warning"):
        lines.append(ev["eraser_energy_warning"])
    return lines


def write_pipeline_report(out: Path, summary: dict, ev: dict, result) -> None:
    from eval.report_html import write_html
    from eval.report_md import headline_lines

    lines = [f"# t2vu run — {out.name}", ""]
    for x in _lead_lines(ev):
        lines += [f"**{x[0].upper() + x[1:] if x.startswith('concept') else x}**", ""]
    lines += [
             f"Best trial **{summary['best_trial']}** of {len(result.trials)} "
             f"(search report: [search/report.md](search/report.md)); eraser `{summary['best_eraser']}`; "
             "its videos next to the base model's, per prompt: [eval/report.html](eval/report.html).", ""]
    lines += headline_lines(ev)  # the few numbers that decide (eval.report_md); every metric below
    lines += ["## Best hyperparameters", "", "| parameter | value |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in summary["best_params"].items()]
    lines += ["", "## Final evaluation: base vs erased (same prompts, same seeds)", "",
              "| metric | base | erased |", "|---|---|---|"]
    lines += [f"| {k} | {fmt(b)} | {fmt(e)} |"
              for k, b, e in sorted(base_erased_pairs(ev), key=lambda r: not r[0].startswith("unasked_concept"))]
    paired = {k: v for k, v in ev.items() if is_finite_number(v) and not k.endswith(("_base", "_erased")) and not k.startswith(("rows", "wall"))}
    if paired:
        lines += ["", "| paired metric | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in paired.items()]
    lines += attack_lines(summary)
    grid = sorted((out / "eval").glob("grid*.gif"))
    if grid:
        lines += ["", f"![base vs erased](eval/{grid[0].name})"]
    ml = summary["mlflow"]
    if ml.get("tracking_uri"):
        lines += ["", "## MLflow", "", f"- tracking URI: `{ml['tracking_uri']}`",
                  f"- parent run: `{ml['parent_run_id']}` (one child per trial, plus `final-eval` `{ml['final_eval_run_id']}`)",
                  f"- open: `{mlflow_ui_command(ml['tracking_uri'])}`"]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    write_html(out / "report.md")  # report.html next to it (eval.report_html)


def attack_rows(attack: dict) -> list[tuple[str, float, float, float]]:
    """(column, raw ASR, its SE, ASR above the floor) of each attacked column of a `run.attack` result."""
    end = "_asr_above_floor"
    return [(k[len("attack_"):-len(end)], attack[k[:-len(end)] + "_asr"], attack[k[:-len(end)] + "_asr_se"], v)
            for k, v in attack.items() if k.endswith(end)]


def attack_lines(summary: dict) -> list[str]:
    """report.md's `run.attack` section: each column's ASR next to the floors it is read against."""
    a = summary.get("attack")
    if not a:
        return []
    lines = ["", "## The best eraser under attack (`run.attack`)", "",
             f"{int(a['attack_rows'])} attacked rows ([attack/](attack/)); floor: the eraser on the benign prompts "
             f"alone flags {fmt(a['attack_floor'])} (the base model {fmt(a['attack_floor_base'])}); a row counts above "
             "the floor when it is flagged under attack and not on its benign prompt.", "",
             "| attack | ASR ± SE (raw) | ASR above floor |", "|---|---|---|"]
    lines += [f"| {c} | {fmt(r)} ± {fmt(se)} | {fmt(above)} |" for c, r, se, above in attack_rows(a)]
    if a.get("attack_degenerate_ok") is False:
        lines += ["", f"**{fmt(a['attack_degenerate_fraction'])} of the attacked videos are degenerate (black, flat or "
                  "NaN): their rows read as not flagged, so these ASRs may be too low.**"]
    if a.get("attack_truncated"):
        lines += ["", f"**{int(a['attack_truncated'])} attacked prompts are longer than the text encoder takes: the words "
                  "past its limit changed nothing (attack/ marks them).**"]
    return lines


def fmt(v) -> str:
    return f"{v:.4g}" if is_finite_number(v) else "—"


def mlflow_ui_command(uri: str) -> str:
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def mlflow_ui_url(exp_id, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table in the search's saved view (pipelines.tracking.mlflow_ui; checked with
    benchmarks/mlflow_ui_screenshot.sh)."""
    from pipelines.tracking.mlflow_ui import runs_view_url

    return runs_view_url(exp_id, base)


def print_summary(summary: dict, quiet: bool = False, out=None, earlier: bool = False) -> None:
    """The end of `t2vu run`; earlier: the run had finished before this command (its wall time is not this one's)."""
    if quiet:
        return
    w = (out or terminal()).write
    ev = summary.get("final_eval", {})
    w("\n== summary\n")
    for line in _lead_lines(ev, explain=False):  # first: the concept where it was not asked for (collateral an accuracy hides)
        w(f"   {line}\n")
    w(f"   best trial   {summary['best_trial']}  " + " ".join(f"{k}={display(v)}" for k, v in summary["best_params"].items()) + "\n")
    for stem, b, e in base_erased_pairs(ev):
        if is_headline(stem) and not stem.startswith("unasked_concept"):
            se = ev.get(f"{stem}_erased_se")
            w(f"   {stem:<26} base {fmt(b):>8}  ->  erased {fmt(e):>8}" + (f" ± {se:.2g}" if is_finite_number(se) else "") + "\n")
    paired_stems = {stem for stem, _, _ in base_erased_pairs(ev)}
    for k, v in ev.items():
        if is_finite_number(v) and is_headline(k) and not k.endswith(("_base", "_erased")) and k not in paired_stems:
            w(f"   {k:<26} {fmt(v)}\n")
    for col, raw, _, above in attack_rows(summary.get("attack") or {}):
        w(f"   {'attack ' + col:<26} ASR {fmt(raw):>8}  (above the floor {fmt(above)})\n")
    lines = [f"report       {Path(summary['output']) / 'report.md'}", f"search       {summary['search_report']}",
             f"videos       {summary['eval_dir']}"]
    uri = summary.get("mlflow", {}).get("tracking_uri")
    if uri:
        lines += [f"mlflow       {uri}", f"open it:     {mlflow_ui_command(uri)}"]
        exp = summary.get("mlflow", {}).get("experiment_id")
        if exp is not None and uri.startswith("sqlite:"):
            lines.append(f"then:        {mlflow_ui_url(exp)}  (the trials, best first: searched parameters and objectives as columns)")
    lines.append(f"finished earlier (wall time {summary['wall_s']:.0f} s)" if earlier else f"wall time    {summary['wall_s']:.0f} s")
    w("".join(f"   {line}\n" for line in lines))
