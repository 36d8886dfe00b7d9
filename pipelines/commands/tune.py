"""`t2vu tune --config configs/search/<x>.yaml [--output DIR] [--set key=value ...]`."""

from __future__ import annotations


def register(sub) -> None:
    from pipelines.commands.train import add_common

    p = sub.add_parser(
        "tune",
        help="Ray Tune search over eraser trainings (Ray Train + DeepSpeed per trial), with MLflow runs and a report",
        description="Runs the search declared in the config's `search` section. Rerunning the same command with "
        "the same --output resumes an interrupted search (Tuner.restore) without redoing finished trials. "
        "Leaves report.md, results.csv, PNG plots and (default tracking URI) mlflow.db in the output folder.",
    )
    add_common(p)
    p.add_argument("--no-resume", action="store_true", help="start the search afresh even if the output holds one")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipelines.tune import run_tune_cli

    return run_tune_cli(args)
