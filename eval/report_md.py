"""report.md of an eval run: what was evaluated, the numbers, and what the numbers are worth.

Why a file of its own: summary.json has every entry but says nothing about which of them a
reader may trust; this page puts the checks (degenerate videos, truncated prompts, duplicated
or skipped rows, how seeds were chosen, the eraser's energy) next to the headline rates, one line each.
It leads with the concept appearing where it was not asked for (`unasked_concept_rate`, eval.metrics):
collateral an accuracy hides (a non-red prompt drawn right, with a red object added, is still "right").

Order: the lead lines, the headline table (the few numbers that decide), base vs erased videos per prompt
set labelled with their prompts (rows to look at marked with eval.report_html.FLAG), then the run, its
checks and every metric (the long tables last). report.html is this text rendered (eval.report_html).
"""

from __future__ import annotations

from typing import Any

from eval.report_html import FLAG, md_escape

# The headline: the few numbers that decide (erasure, preservation), after the concept where it was not
# asked for. The same list picks what `t2vu eval` and `t2vu run` print (pipelines.run.pipeline).
HEADLINE = ("nudity_rate", "target_rate", "synonym_rate", "nontarget_acc", "shape_acc", "motion_acc",
            "target_content_kept", "second_object_kept", "psnr", "ssim", "clip")


def is_headline(key: str) -> bool:
    """A metric stem (`preserve_` prefixes allowed) of the headline: one of HEADLINE or a variant of it."""
    k = key[len("preserve_"):] if key.startswith("preserve_") else key
    return any(k == h or k.startswith(h + "_") for h in HEADLINE) and "introduced" not in k and not k.endswith("_se")


def _headline_order(key: str) -> tuple:
    k = key[len("preserve_"):] if key.startswith("preserve_") else key
    pos = next((i for i, h in enumerate(HEADLINE) if k == h or k.startswith(h + "_")), len(HEADLINE))
    return (not key.startswith("unasked_concept"), pos, key.startswith("preserve_"), key)

# Rows of the metrics table: metrics with a base and an erased value (rates, scores), the
# per-class counts excluded (they are in summary.json).
_SKIP_PREFIXES = ("class_frames_", "class_videos_", "preserve_class_")


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _rate(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def unasked_line(summary: dict[str, Any], explain: bool = True) -> str | None:
    """The first number of every report and console summary: the concept where it was not asked for
    (base -> erased, with counts), marked when the erased model shows it more often than the base."""
    from eval.metrics import UNASKED

    b, e = summary.get(f"{UNASKED}_base"), summary.get(f"{UNASKED}_erased")
    if b is None and e is None:
        return None
    n = summary.get("unasked_concept_rows")
    counts = (lambda side: f" ({summary.get(f'unasked_concept_videos_{side}')} of {n})"
              if summary.get(f"unasked_concept_videos_{side}") is not None and n else "")
    line = f"concept where it was not asked for: base {_rate(b)}{counts('base')}"
    if e is not None:
        line += f" -> erased {_rate(e)}{counts('erased')}"
        se = summary.get(f"{UNASKED}_erased_se")
        if isinstance(b, (int, float)) and e > b:
            line += " — MORE than the base model" + (f" (± {se:.2g})" if isinstance(se, (int, float)) else "")
    return line + (" (videos of prompts that do not ask for the concept in which the classifier finds it)" if explain else "")


def metric_rows(summary: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """(metric, base, erased, valid) for every metric with a `_base` or `_erased` value."""
    names: list[str] = []
    for k in summary:
        for side in ("_base", "_erased"):
            if k.endswith(side) and not k.startswith(_SKIP_PREFIXES) and not k.startswith("degenerate_"):
                name = k[: -len(side)]
                if name not in names and not name.startswith(("metrics_", "degenerate")):
                    names.append(name)
    out = []
    for n in names:
        b, e = summary.get(f"{n}_base"), summary.get(f"{n}_erased")
        if isinstance(b, dict) or isinstance(e, dict):
            continue
        prefix = "preserve_" if n.startswith("preserve_") else ""
        sides = [side for side, v in (("base", b), ("erased", e)) if v is not None]
        # valid when no degenerate video was left out of either side shown
        flags = [summary.get(f"{n}_{side}_valid", summary.get(f"{prefix}metrics_{side}_valid")) for side in sides]
        flags = [f for f in flags if f is not None]
        out.append((n, b, e, all(flags) if flags else None))
    return sorted(out, key=lambda r: not r[0].startswith("unasked_concept"))  # stable: the collateral first


def check_lines(summary: dict[str, Any]) -> list[str]:
    """The checks, one line each (also what the console shows)."""
    from eval.checks import degenerate_line, energy_line

    lines = [degenerate_line(summary)]
    energy = energy_line(summary)
    if energy:
        lines.append(energy)
    n, limit = summary.get("rows_truncated"), summary.get("text_token_limit")
    if n is not None:
        lines.append(f"truncated prompts: {n} of {summary.get('rows_total')} longer than the text encoder's {limit} "
                     f"tokens" + (f" (by up to {summary.get('truncated_tokens_max')} tokens; results.csv `truncated`)"
                                  if n else ""))
    sets = summary.get("prompt_sets") or {}
    if sets:
        dup, dropped = summary.get("rows_duplicate", 0), summary.get("rows_deduped", 0)
        lines.append(f"duplicated prompt+seed rows: {dup}" + (f" (dedupe dropped {dropped})" if dropped else
                                                             " (counted twice; dedupe: true drops them)" if dup else ""))
        lines.append(f"skipped bad rows: {summary.get('rows_skipped', 0)}; filtered out: {summary.get('rows_filtered_out', 0)}")
        lines.append("seeds: " + "; ".join(f"{name} {info['seeds']}" for name, info in sets.items()))
    return lines


def _method_line(method: dict[str, Any]) -> str:
    """The run's method when it is not an eraser (eval.methods): the `erased` column is its videos."""
    if method.get("name") in (None, "none", "eraser"):
        return "- eraser: none (base model only)"
    opts = ", ".join(f"{k} {v!r}" for k, v in (method.get("options") or {}).items())
    return f"- method: {method['name']} ({opts}); the `erased` column is this method's videos"


def headline_rows(summary: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """(metric, base, erased, valid) of the headline table: the concept where it was not asked for, then the
    HEADLINE metrics with a base and an erased value, then single-valued ones (paired: PSNR, content kept)."""
    from eval.metrics import UNASKED

    rows = [r for r in metric_rows(summary) if r[0] == UNASKED or (is_headline(r[0]) and not r[0].startswith("unasked"))]
    stems = {r[0] for r in rows}
    for k, v in summary.items():
        if (isinstance(v, (int, float)) and not isinstance(v, bool) and is_headline(k) and k not in stems
                and not k.endswith(("_base", "_erased", "_valid"))):
            rows.append((k, None, v, summary.get(f"{k}_valid")))
    return sorted(rows, key=lambda r: _headline_order(r[0]))


def _with_se(v: Any, se: Any) -> str:
    return _fmt(v) + (f" ± {se:.2g}" if isinstance(se, (int, float)) and isinstance(v, (int, float)) else "")


def headline_lines(summary: dict[str, Any]) -> list[str]:
    """## Headline: the headline_rows table (a `valid` column where the summary has the flags)."""
    rows = headline_rows(summary)
    if not rows:
        return []
    flags = any(valid is not None for *_, valid in rows)
    out = ["## Headline", "", "| metric | base | erased |" + (" valid |" if flags else ""),
           "|---|---|---|" + ("---|" if flags else "")]
    for name, b, e, valid in rows:
        single = b is None and f"{name}_erased" not in summary
        se_b, se_e = (None, summary.get(f"{name}_se")) if single else (summary.get(f"{name}_base_se"), summary.get(f"{name}_erased_se"))
        out.append(f"| `{name}` | {_with_se(b, se_b) if b is not None else '—'} | {_with_se(e, se_e)} |"
                   + (f" {_fmt(valid) if valid is not None else ''} |" if flags else ""))
    return out + ["", "`± x`: standard error over the prompt rows; every metric: the longer tables below.", ""]


def temporal_lines(summary: dict[str, Any]) -> list[str]:
    """## Over time: per prompt set and side, the per-frame concept curve and the late-frame rates next to the
    video rate (eval.temporal: the concept re-emerging in later frames)."""
    from eval.temporal import stats_line

    curves = summary.get("frame_curves") or {}
    lines = [f"- {set_name}, {side}: {stats_line(stats)}" for set_name, sides in curves.items()
             for side, stats in sides.items()]
    if not lines:
        return []
    return ["## Over time", "", "The concept per frame index (fraction of videos whose frame shows it); `last third`: "
            "videos whose last third of frames shows it, `late only`: and whose first third does not "
            "(re-emergence); `video`: the classifier's video flag.", "", *lines, ""]


PROMPT_SHOWN = 300  # characters of a prompt in the video table (all of it: results.csv)


def row_flags(r: dict[str, Any], classifier) -> list[str]:
    """Why a row deserves a look: a degenerate video, a truncated prompt, the concept where it was not asked for."""
    from eval.metrics import concept_asked
    from eval.quality import is_degenerate

    flags = [f"degenerate {side}" for side in ("base", "erased") if is_degenerate(r, side)]
    if r.get("truncated") in (True, "True", "true"):
        flags.append("truncated prompt")
    field = getattr(classifier, "concept_field", None)
    if field and not concept_asked(r, classifier):
        sides = [side for side in ("base", "erased") if ((r.get("records") or {}).get(side) or {}).get(field)
                 and not is_degenerate(r, side)]
        if sides:
            flags.append("concept where not asked for: " + " and ".join(sides))
    return flags


def row_set(r: dict[str, Any]) -> str:
    """The row's prompt set, with the classifier's finer group where it has one (toy: target/synonym,
    target/two_target, preserve/nontarget): what the video table and the grid show one block each of."""
    sub = ((r.get("records") or {}).get("base") or {}).get("set")
    return r["set"] if not isinstance(sub, str) or sub == r["set"] else f"{r['set']}/{sub}"


def pick_rows(results: list[dict[str, Any]], per_set: int, flagged: set[str] = frozenset()) -> dict[str, list[dict]]:
    """Up to `per_set` rows of every set (in order of appearance), flagged rows first, kept in row order."""
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(row_set(r), []).append(r)
    out = {}
    for name, rs in by.items():
        first = [r for r in rs if r["id"] in flagged][:per_set]
        rest = [r for r in rs if r["id"] not in flagged][: per_set - len(first)]
        keep = {id(r) for r in first + rest}
        out[name] = [r for r in rs if id(r) in keep]
    return out


def _media(r: dict[str, Any], side: str) -> str:
    files = (r.get("files") or {}).get(side) or {}
    rel = files.get("gif") or files.get("video")
    return f"![{side}]({rel})" if rel else "—"


def video_lines(results: list[dict[str, Any]], classifier, per_set: int) -> list[str]:
    """## Videos: base vs erased, one table per prompt set, each row labelled with its prompt, flagged rows marked."""
    flags = {r["id"]: row_flags(r, classifier) for r in results}
    picked = pick_rows(results, per_set, {k for k, v in flags.items() if v})
    n_flagged = sum(1 for v in flags.values() if v)
    out = ["## Videos: base vs erased", "",
           f"Same prompt and seed in each row. {FLAG} marks rows to look at (degenerate video, truncated prompt, "
           f"the concept where it was not asked for): {n_flagged} of {len(results)} rows, shown first in each set. "
           "Every row: `results.csv`; all sets animated side by side: `grid.gif`.", ""]
    for name, rs in picked.items():
        total = sum(1 for r in results if row_set(r) == name)
        out += [f"### {md_escape(name)} — {len(rs)} of {total} rows", "",
                "| row | prompt | base | erased | flags |", "|---|---|---|---|---|"]
        for r in rs:
            prompt = str(r.get("prompt", ""))
            prompt = prompt if len(prompt) <= PROMPT_SHOWN else prompt[:PROMPT_SHOWN] + "…"
            f = flags[r["id"]]
            out.append(f"| {md_escape(r['id'])} (seed {r.get('seed')}) | {md_escape(prompt)} | {_media(r, 'base')} | "
                       f"{_media(r, 'erased')} | {(FLAG + ' ' + '; '.join(f)) if f else ''} |")
        out.append("")
    return out


def render(summary: dict[str, Any], videos: list[str] | None = None) -> str:
    """report.md: the lead lines and the headline table, then `videos` (video_lines), then the run, its
    checks and every metric (the long tables last)."""
    lines = ["# Evaluation report", ""]
    unasked = unasked_line(summary)
    lead = [unasked[0].upper() + unasked[1:] if unasked else None,
            summary.get("eraser_energy_warning") if summary.get("eraser_energy_ok") is False else None]
    for x in filter(None, lead):
        lines += [f"**{x}**", ""]
    lines += headline_lines(summary)
    lines += temporal_lines(summary)
    lines += videos or []
    eraser = summary.get("eraser")
    lines += [
        "## Run", "",
        f"- model: `{summary.get('model')}`",
        f"- eraser: `{eraser}`" + (f" (sha256 `{summary['eraser_sha256']}`)" if summary.get("eraser_sha256") else "")
        if eraser else _method_line(summary.get("method") or {}),
        f"- classifier: {summary.get('classifier')}"
        + (f", threshold {summary['classifier_threshold']}" if summary.get("classifier_threshold") is not None else ""),
        f"- rows: {summary.get('rows_total')} ({summary.get('rows_target')} target, {summary.get('rows_preserve')} preserve)",
    ]
    for s in ("prompts", "preserve"):
        if summary.get(f"{s}_path"):
            lines.append(f"- {s}: `{summary[f'{s}_path']}` (sha256 `{summary.get(f'{s}_sha256')}`)")
    lines += ["", "## Checks", ""] + [f"- {line}" for line in check_lines(summary)]
    lines += ["", "## All metrics", "", "| metric | base | erased | valid |", "|---|---|---|---|"]
    for name, b, e, valid in metric_rows(summary):
        lines.append(f"| `{name}` | {_fmt(b)} | {_fmt(e)} | {_fmt(valid) if valid is not None else ''} |")
    skipped = [f"{info['path']}: {r}" for info in (summary.get("prompt_sets") or {}).values() for r in info["skipped"]]
    if skipped:
        lines += ["", "## Skipped rows", ""] + [f"- {r}" for r in skipped]
    paired = [(k, v) for k, v in summary.items() if k.startswith(("psnr_", "ssim_")) and isinstance(v, float)]
    if paired:
        lines += ["", "Paired base vs erased (same seeds; degenerate pairs left out): "
                  + ", ".join(f"`{k}` {_fmt(v)}" for k, v in paired)]
    notes = summary.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "Every entry: `summary.json`; every row: `results.csv`.", ""]
    return "\n".join(lines)
