"""The search report: `t2vu report RUN` (also written at the end of every `t2vu tune`).

Reads only the run folder (works without Ray, after the fact):
  <run>/search_config.yaml            the resolved search config
  <run>/trials/<id>/params.json       sampled hyperparameters
  <run>/trials/<id>/summary.json      completed trials: final objectives, eraser path, MLflow run
  <run>/trials/<id>/tune.json         status (completed / stopped_early / error) + last result
  <run>/trials/<id>/metrics.jsonl     training curve;  proxy/step_*/objective.json  proxy evals
Writes into <run>/ and logs to the search's MLflow parent run (under report/):
  report.md, results.csv, pareto.png, learning_curves.png, sensitivity.png
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.metrics import UNASKED
from eval.report_html import write_html
from pipelines.search.plots import plot_learning_curves, plot_pareto, plot_sensitivity
from pipelines.search.results import collect_result, read_json
from unlearn.csvsafe import csv_text
from unlearn.fsutil import atomic_write_text

LOG = logging.getLogger(__name__)

BASELINE_ID = "baseline (eraser disabled)"


def method_id(label: str) -> str:
    """The row of a training-free method baseline (search.objective.baselines)."""
    return f"baseline: {label}"


@dataclass
class ReportPaths:
    report: Path
    results_csv: Path
    plots: list[Path]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


def write_results_csv(path: Path, result, cfg) -> Path:
    s = cfg.search
    score = s.objective.scalarize.name
    param_keys = list(s.space)
    ties = [t.name for t in s.objective.scalarize.tie_break]
    base_keys = [*s.metric_names(), score]
    metric_keys = [*base_keys, *[f"{k}_se" for k in base_keys], *ties]
    pareto = {t.trial_id for t in result.pareto}
    header = ["trial_id", "status", *[f"param:{k}" for k in param_keys], *metric_keys, "pareto", "best",
              "steps_done", "eraser", "mlflow_run_id"]
    rows = [[BASELINE_ID, "baseline", *["" for _ in param_keys], *[result.baseline.get(k, "") for k in metric_keys],
             "", "", 0, "", ""]]
    rows += [[method_id(label), "baseline", *["" for _ in param_keys], *[vals.get(k, "") for k in metric_keys],
              "", "", 0, "", ""] for label, vals in result.methods.items()]
    for t in result.trials:
        rows.append([t.trial_id, t.status, *[t.params.get(k, "") for k in param_keys],
                     *[t.metrics.get(k, "") for k in metric_keys], t.trial_id in pareto,
                     bool(result.best and t.trial_id == result.best.trial_id), t.steps_done, t.eraser or "",
                     t.mlflow_run_id or ""])
    atomic_write_text(path, csv_text(header, rows))  # escaped like every results CSV (unlearn.csvsafe)
    return path



def _cell(metrics: dict, key: str, missing: str = "") -> str:
    """`value ± standard error` when the objective carries one (pipelines.search.objective), else the value."""
    v = metrics.get(key)
    if v is None:
        return missing
    se = metrics.get(f"{key}_se")
    return f"{_fmt(v)} ± {se:.2g}" if isinstance(se, (int, float)) and isinstance(v, (int, float)) else _fmt(v)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(result, cfg, out: Path, plots: list[Path]) -> str:
    """report.md of a search run folder: what ran, the objectives against the base model and the training-free
    methods, the Pareto set, every trial, the plots, and how to train the best trial's eraser again."""
    s = cfg.search
    mlflow_meta = read_json(out / "mlflow.json") or {}
    uri = result.tracking_uri or mlflow_meta.get("tracking_uri")
    exp_id = result.experiment_id or mlflow_meta.get("experiment_id")
    cols, ties, baseline, concept_note = _report_columns(result, s)
    lines = [f"# Search report: {s.name}", "", *concept_note]
    lines += _run_lines(result, cfg, out, uri, exp_id, mlflow_meta)
    lines += _objectives_section(result, cols, ties, baseline, out)
    lines += _trial_sections(result, s, cols, uri, exp_id)
    lines += ["", "## Plots", ""]
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    lines += _reproduce_section(result, out)
    return "\n".join(lines)


def _run_lines(result, cfg, out: Path, uri, exp_id, mlflow_meta: dict) -> list[str]:
    """The report's opening list: run folder, command, algorithm, objectives, trials, time, versions, cluster,
    MLflow; then the first errors."""
    from pipelines.tracking import mlflow_utils as mu
    from pipelines.tracking.mlflow_ui import runs_view_url

    s = cfg.search
    score = s.objective.scalarize.name
    counts: dict[str, int] = {}
    for t in result.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    cmd = (out / "command.txt").read_text().strip() if (out / "command.txt").exists() else f"t2vu tune --output {out}"
    lines = [
        f"- Run folder: `{out}`",
        f"- Command: `{cmd}`",
        f"- Algorithm: {s.algorithm}" + (" (multi-objective TPE, Pareto search)" if s.is_multi_objective() else
                                         f" on the scalarised `{score}` (lower is better)"),
        "- Objectives: " + ", ".join(f"`{m.name}` ({m.mode})" for m in s.objective.metrics)
        + f"; scalarised `{score}` = " + " + ".join(
            f"{s.objective.scalarize.weights.get(m.name, 1.0):g}·{'' if m.mode == 'min' else '−'}{m.name}" for m in s.objective.metrics)
        + "".join(f" + {c.penalty:g}·violation({c.metric} {'≥ ' + _fmt(c.min) if c.min is not None else ''}"
                  f"{'≤ ' + _fmt(c.max) if c.max is not None else ''})" for c in s.objective.scalarize.constraints),
        f"- Trials: {len(result.trials)} (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")",
        f"- Wall time: {result.wall_s:.0f} s" if result.wall_s else "- Wall time: (see search_result.json)",
        f"- Git: `{mu.git_sha()}`; versions: " + ", ".join(f"{k} {v}" for k, v in mu.library_versions().items()),
        f"- Cluster: {json.dumps(result.extras.get('cluster') or mu.cluster_shape())}; "
        f"{cfg.distributed.num_workers} worker(s)/trial, ZeRO-{cfg.distributed.zero_stage}, "
        f"{'GPU' if cfg.distributed.use_gpu else 'CPU'}",
    ]
    if uri:
        lines.append(f"- MLflow: `{uri}`, experiment {exp_id}, parent run `{result.parent_run_id or mlflow_meta.get('parent_run_id')}`"
                     + (f" (open with `mlflow ui --backend-store-uri {uri}`, then "
                        f"{runs_view_url(exp_id)})"
                        if uri.startswith("sqlite:") else ""))
    errors = result.extras.get("errors") or [f"{t.trial_id}: {t.error}" for t in result.trials if t.error]
    if errors:
        lines += ["", "Errors:", *[f"- `{e}`" for e in errors[:5]]]
    return lines


def _report_columns(result, s) -> tuple[list[str], list[str], dict, list[str]]:
    """(metric columns, tie-break keys, baseline values, the note on the concept where it was not asked for).

    First column: the concept where it was not asked for (eval.metrics), objective or not: the collateral an
    accuracy objective hides. The base model's value is the trials' `_base` (same rows and seeds)."""
    metrics = s.metric_names()
    ties = [t.name for t in s.objective.scalarize.tie_break]
    unasked = f"{UNASKED}_erased"
    lead = [unasked] if unasked not in metrics and any(unasked in t.metrics for t in result.trials) else []
    cols = [*lead, *metrics, s.objective.scalarize.name, *ties]
    baseline = dict(result.baseline)
    base_vals = sorted(float(t.metrics[f"{UNASKED}_base"]) for t in result.trials
                       if isinstance(t.metrics.get(f"{UNASKED}_base"), (int, float)))
    if base_vals:
        baseline.setdefault(unasked, base_vals[len(base_vals) // 2])
    note: list[str] = []
    if lead or unasked in metrics:
        best = result.best.metrics if result.best else {}
        note = [f"**Concept where it was not asked for** (`{unasked}`: videos of prompts that do not ask for "
                f"the concept in which the classifier finds it): base model {_cell(baseline, unasked, '—')}"
                + (f", best trial {_cell(best, unasked, '—')}" if result.best else "")
                + (" — MORE than the base model" if isinstance(best.get(unasked), (int, float)) and base_vals
                   and best[unasked] > baseline[unasked] else "") + ".", ""]
    return cols, ties, baseline, note


def _objectives_section(result, cols: list[str], ties: list[str], baseline: dict, out: Path) -> list[str]:
    """The base model, each training-free method and the best trial on every column, and how to read ±."""
    lines = ["", "## Objectives vs baseline", ""]
    rows = [[BASELINE_ID, *[_cell(baseline, k, "—") for k in cols]]]
    rows += [[method_id(label), *[_cell(vals, k, "—") for k in cols]] for label, vals in result.methods.items()]
    if result.best:
        rows.append([f"best: {result.best.trial_id}", *[_cell(result.best.metrics, k, "—") for k in cols]])
    lines += [_md_table(["", *cols], rows), ""]
    if result.methods:
        lines.append("`baseline: <method>` rows: training-free methods (`search.objective.baselines`, eval.methods) "
                     "judged with the trials' final eval — same prompts, seeds and base videos; their eval folders "
                     f"are `{out}/baselines/<method>/`.")
        lines.append("")
    lines.append("`± x`: the bootstrap standard error over the eval's prompt rows (eval.uncertainty); the score's "
                 "ignores correlations between objectives. Trials whose scores differ by less than about twice it "
                 "are not told apart by this eval" + (f"; ties are ordered by {', '.join(f'`{t}`' for t in ties)}."
                                                      if ties else "; set search.objective.scalarize.tie_break to order ties."))
    return lines


def _trial_sections(result, s, cols: list[str], uri, exp_id) -> list[str]:
    """The Pareto set (ranked, with MLflow runs and erasers) and the table of every trial."""
    from pipelines.tracking import mlflow_utils as mu

    def link(t):
        if not t.mlflow_run_id:
            return ""
        return mu.run_link(uri, exp_id, t.mlflow_run_id) if uri else t.mlflow_run_id

    lines = ["", "## Pareto set", ""]
    keys = list(s.space)
    rank = s.objective.scalarize.ranking_key
    prow = []
    for t in sorted(result.pareto, key=lambda t: rank(t.metrics)):
        prow.append([t.trial_id, *[t.params.get(k, "") for k in keys], *[_cell(t.metrics, m) for m in cols],
                     t.steps_done, link(t), f"`{t.eraser}`" if t.eraser else ""])
    lines.append(_md_table(["trial", *keys, *cols, "steps", "MLflow run", "eraser"], prow) if prow
                 else "_No completed trial with every objective._")

    lines += ["", "## All trials", ""]
    arow = [[t.trial_id, t.status, *[t.params.get(k, "") for k in keys], *[_cell(t.metrics, m) for m in cols],
             t.steps_done] for t in result.trials]
    lines.append(_md_table(["trial", "status", *keys, *cols, "steps"], arow))
    lines.append("")
    lines.append("Stopped-early trials show their last proxy evaluation (fewer prompts), not a full one.")
    return lines


def _reproduce_section(result, out: Path) -> list[str]:
    """The commands that train the best trial's eraser again, and how to load the one it made."""
    lines = ["## Reproduce the best trial", ""]
    if result.best:
        b = result.best
        tdir = Path(b.trial_dir)
        cfg_path = ""
        if (out / "command.txt").exists():
            parts = (out / "command.txt").read_text().split()
            cfg_path = parts[parts.index("--config") + 1] if "--config" in parts else ""
        sets = " ".join(f"--set {k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in b.params.items())
        lines += [
            "Train the same eraser again (the trial's resolved config; `t2vu train` without `--distributed` "
            "gives an interchangeable single-process eraser):",
            "",
            "```sh",
            f"t2vu train --distributed --config {tdir / 'config.yaml'} --output {out.parent / (out.name + '-best')}",
            "```",
        ]
        if cfg_path:
            lines += ["", "or from the search config with the sampled values:", "", "```sh",
                      f"t2vu train --distributed --config {cfg_path} {sets} --output {out.parent / (out.name + '-best')}",
                      "```"]
        lines += ["", f"Its eraser: `{b.eraser}` — load it with `unlearn.eraser.load_eraser(pipe, \"{b.eraser}\")`."]
    else:
        lines.append("_No completed trial._")
    lines.append("")
    return lines


def write_report(out: str | Path, cfg=None, result=None, *, log_to_mlflow: bool = True) -> ReportPaths:
    """Write report.md, results.csv and the PNG plots into `out`; log them to the parent run."""
    from pipelines.config.pipeline import load_pipeline_config

    out = Path(out).resolve()
    if cfg is None:
        if not (out / "search_config.yaml").exists():
            raise FileNotFoundError(f"{out} is not a search run folder (no search_config.yaml)")
        cfg = load_pipeline_config(out / "search_config.yaml")
    if result is None:
        result = collect_result(cfg, out)
        saved = read_json(out / "search_result.json") or {}
        result.wall_s = float(saved.get("wall_s") or 0.0)
        result.extras.update({k: saved[k] for k in ("errors", "cluster") if k in saved})
    csv_path = write_results_csv(out / "results.csv", result, cfg)
    plots = []
    for name, fn in (("pareto.png", plot_pareto), ("learning_curves.png", plot_learning_curves),
                     ("sensitivity.png", plot_sensitivity)):
        try:
            plots.append(fn(out / name, result, cfg))
        except Exception as exc:  # a plot must not lose the report
            LOG.warning("plot %s failed: %s", name, exc)
    md = render_markdown(result, cfg, out, plots)
    atomic_write_text(out / "report.md", md)
    write_html(out / "report.md")  # report.html next to it (eval.report_html)
    paths = ReportPaths(out / "report.md", csv_path, plots)
    if log_to_mlflow:
        _log_report(out, paths)
    return paths


def _log_report(out: Path, paths: ReportPaths) -> None:
    from pipelines.tracking.tracker import Tracker

    try:
        tracker = Tracker.in_folder(out)  # off when the search ran without MLflow
        tracker.log_files(tracker.parent,
                          [paths.report, paths.report.with_suffix(".html"), paths.results_csv, *paths.plots], "report")
    except Exception as exc:
        LOG.warning("Could not log the report to MLflow: %s", exc)
