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

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

BASELINE_ID = "baseline (eraser disabled)"


@dataclass
class ReportPaths:
    report: Path
    results_csv: Path
    plots: list[Path]


# --- reading a run folder ------------------------------------------------------------------------------

def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_curve(trial_dir: Path) -> list[dict]:
    from unlearn.trainer import read_metrics

    return read_metrics(Path(trial_dir) / "metrics.jsonl")


def read_proxy(trial_dir: Path) -> list[dict]:
    rows = []
    for p in sorted(Path(trial_dir).glob("proxy/step_*/objective.json")):
        r = _read_json(p)
        if r:
            rows.append(r)
    return rows


def collect_trials(out: str | Path) -> list:
    from pipelines.tune import TrialSummary

    trials = []
    root = Path(out) / "trials"
    dirs = [p for p in root.glob("*") if p.is_dir() and (p / "params.json").exists()] if root.exists() else []
    for tdir in sorted(dirs, key=lambda p: ((p / "params.json").stat().st_mtime, p.name)):  # trial start order
        params = _read_json(tdir / "params.json") or {}
        summary = _read_json(tdir / "summary.json")
        tune = _read_json(tdir / "tune.json") or {}
        if summary:
            status, metrics = "completed", summary.get("metrics", {})
            eraser, steps = summary.get("eraser"), int(summary.get("steps_done", 0))
            run_id = summary.get("mlflow_run_id")
        else:
            status = tune.get("status") or "running"
            metrics = {k: v for k, v in (tune.get("last_result") or {}).items() if isinstance(v, (int, float))}
            eraser, steps = None, int(metrics.get("train_step", 0) or 0)
            rid = tdir / "mlflow_run_id.txt"
            run_id = rid.read_text().strip() if rid.exists() else None
            if status == "completed":  # Tune says done but the trial wrote no summary
                status = "incomplete"
        trials.append(TrialSummary(trial_id=tdir.name, status=status, params=params, metrics=metrics, eraser=eraser,
                                   trial_dir=str(tdir), mlflow_run_id=run_id, steps_done=steps, error=tune.get("error")))
    return trials


def pareto_indices(points: list[list[float]], modes: list[str]) -> list[int]:
    """Indices of non-dominated points (mode per coordinate: min or max)."""
    signed = [[v if m == "min" else -v for v, m in zip(p, modes)] for p in points]
    keep = []
    for i, p in enumerate(signed):
        dominated = any(all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p))
                        for j, q in enumerate(signed) if j != i)
        if not dominated:
            keep.append(i)
    return keep


def baseline_values(objective, trials) -> dict[str, float]:
    """Objective values of the base model: each metric's `_base` twin from the trials' evals."""
    out = {}
    for m in objective.metrics:
        key = m.baseline_key()
        vals = [float(t.metrics[key]) for t in trials if key and isinstance(t.metrics.get(key), (int, float))]
        if vals:
            vals.sort()
            out[m.name] = vals[len(vals) // 2]  # identical across trials (same rows and seeds); median if not
    if len(out) == len(objective.metrics):
        out[objective.scalarize.name] = objective.scalar(out)
    return out


# --- writing -----------------------------------------------------------------------------------------

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
    metric_keys = [*s.metric_names(), score]
    pareto = {t.trial_id for t in result.pareto}
    header = ["trial_id", "status", *[f"param:{k}" for k in param_keys], *metric_keys, "pareto", "best",
              "steps_done", "eraser", "mlflow_run_id"]
    rows = [[BASELINE_ID, "baseline", *["" for _ in param_keys], *[result.baseline.get(k, "") for k in metric_keys],
             "", "", 0, "", ""]]
    for t in result.trials:
        rows.append([t.trial_id, t.status, *[t.params.get(k, "") for k in param_keys],
                     *[t.metrics.get(k, "") for k in metric_keys], t.trial_id in pareto,
                     bool(result.best and t.trial_id == result.best.trial_id), t.steps_done, t.eraser or "",
                     t.mlflow_run_id or ""])
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(path: Path, result, cfg) -> Path:
    plt = _plt()
    s = cfg.search
    ms = s.objective.metrics
    done = [t for t in result.trials if t.status == "completed" and all(isinstance(t.metrics.get(m.name), (int, float)) for m in ms)]
    pareto = {t.trial_id for t in result.pareto}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if len(ms) >= 2:
        x, y = ms[0], ms[1]
        for t in done:
            on = t.trial_id in pareto
            ax.scatter(t.metrics[x.name], t.metrics[y.name], c="tab:red" if on else "tab:gray", s=50 if on else 30, zorder=3)
            ax.annotate(t.trial_id.split("_")[-1], (t.metrics[x.name], t.metrics[y.name]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        front = sorted((t for t in done if t.trial_id in pareto), key=lambda t: t.metrics[x.name])
        if len(front) > 1:
            ax.plot([t.metrics[x.name] for t in front], [t.metrics[y.name] for t in front], c="tab:red", lw=1, zorder=2)
        bx, by = result.baseline.get(x.name), result.baseline.get(y.name)
        if bx is not None and by is not None:
            ax.scatter(bx, by, marker="X", c="black", s=120, zorder=4, label="baseline (eraser disabled)")
        elif bx is not None:  # e.g. a paired metric (PSNR vs base) has no value for the base model itself
            ax.axvline(bx, c="black", ls="--", label=f"baseline {x.name}")
        elif by is not None:
            ax.axhline(by, c="black", ls="--", label=f"baseline {y.name}")
        if result.best:
            ax.scatter(result.best.metrics[x.name], result.best.metrics[y.name], marker="*", c="gold",
                       edgecolors="black", s=250, zorder=5, label=f"best ({result.best.trial_id})")
        ax.set_xlabel(f"{x.name} ({x.mode})")
        ax.set_ylabel(f"{y.name} ({y.mode})")
        ax.set_title("Trials: Pareto front (red), baseline (X)")
    else:
        m = ms[0]
        for i, t in enumerate(done):
            ax.scatter(i, t.metrics[m.name], c="tab:red" if t.trial_id in pareto else "tab:gray", zorder=3)
        if m.name in result.baseline:
            ax.axhline(result.baseline[m.name], c="black", ls="--", label="baseline (eraser disabled)")
        ax.set_xlabel("completed trial")
        ax.set_ylabel(f"{m.name} ({m.mode})")
        ax.set_title("Trials vs baseline")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def top_trials(result, cfg, k: int) -> list:
    score = cfg.search.objective.scalarize.name
    scored = [t for t in result.trials if isinstance(t.metrics.get(score), (int, float)) and not math.isnan(t.metrics[score])]
    done = sorted((t for t in scored if t.status == "completed"), key=lambda t: t.metrics[score])
    rest = sorted((t for t in scored if t.status != "completed"), key=lambda t: t.metrics[score])
    return (done + rest)[:k]


def plot_learning_curves(path: Path, result, cfg) -> Path:
    plt = _plt()
    score = cfg.search.objective.scalarize.name
    tops = top_trials(result, cfg, cfg.search.top_k) or result.trials[: cfg.search.top_k]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for t in tops:
        curve = read_curve(Path(t.trial_dir))
        if curve:
            axes[0].plot([r["step"] for r in curve], [r["loss"] for r in curve], label=t.trial_id, marker=".")
        proxy = read_proxy(Path(t.trial_dir))
        pts = [(r["step"], r.get(score)) for r in proxy if isinstance(r.get(score), (int, float))]
        if isinstance(t.metrics.get(score), (int, float)) and t.status == "completed":
            pts.append((t.steps_done, t.metrics[score]))
        if pts:
            axes[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=t.trial_id)
    axes[0].set(xlabel="training step", ylabel="loss (global batch)", title=f"Training loss, top {len(tops)} trials")
    axes[0].set_yscale("log")
    axes[1].set(xlabel="training step", ylabel=f"{score} (lower is better)", title="Objective: proxy evals, then final")
    if result.baseline.get(score) is not None:
        axes[1].axhline(result.baseline[score], c="black", ls="--", label="baseline")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sensitivity(path: Path, result, cfg) -> Path:
    plt = _plt()
    s = cfg.search
    keys = list(s.space)
    cols = [*s.metric_names(), s.objective.scalarize.name]
    done = [t for t in result.trials if t.status == "completed"]
    fig, axes = plt.subplots(len(keys), len(cols), figsize=(3.2 * len(cols), 2.6 * len(keys)), squeeze=False)
    for i, key in enumerate(keys):
        kind = next(iter(s.space[key]))
        for j, col in enumerate(cols):
            ax = axes[i][j]
            pts = [(t.params.get(key), t.metrics.get(col)) for t in done
                   if t.params.get(key) is not None and isinstance(t.metrics.get(col), (int, float))]
            if kind == "choice":
                labels = [str(v) for v in s.space[key]["choice"]]
                ax.scatter([labels.index(str(p[0])) if str(p[0]) in labels else -1 for p in pts], [p[1] for p in pts])
                ax.set_xticks(range(len(labels)), labels, fontsize=7)
            else:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts])
                if kind == "loguniform":
                    from matplotlib.ticker import NullFormatter

                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
            if col in result.baseline:
                ax.axhline(result.baseline[col], c="black", ls="--", lw=0.8)
            ax.set_xlabel(key, fontsize=8)
            ax.set_ylabel(col, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle("Per-parameter sensitivity (completed trials; dashed = baseline)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(result, cfg, out: Path, plots: list[Path]) -> str:
    from pipelines import mlflow_utils as mu

    s = cfg.search
    score = s.objective.scalarize.name
    metrics = s.metric_names()
    counts: dict[str, int] = {}
    for t in result.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    mlflow_meta = _read_json(out / "mlflow.json") or {}
    uri = result.tracking_uri or mlflow_meta.get("tracking_uri")
    exp_id = result.experiment_id or mlflow_meta.get("experiment_id")

    def link(t):
        if not t.mlflow_run_id:
            return ""
        return mu.run_link(uri, exp_id, t.mlflow_run_id) if uri else t.mlflow_run_id

    cmd = (out / "command.txt").read_text().strip() if (out / "command.txt").exists() else f"t2vu tune --output {out}"
    lines = [f"# Search report: {s.name}", ""]
    lines += [
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
                     + (f" (open with `mlflow ui --backend-store-uri {uri}`)" if uri.startswith("sqlite:") else ""))
    errors = result.extras.get("errors") or [f"{t.trial_id}: {t.error}" for t in result.trials if t.error]
    if errors:
        lines += ["", "Errors:", *[f"- `{e}`" for e in errors[:5]]]

    lines += ["", "## Objectives vs baseline", ""]
    rows = [[BASELINE_ID, *[result.baseline.get(k, "—") for k in [*metrics, score]]]]
    if result.best:
        rows.append([f"best: {result.best.trial_id}", *[result.best.metrics.get(k, "—") for k in [*metrics, score]]])
    lines.append(_md_table(["", *metrics, score], rows))

    lines += ["", "## Pareto set", ""]
    keys = list(s.space)
    prow = []
    for t in sorted(result.pareto, key=lambda t: t.metrics.get(score, float("inf"))):
        prow.append([t.trial_id, *[t.params.get(k, "") for k in keys], *[t.metrics.get(m, "") for m in [*metrics, score]],
                     t.steps_done, link(t), f"`{t.eraser}`" if t.eraser else ""])
    lines.append(_md_table(["trial", *keys, *metrics, score, "steps", "MLflow run", "eraser"], prow) if prow
                 else "_No completed trial with every objective._")

    lines += ["", "## All trials", ""]
    arow = [[t.trial_id, t.status, *[t.params.get(k, "") for k in keys], *[t.metrics.get(m, "") for m in [*metrics, score]],
             t.steps_done] for t in result.trials]
    lines.append(_md_table(["trial", "status", *keys, *metrics, score, "steps"], arow))
    lines.append("")
    lines.append("Stopped-early trials show their last proxy evaluation (fewer prompts), not a full one.")

    lines += ["", "## Plots", ""]
    for p in plots:
        lines.append(f"![{p.stem}]({p.name})")
        lines.append("")

    lines += ["## Reproduce the best trial", ""]
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
    return "\n".join(lines)


def write_report(out: str | Path, cfg=None, result=None, *, log_to_mlflow: bool = True) -> ReportPaths:
    """Write report.md, results.csv and the PNG plots into `out`; log them to the parent run."""
    from pipelines.config import load_pipeline_config

    out = Path(out).resolve()
    if cfg is None:
        if not (out / "search_config.yaml").exists():
            raise FileNotFoundError(f"{out} is not a search run folder (no search_config.yaml)")
        cfg = load_pipeline_config(out / "search_config.yaml")
    if result is None:
        from pipelines.tune import collect_result

        result = collect_result(cfg, out)
        saved = _read_json(out / "search_result.json") or {}
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
    tmp = out / ".report.md.tmp"
    tmp.write_text(md)
    tmp.replace(out / "report.md")
    paths = ReportPaths(out / "report.md", csv_path, plots)
    if log_to_mlflow:
        _log_report(out, paths)
    return paths


def _log_report(out: Path, paths: ReportPaths) -> None:
    meta = _read_json(out / "mlflow.json")
    if not meta:
        return
    from pipelines import mlflow_utils as mu

    try:
        c = mu.client(meta["tracking_uri"])
        for p in [paths.report, paths.results_csv, *paths.plots]:
            mu.log_file(c, meta["parent_run_id"], p, "report")
    except Exception as exc:
        LOG.warning("Could not log the report to MLflow: %s", exc)
