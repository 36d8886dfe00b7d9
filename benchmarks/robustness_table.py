"""The `robustness_toy` view of `benchmarks/render_results.py`: a `t2vu attack --results-file` record drawn as
benchmarks/robustness.md's tables (ASR raw and above the floor per method x attack; preservation with the base
model's next to each method's)."""

from __future__ import annotations

from eval.temporal import sparkline

PRESERVATION_LABELS = {  # summary key -> what a reader is told
    "nontarget_acc": "other colours, one-object scenes (colour accuracy)",
    "two_object_both_present": "other colours, two-object scenes (both colours drawn)",
    "shape_acc": "shapes, one-object scenes",
    "motion_acc": "motion, one-object scenes",
    "preserve_flag_rate": "non-target scenes turned red",
    "anchor_flag_rate": "benign anchors turned red (the floor)",
    "anchors_nontarget_acc": "benign anchors, one-object: colour kept",
    "anchors_two_object_both_present": "benign anchors, two-object: both colours kept",
}


def _f(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def robustness_table(rec: dict) -> str:
    fig = rec["figures"]
    methods = [m for m in fig["asr"]]
    # when in the video (eval.temporal; results files written since it exists): the last third's rate, the
    # late-only rate (re-emergence) and the per-frame curve next to the video-level ASR
    temporal = fig.get("temporal") or {}
    out = []
    for m in methods:
        over = temporal.get(m, {})
        lines = [f"**{m}** (floor: {_f(fig['floor'].get(m))} of the rows are red on the benign prompt alone)", "",
                 "| attack | ASR ± SE (raw) | ASR above floor | n |" + (" last third / late only | per frame |" if over else ""),
                 "|---|---|---|---|" + ("---|---|" if over else "")]
        for a in fig["attacks"]:
            if a not in fig["asr"][m]:
                continue
            t = over.get(a)
            late = (f" {_f(t['late_frame_rate'], 2)} / {_f(t['late_only_rate'], 2)} | `{sparkline(t['frame_rate'])}` |"
                    if t else " | |" if over else "")
            lines.append(f"| {a} | {_f(fig['asr'][m][a])} ± {_f(fig['asr_se'][m][a])} | "
                         f"{_f(fig['asr_above_floor'][m][a])} | {fig['n'][m][a]} |" + late)
        out.append("\n".join(lines))
    ref = fig.get("reference")
    base = fig.get("preservation_base") or {}
    head = "| preservation (same run) | " + " | ".join(methods) + f" | base model ({ref}) |"
    lines = [head, "|" + "---|" * (len(methods) + 2)]
    for key, label in PRESERVATION_LABELS.items():
        if key in base or any(key in fig["preservation"].get(m, {}) for m in methods):
            lines.append(f"| {label} | " + " | ".join(_f(fig["preservation"].get(m, {}).get(key)) for m in methods)
                         + f" | {_f(base.get(key))} |")
    out.append("\n".join(lines))
    if fig.get("attack_strength"):
        out.append("Below evaluation strength: " + "; ".join(f"{k}: {v}" for k, v in fig["attack_strength"].items()))
    return "\n\n".join(out)
