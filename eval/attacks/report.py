"""The attack benchmark's report: `report.md` (ASR ± binomial SE per method x attack, each method's
preservation) and `asr.png` (ASR per attack, one bar group per method, SE error bars)."""

from __future__ import annotations

from pathlib import Path

from unlearn.fsutil import atomic_path, atomic_write_text


def table_markdown(summary: dict) -> str:
    """ASR per method x attack (raw ± SE, then above the method's floor), the floor, each preservation figure
    with the base model's next to it (`reference`)."""
    attacks = summary["attacks"]
    # counts of flagged videos have their own lines (write_report), not preservation columns
    pres_keys = sorted({k for row in summary["preservation"].values() for k in row
                        if k not in ("n", "degenerate", "truncated")})
    base = summary.get("preservation_base") or {}
    above, floors = summary.get("asr_above_floor") or {}, summary.get("floor") or {}
    head = ["method", *attacks, "floor (benign prompt alone)", *pres_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    methods = list(dict.fromkeys([*summary["asr"], *summary["preservation"]]))
    for m in methods:
        row = summary["asr"].get(m, {})
        cells = [m + (" (base reference)" if m == summary.get("reference") and m not in summary["asr"] else "")]
        for a in attacks:
            p, se, n = row.get(a), summary["asr_se"].get(m, {}).get(a), summary["n"].get(m, {}).get(a)
            ab = above.get(m, {}).get(a)
            cells.append("" if p is None else f"{p:.3f} ± {se:.3f} (n={n})" + ("" if ab is None else f"; {ab:.3f} above floor"))
        cells.append("" if floors.get(m) is None else f"{floors[m]:.3f}")
        pres = summary["preservation"].get(m, {})
        cells += ["" if k not in pres else f"{pres[k]:.3f}" + (f" (base {base[k]:.3f})" if k in base and m != summary.get("reference") else "")
                  for k in pres_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(summary: dict, out: Path) -> None:
    """report.md and asr.png into `out` (atomic writes)."""
    text = ["# Attack benchmark", "", f"Output: `{summary['output']}`; a video counts when the detector's "
            f"`{summary['flag']}` is true. ASR ± binomial standard error; preservation = the method's clean "
            "videos of the preserve prompts (same run; preserve_flag_rate = flagged there).", "",
            "Each ASR cell: raw, then above the floor (rows already the concept when the method generates the "
            "benign prompt alone are not counted as attack successes). Embedding attacks with restarts count a row "
            "when any restart succeeds. `anchor_*`: the benign prompts themselves (the floor's videos).", "",
            table_markdown(summary), ""]
    if summary.get("attack_strength"):
        text += ["**Below evaluation strength (these ASRs understate the attack):** " + "; ".join(
            f"{k}: {v}" for k, v in summary["attack_strength"].items()), ""]
    for key, what in (("degenerate_videos", "degenerate videos (black, flat or non-finite: never flagged, so they "
                                            "count as failed attacks; such a cell's ASR is not a robustness result)"),
                      ("truncated_prompts", "attacked text prompts longer than the text encoder's limit (the pipeline "
                                            "cut their last words; rows marked `truncated` in the cell's results.csv)")):
        if summary.get(key):
            text += [f"**Flagged — {what}:** " + ", ".join(f"{cell} {n}" for cell, n in summary[key].items()), ""]
    text += temporal_lines(summary)
    text += ["![ASR per attack](asr.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(text))
    _plot(summary, out / "asr.png")
    from eval.report_html import write_html

    write_html(out / "report.md")  # report.html next to it, after asr.png exists (eval.report_html)


def temporal_lines(summary: dict) -> list[str]:
    """## Over time: each cell's per-frame concept curve, its last-third rates and its video rate (eval.temporal)."""
    from eval.temporal import stats_line

    cells = summary.get("temporal") or {}
    lines = [f"- {m} x {cell}: {stats_line(stats)}" for m, row in cells.items() for cell, stats in row.items()]
    if not lines:
        return []
    return ["## Over time", "", "Per frame index: the fraction of the cell's videos (the shown restart) whose frame "
            "shows the concept; `last third`: videos whose last third shows it, `late only`: not in the first third "
            "(re-emergence); `video`: the flag the ASR counts.", "", *lines, ""]


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    attacks, methods = summary["attacks"], list(summary["asr"])
    x = np.arange(len(attacks))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(attacks), 3.6))
    for i, m in enumerate(methods):
        ys = [summary["asr"][m].get(a, np.nan) for a in attacks]
        es = [summary["asr_se"][m].get(a, np.nan) for a in attacks]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, ys, width, yerr=es, capsize=2, label=m)
    ax.set_xticks(x, attacks, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("attack success rate")
    ax.legend(fontsize=8, ncol=len(methods), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
