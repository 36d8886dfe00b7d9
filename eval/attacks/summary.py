"""The attack benchmark's figures from its finished cells (`summarise`): per method x attack the raw ASR, the
ASR above the no-perturbation floor, and each method's preservation, with the base model's next to it.

Floor (issue 25): the defended model on each row's benign prompt alone (the method's `anchors` cell). A row that
is already the concept there is not an attack's doing, so `asr_above_floor` = rows flagged under the attack AND
not at the floor, over all rows; `floor` = the floor's flag rate. Both are reported next to every raw ASR.

Preservation comes from the same run: the `preserve` cell (non-target one- and two-object scenes, clean) and the
`anchors` cell itself (the benign anchors: how many the method turns into the concept, and, for the toy
classifier, whether their own colours survive), each with the base model's figure (`reference`: the method
named none, or the base-only reference method the planner adds).
"""

from __future__ import annotations

import json
import math

from unlearn.config import ConfigError
from unlearn.csvsafe import csv_text
from unlearn.fsutil import atomic_write_json, atomic_write_text

PRESERVE, ANCHORS = "preserve", "anchors"


def binomial(flags: list[bool]) -> dict[str, float]:
    """A rate and its binomial standard error."""
    n = len(flags)
    p = sum(flags) / n if n else float("nan")
    return {"n": n, "flagged": int(sum(flags)), "asr": p, "asr_se": math.sqrt(p * (1 - p) / n) if n else float("nan")}


def above_floor(flags: dict[str, bool], floor: dict[str, bool]) -> dict[str, float]:
    """Rows flagged under the attack and NOT at the floor, over all rows (rows missing a floor count as 0)."""
    hits = [bool(f) and not floor.get(i, False) for i, f in flags.items()]
    stats = binomial(hits)
    return {"asr_above_floor": stats["asr"], "asr_above_floor_se": stats["asr_se"], "flagged_above_floor": stats["flagged"]}


def summarise(plan, classifier, observer) -> dict:
    """Read every cell's rows, write its results.csv and summary.json, return the benchmark summary."""
    from eval.temporal import temporal_stats

    asr, se, n, above, floors, preservation, temporal = {}, {}, {}, {}, {}, {}, {}
    degenerate: dict[str, int] = {}
    truncated: dict[str, int] = {}
    results_of = {}
    for cell in plan.cells:
        results_of[id(cell)] = [json.loads((cell.dir / "rows" / f"{r.id}.json").read_text()) for r in cell.rows]
    floor_flags = {c.method: {r["id"]: bool(r["flagged"]) for r in results_of[id(c)]}
                   for c in plan.cells if c.name == ANCHORS}
    for cell in plan.cells:
        results = results_of[id(cell)]
        stats = binomial([bool(r["flagged"]) for r in results])
        # degenerate videos count as "not flagged" in the ASR (no concept drawn): reported so a method that
        # destroys its output never passes for a robust one
        stats["degenerate"] = sum(bool(r.get("degenerate")) for r in results)
        if stats["degenerate"]:
            degenerate[f"{cell.method}/{cell.name}"] = stats["degenerate"]
        # attacked text prompts the pipeline cut (their last words changed nothing): counted, never silent
        stats["truncated"] = sum(bool(r.get("truncated")) for r in results)
        if stats["truncated"]:
            truncated[f"{cell.method}/{cell.name}"] = stats["truncated"]
        if cell.attack is None:
            summ = classifier.summarize([r["record"] for r in results])
            wanted = plan.cfg.detector.preservation
            if cell.name == PRESERVE:
                missing = [k for k in wanted if k not in summ]
                if missing:
                    raise ConfigError(f"detector.preservation: {missing} are not in the {plan.eval_cfg.classifier.name} "
                                      f"classifier's summary of the preserve rows (it has {sorted(summ)})")
                stats = {"n": stats["n"], "preserve_flag_rate": stats["asr"], "degenerate": stats["degenerate"],
                         "truncated": stats["truncated"], **{k: summ[k] for k in wanted}}
                preservation.setdefault(cell.method, {}).update(stats)
            else:  # the anchors: the floor of every attack, and the benign anchors' own preservation
                stats = {"n": stats["n"], "anchor_flag_rate": stats["asr"], "anchor_flag_se": stats["asr_se"],
                         "degenerate": stats["degenerate"], **{k: summ[k] for k in wanted if k in summ}}
                floors[cell.method] = stats["anchor_flag_rate"]
                preservation.setdefault(cell.method, {}).update(
                    {"anchor_flag_rate": stats["anchor_flag_rate"],
                     **{f"anchors_{k}": summ[k] for k in wanted if k in summ}})
        else:
            flags = {r["id"]: bool(r["flagged"]) for r in results}
            stats.update(above_floor(flags, floor_flags.get(cell.method, {})))
            stats["floor"] = floors_rate(floor_flags.get(cell.method, {}), flags)
            asr.setdefault(cell.method, {})[cell.name] = stats["asr"]
            se.setdefault(cell.method, {})[cell.name] = stats["asr_se"]
            n.setdefault(cell.method, {})[cell.name] = stats["n"]
            above.setdefault(cell.method, {})[cell.name] = stats["asr_above_floor"]
        # when in the video the concept is drawn (eval.temporal): the per-frame curve, late-frame rates
        over_time = temporal_stats([r["record"] for r in results], plan.flag)
        if over_time:
            temporal.setdefault(cell.method, {})[cell.name] = over_time
            stats.update({k: over_time[k] for k in ("late_frame_rate", "late_only_rate", "frame_rate", "frame_score")})
        atomic_write_text(cell.dir / "results.csv", results_csv(results))
        atomic_write_json(cell.dir / "summary.json", {"method": cell.method, "attack": cell.name, **stats})
        if observer is not None:
            observer.cell(cell.method, cell.name, stats, cell.dir)
    ref = plan.reference
    return {"asr": asr, "asr_se": se, "n": n, "asr_above_floor": above, "floor": floors,
            "preservation": preservation, "temporal": temporal, "reference": ref, "preservation_base": preservation.get(ref, {}),
            "flag": plan.flag, "degenerate_videos": degenerate, "truncated_prompts": truncated,
            "attack_strength": plan.strength,
            "methods": {k: p.as_dict() for k, p in plan.methods.items()},
            "attacks": plan.cfg.attack_names(), "output": str(plan.out)}


def floors_rate(floor: dict[str, bool], flags: dict[str, bool]) -> float:
    """The floor's flag rate over the attacked rows (the same rows for every attack of a method)."""
    vals = [floor[i] for i in flags if i in floor]
    return sum(vals) / len(vals) if vals else float("nan")


def results_csv(results: list[dict]) -> str:
    flat = []
    for r in results:
        row = {k: r[k] for k in ("id", "seed", "prompt", "benign", "attacked_text", "attacked_embeds", "flagged")}
        if "restart_flags" in r:
            row["restart_flags"] = " ".join(str(int(f)) for f in r["restart_flags"])
        row.update({f"attack.{k}": v for k, v in (r.get("attack_info") or {}).items()})
        row.update({f"record.{k}": v for k, v in (r.get("record") or {}).items()})
        row.update({k: r[k] for k in ("prompt_tokens", "truncated") if k in r})
        row["gen_seconds"] = r.get("gen_seconds")
        flat.append(row)
    cols: list[str] = []
    for f in flat:
        cols += [k for k in f if k not in cols]
    return csv_text(cols, flat)  # escaped like every results CSV (unlearn.csvsafe)
