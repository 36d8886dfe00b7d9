"""`t2vu run --config C [--output DIR]`: embeddings -> search -> select -> final eval -> report."""

from __future__ import annotations

from pipelines.cli.commands.common import add_common, start_search

DEFAULT_CONFIG = "configs/toy.yaml"


def register(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline: search, pick the best eraser, evaluate it, report")
    add_common(p, default_config=DEFAULT_CONFIG, command="run")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipelines.run.pipeline import run_pipeline

    cfg, out = start_search(args, "run", store="search")  # the search stage's store
    if cfg is None:
        return out  # the preflight's exit code
    run_pipeline(cfg, out, config_path=args.config, verbose=args.verbose)
    return 0
