"""What a search produced, read back from its run folder (works without Ray, after the fact).

`collect_result` builds a `SearchResult` from <run>/trials/<id>/{params,summary,tune}.json:
the trials, the best one (lowest scalarised score), the Pareto set and the baseline. It is
what `run_search` returns, what `t2vu report` renders, and what `t2vu run` selects from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eval.metrics import is_number
from pipelines.search.objective import OBJECTIVE_FILE

TRIALS_DIR = "trials"
BASELINES_DIR = "baselines"  # <run>/baselines/<label>/: the training-free methods (pipelines.search.baselines)


@dataclass
class TrialSummary:
    trial_id: str
    status: str  # completed | stopped_early | error | running | incomplete
    params: dict[str, Any]
    metrics: dict[str, float]  # final objective values (+ baselines, score)
    eraser: str | None
    trial_dir: str
    mlflow_run_id: str | None = None
    steps_done: int = 0
    error: str | None = None


@dataclass
class SearchResult:
    """What `run_search` returns (and what `t2vu run` picks the best eraser from)."""

    output_dir: Path
    name: str
    metric_names: list[str]
    score_name: str
    trials: list[TrialSummary]
    best: TrialSummary | None  # lowest scalarised score among completed trials
    pareto: list[TrialSummary]  # non-dominated completed trials over the objective metrics
    baseline: dict[str, float]  # objective values of the base model (eraser disabled)
    # label -> objective values of each training-free method of `search.objective.baselines`
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    report: Path | None = None
    results_csv: Path | None = None
    wall_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def tracking(self):
        """The search's MLflow ids (`pipelines.tracking.tracker.SearchTracking`; None: MLflow was off)."""
        from pipelines.tracking.tracker import SearchTracking

        ids = (self.tracking_uri, self.experiment_id, self.parent_run_id)
        return SearchTracking(*ids) if all(ids) else None

    @property
    def best_eraser(self) -> Path | None:
        return Path(self.best.eraser) if self.best and self.best.eraser else None


def read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect_trials(out: str | Path) -> list[TrialSummary]:
    """Every trial folder under <out>/trials, in trial start order (params.json mtime)."""
    trials = []
    root = Path(out) / TRIALS_DIR
    dirs = [p for p in root.glob("*") if p.is_dir() and (p / "params.json").exists()] if root.exists() else []
    for tdir in sorted(dirs, key=lambda p: ((p / "params.json").stat().st_mtime, p.name)):
        params = read_json(tdir / "params.json") or {}
        summary = read_json(tdir / "summary.json")
        tune = read_json(tdir / "tune.json") or {}
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


def collect_baselines(cfg, out: Path) -> dict[str, dict[str, float]]:
    """label -> objective values of every method baseline that finished, in the config's order."""
    found = {}
    for b in cfg.search.objective.baselines:
        rec = read_json(Path(out) / BASELINES_DIR / b.key / OBJECTIVE_FILE)
        if rec:
            found[b.key] = {k: v for k, v in rec.items() if is_number(v)}
    return found


def collect_result(cfg, out: Path, ml=None) -> SearchResult:
    """Build a SearchResult from the trial folders of the search `cfg.search` in `out`; ml: its MLflow ids
    (`SearchTracking`; default: <out>/mlflow.json)."""
    from pipelines.tracking.tracker import SearchTracking

    s = cfg.search
    trials = collect_trials(out)
    done = [t for t in trials if t.status == "completed" and all(is_number(t.metrics.get(m)) for m in s.metric_names())]
    score = s.objective.scalarize.name
    scored = [t for t in done if is_number(t.metrics.get(score)) and t.metrics[score] == t.metrics[score]]
    best = min(scored, key=lambda t: s.objective.scalarize.ranking_key(t.metrics)) if scored else None
    pareto_idx = pareto_indices([[t.metrics[m.name] for m in s.objective.metrics] for t in done],
                                [m.mode for m in s.objective.metrics])
    baseline = baseline_values(s.objective, done or trials)
    ml = ml or SearchTracking.read(out)
    return SearchResult(
        output_dir=out, name=s.name, metric_names=s.metric_names(), score_name=score, trials=trials, best=best,
        pareto=[done[i] for i in pareto_idx], baseline=baseline, methods=collect_baselines(cfg, out),
        tracking_uri=ml and ml.tracking_uri, experiment_id=ml and ml.experiment_id, parent_run_id=ml and ml.parent_run_id,
    )


def search_result_json(r: SearchResult) -> dict:
    """The search_result.json record of a search."""
    return {
        "output_dir": str(r.output_dir), "name": r.name, "metrics": r.metric_names, "score": r.score_name,
        "best": asdict(r.best) if r.best else None, "best_eraser": str(r.best_eraser) if r.best_eraser else None,
        "pareto": [t.trial_id for t in r.pareto], "baseline": r.baseline,
        "method_baselines": r.methods, "trials": [asdict(t) for t in r.trials], "tracking_uri": r.tracking_uri,
        "experiment_id": r.experiment_id, "parent_run_id": r.parent_run_id,
        "report": str(r.report) if r.report else None, "results_csv": str(r.results_csv) if r.results_csv else None,
        "wall_s": r.wall_s, **r.extras,
    }
