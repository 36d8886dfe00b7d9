"""`t2vu report RUN` — (re)write the search report of a `t2vu tune` run folder, or the attack report (report.md,
asr.png) of a `t2vu attack` folder."""

from __future__ import annotations

from pipelines.cli.commands.common import Writes


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write report.md, results.csv and PNG plots for a search run folder (and log them to its MLflow parent run)",
    )
    p.add_argument("run", help="the --output folder of a `t2vu tune` or `t2vu attack` run")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to the MLflow parent run")
    p.set_defaults(func=run, writes=Writes("report", dest="run", flag="RUN", adds_to=True))  # not while it runs


def run(args) -> int:
    from pathlib import Path

    from pipelines.search.report import write_report

    if (Path(args.run) / "attack_config.json").is_file():
        from pipelines.tracking.mlflow_attack import write_attack_report

        for p in write_attack_report(Path(args.run), log_to_mlflow=not args.no_mlflow):
            print(p)
        return 0
    paths = write_report(Path(args.run), log_to_mlflow=not args.no_mlflow)
    print(paths.report)
    for p in [paths.results_csv, *paths.plots]:
        print(p)
    return 0
