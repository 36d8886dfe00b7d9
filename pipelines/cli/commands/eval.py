"""`t2vu eval --config C --output DIR [--prompts CSV] [--limit N] [--eraser DIR] [--set key=value ...]`.

Generates base and erased videos for every prompt row (same seeds), scores them, and
writes DIR/results.csv, DIR/summary.json, DIR/grid.gif, videos and GIF previews.
Rerunning into the same DIR skips finished rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.cli.commands.common import add_common, output_dir
from pipelines.runtime.ray_session import start_eval_ray


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model (and eraser): videos from a prompt CSV, NudeNet/toy scores, preservation metrics",
    )
    add_common(p, command="eval")
    p.add_argument("--prompts", default=None, metavar="CSV", help="prompt CSV to evaluate (replaces prompts.path; the config's preserve set is added only with preserve.with_cli_prompts: true)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N rows of each prompt set")
    p.add_argument("--eraser", default=None, metavar="DIR", help="eraser directory (overrides eraser)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="leave out prompt rows that cannot be used (empty prompt, bad seed, wrong field count), each "
                        "reported with its reason (default: refuse the file; prompts/preserve.on_bad_row)")
    p.set_defaults(func=run)


def run(args) -> int:
    from eval.config import load_eval_config
    from pipelines.tracking.mlflow_eval import run_eval
    from pipelines.runtime.console import progress_stream
    from pipelines.runtime.run_folder import check_tracking_store
    from unlearn.config import ConfigError

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.prompts is not None and not Path(args.prompts).is_file():
        raise ConfigError(f"--prompts: file not found: {args.prompts}")
    cfg = load_eval_config(args.config, args.overrides)
    if args.skip_bad_rows:
        cfg = cfg.with_overrides({"prompts.on_bad_row": "skip", "preserve.on_bad_row": "skip"}, "--skip-bad-rows")
    out = output_dir(args, "eval")
    check_tracking_store(cfg.mlflow.tracking_uri, out)
    if cfg.runtime.num_actors:
        start_eval_ray(cfg.runtime)
    summary = run_eval(cfg, out, prompts=args.prompts, limit=args.limit, eraser=args.eraser,
                       progress=False if args.no_progress else None, progress_file=progress_stream())
    print(json.dumps(_short(summary), indent=2))
    return 0


def _short(summary: dict) -> dict:
    """The printed summary: metrics and counts, not the bulky config echo."""
    skip = {"generation", "workers", "fingerprint", "nudenet_classes"}
    return {k: v for k, v in summary.items() if k not in skip and not k.startswith(("class_frames_", "class_videos_", "preserve_class_"))}
