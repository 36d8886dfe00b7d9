"""The toy benchmark's outputs: the comparison table (table.md / table.csv), the final JSON line,
and the figures of a results file (`t2vu toy benchmark --results-file`, `pipelines.runtime.results_file`).

Split from `pipelines.toy.benchmark` (which runs the variants) so the runner stays readable; these are
pure functions of the metrics dicts that `benchmark.extract_metrics` / `collect_finished` produce.
"""

from __future__ import annotations

import math
from pathlib import Path

from unlearn.csvsafe import csv_text
from unlearn.fsutil import atomic_write_text

# What the final JSON line and the table report (key in our metrics dict).
HEADLINE = (
    "target_rate_base", "target_rate_erased", "synonym_rate_base", "synonym_rate_erased",
    "nontarget_acc_base", "nontarget_acc_erased", "shape_acc_base", "shape_acc_erased",
    "motion_acc_base", "motion_acc_erased", "target_content_kept", "second_object_kept",
    "two_target_rate_base", "two_target_rate_erased", "two_object_both_present_base",
    "two_object_both_present_erased", "nontarget_unchanged", "psnr_nontarget",
)
TABLE_COLUMNS = (
    ("target_rate_erased", "red (target)"),
    ("synonym_rate_erased", "red (synonyms)"),
    ("two_target_rate_erased", "red (2-obj)"),
    ("nontarget_acc_erased", "non-target colour"),
    ("shape_acc_erased", "non-target shape"),
    ("motion_acc_erased", "non-target motion"),
    ("target_content_kept", "target content kept"),
    ("second_object_kept", "2nd object kept"),
    ("two_object_both_present_erased", "2-obj no red: both"),
    ("psnr_nontarget", "PSNR non-target (dB)"),
)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def write_table(out: Path, results: list[dict]) -> str:
    """table.md + table.csv: per eval size a base-model row, then the variants of that size."""
    if not results:
        return ""
    cols = ["variant", "description", "n", "steps"] + [k for k, _ in TABLE_COLUMNS] + ["train_s", "eval_s"]
    head = ["variant", "n/set", "steps"] + [h for _, h in TABLE_COLUMNS] + ["train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    csv_rows = []
    for size in sorted({r["n"] for r in results}):
        group = [r for r in results if r["n"] == size]
        base = group[0]
        base_vals = [base.get(k.replace("_erased", "_base")) if k.endswith("_erased") else None
                     for k, _ in TABLE_COLUMNS]
        csv_rows.append(["base", "base model (no eraser)", size, 0] + base_vals + [None, None])
        lines.append("| " + " | ".join(["**base model**", str(size), "-"] + [_fmt(v) for v in base_vals]
                                       + ["-", "-"]) + " |")
        for r in group:
            csv_rows.append([r.get(c) for c in cols])
            cells = [f"{r['variant']} ({r['description']})", str(r["n"]), str(r["steps"])]
            cells += [_fmt(r.get(k)) for k, _ in TABLE_COLUMNS]
            cells += [_fmt(r.get("train_s")), _fmt(r.get("eval_s"))]
            lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(out / "table.csv", csv_text(cols, csv_rows))
    md = "\n".join(lines) + "\n"
    atomic_write_text(out / "table.md", md)
    return md


# The figures of a results file (`--results-file`): every metric of `extract_metrics`, no timings.
FIGURE_KEYS = (*HEADLINE, "target_content_acc_base", "target_content_acc_erased", "synonym_content_kept",
               "two_target_other_present_base", "two_target_other_present_erased", "ssim_nontarget")


def results_figures(payload: dict) -> dict:
    """What `run_benchmark` measured, for `pipelines.runtime.results_file`: the default recipe's
    metrics, targets and final training losses, and one row per other variant (timings: `results_timings`)."""
    def row(r: dict) -> dict:
        return {"variant": r["variant"], "n_per_set": r["n"], "steps": r["steps"]} | {k: r.get(k) for k in FIGURE_KEYS}

    default = payload["default"]
    figures: dict = {"default": None, "variants": []}
    if default is not None:
        met = default.get("targets_met") or {}
        figures["default"] = row(default) | {
            "targets_met": met, "targets_met_count": sum(bool(v) for v in met.values()), "targets_total": len(met),
            "final_losses": default.get("final_losses")}
    figures["variants"] = [row(r) | {"description": r.get("description")}
                           for r in payload["variants"] if r is not default]
    return figures


def results_timings(payload: dict) -> dict:
    return {"wall_s": payload.get("wall_s"),
            "variants": [{"variant": r["variant"], "n_per_set": r["n"], "train_s": r.get("train_s"),
                          "eval_s": r.get("eval_s")} for r in payload["variants"]]}


def headline(default: dict) -> dict:
    """The final JSON line: the headline metrics of the default recipe."""
    return {k: default.get(k) for k in HEADLINE} | {"n_per_set": default.get("n"),
                                                   "targets_met": default.get("targets_met")}
