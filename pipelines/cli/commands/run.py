"""`t2vu run --config C [--output DIR]`: embeddings -> search -> select -> final eval -> report."""

from __future__ import annotations

from pipelines.cli.commands.common import add_common, output_dir

DEFAULT_CONFIG = "configs/toy.yaml"


def register(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline: search, pick the best eraser, evaluate it, report")
    add_common(p, default_config=DEFAULT_CONFIG, command="run")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.plan.preflight import preflight
    from pipelines.run.pipeline import run_pipeline
    from pipelines.runtime.run_folder import check_tracking_store

    cfg = load_pipeline_config(args.config, args.overrides)
    if (rc := preflight(cfg.method(), cfg, mode="tune", config_dir=Path(args.config).parent)) is not None:
        return rc
    out = output_dir(args, "run")
    if cfg.mlflow.enabled:
        check_tracking_store(cfg.mlflow.resolve_uri(out / "search"), out)  # the search stage's store
    run_pipeline(cfg, out, config_path=args.config, verbose=args.verbose)
    return 0
