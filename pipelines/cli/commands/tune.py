"""`t2vu tune --config configs/search/<x>.yaml [--output DIR] [--set key=value ...]`."""

from __future__ import annotations

import json

from pipelines.cli.commands.common import add_common, start_search


def register(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="Ray Tune search over eraser trainings (Ray Train + DeepSpeed per trial), with MLflow runs and a report",
        description="Runs the search declared in the config's `search` section. Rerunning the same command with "
        "the same --output resumes an interrupted search (Tuner.restore) without redoing finished trials. "
        "Leaves report.md, results.csv, PNG plots and (default tracking URI) mlflow.db in the output folder.",
    )
    add_common(p, command="tune")
    p.add_argument("--no-resume", action="store_true", help="start the search afresh even if the output holds one")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipelines.runtime.console import rounded
    from pipelines.search.tune import run_search

    cfg, out = start_search(args, "tune")
    if cfg is None:
        return out  # the preflight's exit code
    result = run_search(cfg, out, config_path=args.config, resume=not args.no_resume, verbose=args.verbose)
    best = result.best
    # floats for reading (4 significant digits); search_result.json and the trial folders keep them whole
    print(json.dumps(rounded({
        "output": str(result.output_dir),
        "trials": len(result.trials),
        "best_trial": best.trial_id if best else None,
        "best_metrics": {k: best.metrics.get(k) for k in [*result.metric_names, result.score_name]} if best else None,
        "best_eraser": str(result.best_eraser) if result.best_eraser else None,
        "baseline": result.baseline,
        "report": str(result.report) if result.report else None,
        "tracking_uri": result.tracking_uri,
    }), indent=2))
    return 0 if best else 1
