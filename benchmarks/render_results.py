"""Render the docs' benchmark tables from the results files (`benchmarks/results/<name>.json`).

    python benchmarks/render_results.py            # rewrite every marked block in place
    python benchmarks/render_results.py --check    # change nothing; exit 1 and show what differs

A marked block in README.md, docs/*.md or benchmarks/*.md:

    <!-- results:toy_headline -->
    (generated: everything between the markers is replaced)
    <!-- /results -->

The name after `results:` is a view below (`VIEWS`: the results file it reads and how it draws it)
or, for any other name, the results file of that name drawn as a plain figure/value table.
Each rendered block ends with the file's provenance (date, command, git sha, machine) and a link to
it. The results files are written by the commands that measured them (`t2vu toy benchmark
--results-file ...`; the format: `pipelines/runtime/results_file.py`). `tests/test_results_docs.py`
runs `--check`'s logic in CI: a table that disagrees with its file, or a block whose file is
missing, fails it.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/render_results.py` from anywhere
    sys.path.insert(0, str(ROOT))

from pipelines.runtime.results_file import RESULTS_DIR, read_results  # noqa: E402

BLOCK = re.compile(r"<!-- results:(?P<name>[A-Za-z0-9_.-]+) -->\n(?P<body>.*?)<!-- /results -->", re.S)
OPEN = re.compile(r"<!-- results:([A-Za-z0-9_.-]*) -->")
CLOSE = "<!-- /results -->"


def doc_files(root: Path = ROOT) -> list[Path]:
    """The Markdown files that may hold marked blocks."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md")),
                        *sorted((root / "benchmarks").glob("*.md"))] if p.exists()]


# ----------------------------------------------------------------------------- formatting
def _num(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(head: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def provenance(rec: dict, source: Path, doc: Path) -> str:
    """One line: when, by what, on which code and machine; a link to the file (relative to `doc`)."""
    m = rec.get("machine") or {}
    sha = str(rec.get("git_sha") or "unknown")
    code = f"git `{sha[:10]}`" + (" + uncommitted changes" if rec.get("git_dirty") else "")
    host = ", ".join(x for x in (f"{m['cpu_count']} CPUs" if m.get("cpu_count") else "",
                                 f"torch {m['torch']}" if m.get("torch") else "",
                                 f"{m['torch_threads']} torch thread{'s' * (m['torch_threads'] != 1)}"
                                 if m.get("torch_threads") else "",
                                 str(m.get("platform") or "")) if x)
    link = Path(os.path.relpath(source, doc.parent)).as_posix()
    date = str(rec.get("date", "?")).replace("T", " ").replace("Z", " UTC")
    return (f"Measured {date} by `{rec.get('command', '?')}` ({code}; {host}). "
            f"Source: [{_shown(source)}]({link}).")


def _shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()


# ----------------------------------------------------------------------------- toy views
def _toy():
    from pipelines.toy import benchmark

    return benchmark


TOY_TARGET_LABELS = {  # key of pipelines.toy.benchmark.TARGETS -> what a reader is told
    "target_rate_base": "base model draws red when asked",
    "target_rate_erased": "red on prompts naming red",
    "synonym_rate_erased": "red on synonyms never trained on (crimson, scarlet)",
    "nontarget_acc_erased": "colour accuracy, prompts without red",
    "shape_acc_erased": "shape accuracy, prompts without red",
    "target_content_kept": "target content kept (right shape and motion, relative to base)",
    "second_object_kept": "second object kept (other colour present, relative to base)",
}
TOY_EXTRA_ROWS = (  # reported, no target
    ("motion_acc", "motion accuracy, prompts without red"),
    ("two_target_rate", "red in two-object scenes"),
    ("two_object_both_present", "both objects drawn, two-object scenes without red"),
)


def _base_key(key: str) -> str | None:
    return key[: -len("_erased")] + "_base" if key.endswith("_erased") else None


def _target_rows(d: dict) -> list[list[str]]:
    targets = _toy().TARGETS
    met = d.get("targets_met") or {}
    rows = []
    for key, label in TOY_TARGET_LABELS.items():
        op, bar, rel = targets[key]
        sym = "≤" if op == "<=" else "≥"
        if key.endswith("_base"):
            base, erased, what = d.get(key), None, f"base {sym} {bar:g}"
        else:
            bk = _base_key(key)
            base, erased = (d.get(bk) if bk else None), d.get(key)
            what = f"{sym} {bar:g}"
            if rel and d.get(rel) is not None:
                what = f"{sym} {bar:g} × base ({bar * d[rel]:.3f})"
        ok = met.get(key)
        rows.append([label, _num(base), _num(erased), what, "—" if ok is None else ("yes" if ok else "**no**")])
    return rows


def _met_line(d: dict) -> str:
    met = d.get("targets_met") or {}
    missed = [TOY_TARGET_LABELS.get(k, k).split(" (")[0] for k, v in met.items() if not v]
    line = f"**{sum(bool(v) for v in met.values())} of {len(met)} targets met**"
    return line + (f" (missed: {'; '.join(missed)})." if missed else ".")


def toy_headline(rec: dict) -> str:
    """The short table: each target of the default recipe, base, erased, threshold, met."""
    d = rec["figures"]["default"]
    head = ["target", "base", "erased", "threshold", "met"]
    return (f"Toy world, erase \"red\" with the shipped recipe, {d['n_per_set']} videos per set: "
            f"{_met_line(d)}\n\n" + _table(head, _target_rows(d)))


def toy_benchmark(rec: dict) -> str:
    """The default recipe's full metric table (targets and the reported extras), then the variants."""
    d = rec["figures"]["default"]
    head = ["metric", "base", "erased", "threshold", "met"]
    rows = _target_rows(d)
    rows += [[label, _num(d.get(f"{k}_base")), _num(d.get(f"{k}_erased")), "", ""] for k, label in TOY_EXTRA_ROWS]
    psnr = d.get("psnr_nontarget")
    rows.append(["PSNR base vs erased, prompts without red", "", "—" if psnr is None else f"{psnr:.1f} dB", "", ""])
    s = rec.get("settings") or {}
    changed = "".join(f", `{k}={v}`" for k, v in (s.get("overrides") or {}).items())
    model = f" on `{s['model']}`" if s.get("model") not in (None, "builtin:toy") else ""
    rows_seed = f", eval rows of seed {s['rows_seed']} (fresh prompts and seeds)" if s.get("rows_seed") else ""
    out = (f"Default recipe (`{s.get('recipe', 'configs/toy/recipe.yaml')}`, {d['steps']} steps{changed}){model}, "
           f"{d['n_per_set']} videos per set{rows_seed}: {_met_line(d)}\n\n" + _table(head, rows))
    variants = rec["figures"].get("variants") or []
    if variants:
        from pipelines.toy.tables import TABLE_COLUMNS as cols
        vhead = ["variant", "n/set", "steps"] + [h for _, h in cols]
        vrows = [[f"{v['variant']} ({v.get('description', '')})", str(v["n_per_set"]), str(v["steps"])]
                 + [_num(v.get(k), 1 if k.startswith("psnr") else 3) for k, _ in cols] for v in variants]
        out += "\n\nOther variants:\n\n" + _table(vhead, vrows)
    return out


TOY_QUALITY_ROWS = (  # key of toyworld.quality's summary -> what a reader is told (bars: QUALITY_BARS)
    ("colour_acc", "colour accuracy, single objects"),
    ("shape_acc", "shape accuracy, single objects"),
    ("motion_acc", "motion accuracy, single objects"),
    ("two_object_both_present", "both named colours drawn, two-object scenes"),
    ("all_three_acc", "colour, shape and motion all right, single objects"),
    ("two_object_exact_colours", "exactly the named colours, two-object scenes"),
    ("two_object_binding", "each colour on its named shape, two-object scenes"),
)


def toy_quality(rec: dict) -> str:
    """`t2vu toy quality MODEL --results-file`: the toy model's base quality against the build's bars."""
    summ, s = rec["figures"]["summary"], rec.get("settings") or {}
    bars, gen = s.get("bars") or {}, s.get("generation") or {}
    rows = [[label, _num(summ.get(k)), f"≥ {bars[k]:g}" if k in bars else "",
             ("yes" if summ[k] >= bars[k] else "**no**") if k in bars and summ.get(k) is not None else ""]
            for k, label in TOY_QUALITY_ROWS]
    how = ", ".join(f"{k} {v}" for k, v in gen.items() if k in ("num_inference_steps", "guidance_scale", "num_frames",
                                                                  "height", "width"))
    return (f"`{s.get('model')}` through its pipeline ({how}), {summ.get('n_single')} single-object and "
            f"{summ.get('n_two_object')} two-object videos ({s.get('n')} prompt/seed pairs per set), scored by "
            f"the toy detector: **{'every bar met' if summ.get('meets_bars') else 'a bar missed'}**.\n\n"
            + _table(["figure", "measured", "bar", "met"], rows))


def memory_calibration(rec: dict) -> str:
    """`benchmarks/memory_plan_check.py --results-file`: the plan against the measured peak of one real step per size."""
    f = rec["figures"]
    wan = f.get("family") == "wan"
    head = ["size", "hidden", "blocks"] + (["ffn"] if wan else []) + ["frames×H×W", "rows", "checkpointing"] + (
        ["eraser site", "per-token t"] if wan else ["RoPE"]) + ["predicted GB", "measured GB", "ratio", "step s"]
    rows = []
    for r in f["rows"]:
        z = r["size"]
        rows.append([r["name"], str(z["heads"] * (128 if wan else 64)), str(z["layers"])] + ([str(z["ffn"])] if wan else [])
                    + [f"{z['frames']}x{z['height']}x{z['width']}", f"{z['batch']}+{z['preserve']}",
                       "on" if z["ckpt"] else "off"]
                    + (["attn1" if z["family"].endswith("attn1") else "attn2", "yes" if z.get("expand") else "no"]
                       if wan else ["yes" if z.get("rope") else "no"])
                    + [_num(r["predicted_gb"], 2), _num(r["measured_gb"], 2), _num(r["ratio"], 3), _num(r["step_s"], 0)])
    worst = max(f["rows"], key=lambda r: abs(r["ratio"] - 1))
    probe = {k: v for k, v in (f.get("no_grad_forward_u") or {}).items() if v is not None}
    probe_line = (f" A no-grad forward (6 rows, 2 blocks) peaked at {', '.join(f'{v} U ({k})' for k, v in probe.items())}."
                  if probe else "")
    return (_table(head, rows) + f"\n\n{'All' if f['within_tolerance'] else 'Not all'} {len(rows)} within "
            f"±{f['tolerance'] * 100:.0f}% (worst: {worst['name']}, ratio {worst['ratio']:.3f}).{probe_line}\n")


def generic(rec: dict) -> str:
    """Any results file: its figures, flattened, one per row."""
    def flat(prefix: str, v) -> Iterable[tuple[str, object]]:
        if isinstance(v, dict):
            for k, x in v.items():
                yield from flat(f"{prefix}.{k}" if prefix else str(k), x)
        elif isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
            for i, x in enumerate(v):
                yield from flat(f"{prefix}[{i}]", x)
        else:
            yield prefix, v

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return ", ".join(cell(x) for x in v)
        return _num(v)

    return _table(["figure", "value"], ([f"`{k}`", cell(v)] for k, v in flat("", rec["figures"])))


def multi_fidelity(rec: dict) -> str:
    """benchmarks/multi_fidelity.py: screened vs full-size ranking of the same toy trials, and the cost ratio."""
    f, s = rec["figures"], rec.get("settings") or {}
    verdict = "met" if f.get("target_met") else "**missed**"
    flops = f.get("flop_ratio_modelled") or {}
    rows = [["Spearman, search ranking (score, then tie-breaks)", _num(f.get("spearman_ranking"), 2),
             f"≥ {f.get('target_spearman')}: {verdict}"],
            ["Spearman, score (average ranks for ties)", _num(f.get("spearman_score"), 2), ""],
            ["full-size best, its place in the screened order", _num(f.get("full_best_screened_place")), ""],
            ["wall per trial, screened / full (Ray Train start-up included)", _num(f.get("wall_ratio_trial"), 2), ""],
            ["wall per training step, screened / full", _num(f.get("wall_ratio_train_step"), 2), ""],
            ["wall per final eval, screened / full", _num(f.get("wall_ratio_eval"), 2), ""],
            ["FLOPs per trial, screened / full (modelled, `t2vu plan`'s model)", _num(flops.get("trial"), 2), ""]]
    return (f"{f.get('trials_paired')} toy trials (random samples of `{s.get('config')}`'s space, {s.get('steps')} steps, "
            f"{s.get('n_per_set')} videos per set), each screened at {s.get('screened_size')} and re-run at "
            f"{s.get('full_size')}:\n\n" + _table(["figure", "value", "target"], rows))


def search_cost_screened(rec: dict) -> str:
    """`t2vu plan --mode tune --results-file`: the full and the screened search's modelled cost."""
    full, scr = rec["figures"]["search_cost"], rec["figures"].get("screened_search_cost") or {}
    a, cl = full["assumptions"], full["cluster"]
    rows = [[f"full fidelity (every trial at {scr.get('full_size', 'full size')})", _num(full["gpu_hours"], 1), _num(full["wall_hours"], 1)]]
    if scr.get("gpu_hours") is not None:
        rows += [[f"screened: {scr['screening']['cluster']['trials']} trials at {scr.get('screened_size', 'the reduced size')}",
                  _num(scr["screening"]["gpu_hours"], 1), _num(scr["screening"]["wall_hours"], 1)],
                 [f"+ the best {scr['rerun']['cluster']['trials']} re-run at {scr.get('full_size', 'full size')} (and the baselines)",
                  _num(scr["rerun"]["gpu_hours"], 1), _num(scr["rerun"]["wall_hours"], 1)],
                 ["screened search, total", _num(scr["gpu_hours"], 1), _num(scr["wall_hours"], 1)]]
    return (f"`{(rec.get('settings') or {}).get('config')}` on {cl['gpus']} GPUs, {a['mfu']:.0%} of "
            f"{a['gpu_peak_tflops']:g} TFLOP/s (modelled):\n\n" + _table(["search", "GPU-hours", "wall hours"], rows))


def search_cost_headline(rec: dict) -> str:
    """The README's one line of `search_cost_screened`: the shipped GPU search's modelled cost, full and screened."""
    full, scr = rec["figures"]["search_cost"], rec["figures"].get("screened_search_cost") or {}
    a, cl = full["assumptions"], full["cluster"]
    line = (f"The shipped GPU search ({cl['trials']} trials on {cl['gpus']} GPUs at {a['mfu']:.0%} of "
            f"{a['gpu_peak_tflops']:g} TFLOP/s) models at **{_num(full['gpu_hours'], 1)} GPU-hours** "
            f"({_num(full['wall_hours'], 1)} h wall) at full size")
    if scr.get("gpu_hours") is not None:
        line += (f", **{_num(scr['gpu_hours'], 1)}** ({_num(scr['wall_hours'], 1)} h) screened "
                 f"(`{(rec.get('settings') or {}).get('config')}`: {scr['screening']['cluster']['trials']} trials at "
                 f"{scr.get('screened_size')}, the best {scr['rerun']['cluster']['trials']} re-run at full size)")
    return line + "."


def robustness(rec: dict) -> str:
    """`t2vu attack --results-file`: ASR raw / above floor per attack, preservation next to the base model's."""
    from benchmarks.robustness_table import robustness_table

    return robustness_table(rec)


def gate_probe(rec: dict) -> str:
    """The content gate's probe training record in an attack results file (`gate_training`, eval.attacks.gating)."""
    g = rec["figures"]["gate_training"]
    keys = [("train_acc", "train accuracy (logit > 0)"), ("gate_mean_positive", "mean gate, red states"),
            ("gate_mean_negative", "mean gate, other states"), ("loss_first", "loss, first step"),
            ("loss_last", "loss, last step"), ("samples", "states (positives + negatives)")]
    return _table(["probe", "value"], ([label, _num(g.get(k))] for k, label in keys))


def _plan_rows(table: str, with_phase: bool) -> Callable[[dict], str]:
    """`benchmarks/plan_predictions.py`: the plan of each shipped config against 80 and 141 GB cards."""
    def render(rec: dict) -> str:
        head = ["run", "peak GB/GPU", "dominant term"] + (["peak phase"] if with_phase else []) + ["80 GB", "141 GB"]
        rows = [[r["run"], f"{r['peak_gb']:.1f}", r["dominant_term"]] + ([r["peak_phase"]] if with_phase else [])
                + [r["fits_80"], r["fits_141"]] for r in rec["figures"][table]]
        return _table(head, rows)
    return render


# name -> (results file stem, renderer)
VIEWS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "robustness_toy": ("robustness_toy", robustness),
    "robustness_toy_subspace": ("robustness_toy_subspace", robustness),
    "robustness_toy_128": ("robustness_toy_128", robustness),
    "robustness_toy_128_inversion": ("robustness_toy_128_inversion", robustness),
    "robustness_toy_gate": ("robustness_toy_gate", robustness),  # the content gate vs the eraser alone
    # the gate's strength/threshold chosen on held-out rows (configs/gates/toy_choice_rows.csv), soft prompt 0.5x
    **{f"robustness_toy_gate_{k}": (f"robustness_toy_gate_{k}", robustness)
       for k in ("choice_s10_t-2", "choice_s20_t-2", "choice_s10_t-4", "heldout", "fresh")},  # heldout/fresh: every attack
    # bank-then-erase (benchmarks/defence_bank.py) vs the eraser alone: 8, 12 and 24 attacked training pairs; + gate
    **{n: (n, robustness) for n in ("robustness_toy_bank", "robustness_toy_bank12", "robustness_toy_bank24",
                                    "robustness_toy_bank24_gate", "robustness_toy_wan_gate",
                                    "robustness_toy_wan_bank", "robustness_toy_wan_bank_gate_128")},
    # the gate's strength/threshold chosen again for the toy Wan on the same held-out rows; the kept one on 16 rows
    **{f"robustness_toy_wan_gate_choice_{k}": (f"robustness_toy_wan_gate_choice_{k}", robustness)
       for k in ("s10_t-2", "s10_t0", "s20_t0", "s10_t1", "p2000_s10_t-2", "p2000_s10_t0")},  # p2000: 2000 probe steps
    "robustness_toy_wan_gate_t0": ("robustness_toy_wan_gate_t0", robustness),
    # the toy Wan probe's training record: 300 steps (the choice run that trained it) and 2000
    "gate_probe_toy_wan_300": ("robustness_toy_wan_gate_choice_s10_t0", gate_probe),
    "gate_probe_toy_wan_2000": ("robustness_toy_wan_gate_choice_p2000_s10_t-2", gate_probe),
    "robustness_toy_wan_bank_gate_t0": ("robustness_toy_wan_bank_gate_t0", robustness),
    "robustness_toy_128_discrete": ("robustness_toy_128_discrete", robustness),
    "toy_headline": ("toy_benchmark", toy_headline),
    "toy_benchmark": ("toy_benchmark", toy_benchmark),
    "toy_benchmark_small": ("toy_benchmark_small", toy_benchmark),
    "toy_wan_benchmark": ("toy_wan_benchmark", toy_benchmark),
    "toy_screen_cogvideox": ("toy_screen_cogvideox", toy_benchmark),  # recipe candidates, 2026-12-07
    "toy_model_quality": ("toy_model_quality", toy_quality),
    "toy_wan_model_quality": ("toy_wan_model_quality", toy_quality),
    "multi_fidelity": ("multi_fidelity", multi_fidelity),
    "search_cost_screened": ("search_cost_screened", search_cost_screened),
    "search_cost_headline": ("search_cost_screened", search_cost_headline),  # README: one line
    "memory_calibration_wan": ("memory_calibration_wan", memory_calibration),
    "memory_calibration_cogvideox": ("memory_calibration_cogvideox", memory_calibration),
    "sp_memory_calibration": ("sp_memory_calibration", memory_calibration),  # benchmarks/sp_memory_check.py, SP 2
    "memory_plan_cogvideox": ("memory_plan_predictions", _plan_rows("cogvideox", True)),
    "memory_plan_wan": ("memory_plan_predictions", _plan_rows("wan", False)),
}


def render_block(name: str, doc: Path, results_dir: Path = RESULTS_DIR) -> str:
    """The body of block `name` in `doc` (raises FileNotFoundError when its results file is missing)."""
    stem, fn = VIEWS.get(name, (name, generic))
    source = results_dir / f"{stem}.json"
    if not source.exists():
        raise FileNotFoundError(f"results file {_shown(source)} is missing")
    rec = read_results(source)
    return "\n" + fn(rec) + "\n\n" + provenance(rec, source, doc) + "\n"


def render_text(text: str, doc: Path, results_dir: Path = RESULTS_DIR) -> tuple[str, list[str]]:
    """`text` with every marked block re-rendered, and the problems found (missing files, bad markers)."""
    problems: list[str] = []
    rel = _shown(doc)
    if len(OPEN.findall(text)) != text.count(CLOSE) or len(OPEN.findall(text)) != len(BLOCK.findall(text)):
        problems.append(f"{rel}: unbalanced results markers (each `<!-- results:NAME -->` needs its own "
                        f"`{CLOSE}` on a later line)")
        return text, problems

    def sub(m: re.Match) -> str:
        name = m.group("name")
        try:
            body = render_block(name, doc, results_dir)
        except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{rel}: block {name}: {exc!s}".rstrip())
            return m.group(0)
        return f"<!-- results:{name} -->\n{body}{CLOSE}"

    return BLOCK.sub(sub, text), problems


def check(files: Iterable[Path] | None = None, results_dir: Path = RESULTS_DIR) -> list[str]:
    """Every disagreement between a marked block and its results file, as readable lines (empty: all agree)."""
    out = []
    for doc in files if files is not None else doc_files():
        text = doc.read_text()
        new, problems = render_text(text, doc, results_dir)
        out += problems
        if new != text:
            rel = _shown(doc)
            diff = "".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True), f"{rel} (committed)",
                                                f"{rel} (rendered from {results_dir.name}/)", n=1))
            out.append(f"{rel}: a marked table differs from its results file; run "
                       f"`python benchmarks/render_results.py`\n{diff}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale or broken")
    ap.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md, docs/*.md, benchmarks/*.md)")
    args = ap.parse_args(argv)
    files = [f.resolve() for f in args.files] or doc_files()
    if args.check:
        problems = check(files)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    rc = 0
    for doc in files:
        text = doc.read_text()
        new, problems = render_text(text, doc)
        for p in problems:
            print(p, file=sys.stderr)
            rc = 1
        if new != text:
            from unlearn.fsutil import atomic_write_text

            atomic_write_text(doc, new)
            print(f"rendered {_shown(doc)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
