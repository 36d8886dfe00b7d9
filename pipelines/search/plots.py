"""The search report's PNG plots: Pareto front vs baseline, learning curves of the top trials
(training loss, proxy then final objective), per-parameter sensitivity. Matplotlib (Agg) only."""

from __future__ import annotations

import math
from pathlib import Path

from pipelines.search.results import read_json
from unlearn.fsutil import atomic_path


def read_curve(trial_dir: Path) -> list[dict]:
    from unlearn.trainer import read_metrics

    return read_metrics(Path(trial_dir) / "metrics.jsonl")


def read_proxy(trial_dir: Path) -> list[dict]:
    rows = []
    for p in sorted(Path(trial_dir).glob("proxy/step_*/objective.json")):
        r = read_json(p)
        if r:
            rows.append(r)
    return rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid_and_legend(ax, fontsize: int) -> None:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty legend box would only cover data
        ax.legend(fontsize=fontsize)


def _save(plt, fig, path: Path, dpi: int) -> Path:
    """Lay out, write atomically (a report reader never sees half a PNG), free the figure."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return path


MAX_PARETO_PANELS = 6  # every pair of up to 4 objectives


def _label(m) -> str:
    """An axis label that fits a panel: the summary key broken at underscores, and its direction."""
    words, lines, cur = m.name.split("_"), [], ""
    for w in words:
        if cur and len(cur) + len(w) > 22:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur}_{w}" if cur else w
    lines.append(cur)
    return "\n".join(lines) + f"\n({'lower' if m.mode == 'min' else 'higher'} is better)"


def _pareto_panel(ax, x, y, done, pareto, result) -> None:
    """One pair of objectives: every completed trial (Pareto members in red), the baseline, the best.
    Error bars are the objectives' standard errors (pipelines.search.objective) where the eval gave them."""
    for t in done:
        on = t.trial_id in pareto
        ax.errorbar(t.metrics[x.name], t.metrics[y.name], xerr=t.metrics.get(f"{x.name}_se"),
                    yerr=t.metrics.get(f"{y.name}_se"), fmt="o", ms=7 if on else 5, elinewidth=0.8,
                    color="tab:red" if on else "tab:gray", zorder=3)
        ax.annotate(t.trial_id.split("_")[-1], (t.metrics[x.name], t.metrics[y.name]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    bx, by = result.baseline.get(x.name), result.baseline.get(y.name)
    if bx is not None and by is not None:
        ax.scatter(bx, by, marker="X", c="black", s=120, zorder=4, label="baseline (eraser disabled)")
    elif bx is not None:  # e.g. a paired metric (PSNR vs base) has no value for the base model itself
        ax.axvline(bx, c="black", ls="--", label="baseline")
    elif by is not None:
        ax.axhline(by, c="black", ls="--", label="baseline")
    for (label, vals), marker in zip(result.methods.items(), "PDv^<>"):
        if isinstance(vals.get(x.name), (int, float)) and isinstance(vals.get(y.name), (int, float)):
            ax.scatter(vals[x.name], vals[y.name], marker=marker, c="tab:blue", s=90, zorder=4, label=label)
    if result.best:
        ax.scatter(result.best.metrics[x.name], result.best.metrics[y.name], marker="*", c="gold",
                   edgecolors="black", s=250, zorder=5, label=f"best ({result.best.trial_id.split('_')[-1]})")
    ax.set_xlabel(_label(x), fontsize=8)
    ax.set_ylabel(_label(y), fontsize=8)
    ax.tick_params(labelsize=7)


def plot_pareto(path: Path, result, cfg) -> Path:
    """Every pair of objectives in its own panel (3 objectives: 3 panels), Pareto set in red."""
    from itertools import combinations

    plt = _plt()
    ms = cfg.search.objective.metrics
    done = [t for t in result.trials if t.status == "completed" and all(isinstance(t.metrics.get(m.name), (int, float)) for m in ms)]
    pareto = {t.trial_id for t in result.pareto}
    if len(ms) >= 2:
        pairs = list(combinations(ms, 2))[:MAX_PARETO_PANELS]
        cols = min(len(pairs), 3)
        rows = -(-len(pairs) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
        for ax, (x, y) in zip(axes.flat, pairs):
            _pareto_panel(ax, x, y, done, pareto, result)
            _grid_and_legend(ax, 7)
        for ax in list(axes.flat)[len(pairs):]:
            ax.axis("off")
        fig.suptitle(f"Trials on every pair of objectives: Pareto set (red), baseline (X), best (star); "
                     f"{len(done)} completed", fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        m = ms[0]
        for i, t in enumerate(done):
            ax.errorbar(i, t.metrics[m.name], yerr=t.metrics.get(f"{m.name}_se"), fmt="o",
                        color="tab:red" if t.trial_id in pareto else "tab:gray", zorder=3)
        if m.name in result.baseline:
            ax.axhline(result.baseline[m.name], c="black", ls="--", label="baseline (eraser disabled)")
        for (label, vals), ls in zip(result.methods.items(), [":", "-.", (0, (5, 1)), (0, (1, 3))]):
            if isinstance(vals.get(m.name), (int, float)):
                ax.axhline(vals[m.name], c="tab:blue", ls=ls, label=label)
        ax.set_xlabel("completed trial")
        ax.set_ylabel(_label(m), fontsize=8)
        ax.set_title("Trials vs baseline")
        _grid_and_legend(ax, 8)
    return _save(plt, fig, path, 110)


def top_trials(result, cfg, k: int) -> list:
    score = cfg.search.objective.scalarize.name
    scored = [t for t in result.trials if isinstance(t.metrics.get(score), (int, float)) and not math.isnan(t.metrics[score])]
    rank = cfg.search.objective.scalarize.ranking_key  # score, then the tie-breaks
    done = sorted((t for t in scored if t.status == "completed"), key=lambda t: rank(t.metrics))
    rest = sorted((t for t in scored if t.status != "completed"), key=lambda t: rank(t.metrics))
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
        _grid_and_legend(ax, 7)
    return _save(plt, fig, path, 110)


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
    return _save(plt, fig, path, 100)

