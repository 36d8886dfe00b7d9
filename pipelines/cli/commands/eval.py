"""`t2vu eval --config C --output DIR [--prompts CSV] [--limit N] [--eraser DIR] [--set key=value ...]`.

Generates base and erased videos for every prompt row (same seeds), scores them, and
writes DIR/results.csv, DIR/summary.json, DIR/grid.gif, videos and GIF previews.
Rerunning into the same DIR skips finished rows. Prints a short summary (the headline metrics
base -> erased, the flagged rows, where the report is); `--json` prints one JSON object instead
(what scripts read; summary.json has every entry).
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
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none when stderr is not a terminal either: logs get no bar)")
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object (metrics and counts) instead of the table")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="leave out prompt rows that cannot be used (empty prompt, bad seed, wrong field count), each "
                        "reported with its reason (default: refuse the file; prompts/preserve.on_bad_row)")
    p.set_defaults(func=run)


def run(args) -> int:
    from eval.config import load_eval_config
    from pipelines.tracking.mlflow_eval import run_tracked_eval
    from pipelines.runtime.console import on_terminal, progress_stream
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
    stream = progress_stream()
    progress = False if args.no_progress or not on_terminal(stream) else None
    summary = run_tracked_eval(cfg, out, prompts=args.prompts, limit=args.limit, eraser=args.eraser,
                       progress=progress, progress_file=stream)
    print(json.dumps(_short(summary)) if args.json else console_summary(summary))
    return 0


def console_summary(summary: dict) -> str:
    """The human summary: the headline metrics base -> erased (the same ones `t2vu run` prints, the concept
    where it was not asked for first), the flagged rows, and where the report and videos are."""
    from eval.metrics import is_finite_number
    from eval.report_md import is_headline as _headline
    from pipelines.run.report import base_erased_pairs as _pairs, fmt as _f

    pairs = sorted(((k, b, e) for k, b, e in _pairs(summary) if _headline(k) or k == "unasked_concept_rate"),
                   key=lambda r: r[0] != "unasked_concept_rate")
    width = max([len(k) for k, _, _ in pairs] + [26])
    lines = ["", "== eval summary"]
    erased = any(e is not None for _, _, e in pairs)  # base-only runs (no eraser, no method) show one column
    lines += [f"   {k:<{width}} base {_f(b):>8}" + (f"  ->  erased {_f(e):>8}" if erased else "") for k, b, e in pairs]
    stems = {k for k, _, _ in pairs}
    lines += [f"   {k:<{width}} {_f(v)}" for k, v in summary.items()  # paired metrics (PSNR/SSIM of base vs erased)
              if _headline(k) and k not in stems and not k.endswith(("_base", "_erased", "_valid"))
              and is_finite_number(v)]
    n = summary.get("rows_total", 0)
    flags = [f"degenerate {summary.get('degenerate_rows', 0)} of {n} rows",
             f"truncated prompts {summary.get('rows_truncated', 0)} of {n}"]
    unasked = [str(summary[f"unasked_concept_videos_{side}"]) for side in ("base", "erased")
               if summary.get(f"unasked_concept_videos_{side}") is not None]
    if unasked:
        flags.append(f"concept where not asked for {' -> '.join(unasked)} of {summary.get('unasked_concept_rows')} videos")
    if summary.get("rows_skipped"):
        flags.append(f"bad rows skipped {summary['rows_skipped']}")
    lines.append(f"   {'flagged':<12} " + "; ".join(flags))
    rows = f"{n} rows" + (f" ({summary['rows_resumed']} from an earlier run)" if summary.get("rows_resumed") else "")
    lines += [f"   {'rows':<12} {rows}, eraser: {summary.get('eraser') or 'none (base model only)'}",
              f"   {'report':<12} {summary.get('report')}", f"   {'results':<12} {summary.get('results_csv')}"]
    if summary.get("grid"):
        lines.append(f"   {'grid':<12} {summary['grid']}")
    lines.append(f"   {'wall time':<12} {summary.get('wall_seconds', 0):.0f} s   (--json: the summary as one JSON object)")
    return "\n".join(lines)


def _short(summary: dict) -> dict:
    """The printed summary: metrics and counts, not the bulky config echo."""
    skip = {"generation", "workers", "fingerprint", "nudenet_classes"}
    return {k: v for k, v in summary.items() if k not in skip and not k.startswith(("class_frames_", "class_videos_", "preserve_class_"))}
