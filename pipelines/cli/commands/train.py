"""`t2vu train --config C [--output DIR] [--distributed] [--set key=value ...]`.

Prints the training summary as JSON (floats to 4 significant digits; DIR/summary.json has them in full). A
rerun of a finished DIR does nothing and says so: its wall time is the earlier run's.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.cli.commands.common import add_common, output_dir


def register(sub) -> None:
    p = sub.add_parser("train", help="train an eraser (one process, or Ray Train + DeepSpeed with --distributed)")
    add_common(p, command="train")
    p.add_argument("--distributed", action="store_true", help="run under Ray Train + DeepSpeed (pipelines.train.driver)")
    p.add_argument("--no-resume", action="store_true", help="start from step 0 even if a checkpoint exists")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.distributed:
        return _run_distributed(args)
    from pipelines.config.pipeline import load_pipeline_config
    import sys

    from pipelines.plan.preflight import preflight
    from pipelines.runtime.console import on_terminal
    from pipelines.runtime.run_folder import check_pinned
    from pipelines.train.bank import soft_prompt_attack  # the `bank:` rounds' attack (unlearn may not import eval)
    from unlearn.trainer import train

    # The whole file is validated (a misspelt section is an error, not ignored); training reads its method part.
    cfg = load_pipeline_config(args.config, args.overrides).method()

    if (rc := preflight(cfg, mode="train", config_dir=Path(args.config).parent)) is not None:
        return rc  # will not fit on this GPU (t2vu plan); nothing loaded or written
    out = output_dir(args, "train")
    # A folder made with another config is refused before anything is written or loaded (as run/tune do):
    # otherwise a finished folder would report its old summary and keep its old eraser. The trainer writes
    # config.yaml itself once the model, prompts and geometry have loaded, so bad input leaves no folder behind.
    check_pinned(out / "config.yaml", cfg.model_dump(mode="json"), out)
    earlier = finished(out, resume=not args.no_resume)
    # the step bar (tqdm, on stderr) only on a terminal: in a log every redraw would be a line
    summary = train(cfg, out, config_dir=Path(args.config).parent, resume=not args.no_resume,
                    progress=on_terminal(sys.stderr), bank_attack=soft_prompt_attack)
    show(out, summary, earlier)
    return 0


def _run_distributed(args) -> int:
    import sys

    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.train.driver import run_distributed

    from pipelines.plan.preflight import preflight

    cfg = load_pipeline_config(args.config, args.overrides)
    if (rc := preflight(cfg.method(), cfg, mode="distributed", config_dir=Path(args.config).parent)) is not None:
        return rc
    out = output_dir(args, "train")
    d = cfg.distributed
    print(f"Training {cfg.train.steps} steps on {d.num_workers} {'GPU' if d.use_gpu else 'CPU'} worker(s), "
          f"DeepSpeed ZeRO-{d.zero_stage} -> {out} (worker logs: t2vu -v train ...)", file=sys.stderr, flush=True)
    earlier = finished(out, resume=not args.no_resume)
    summary = run_distributed(cfg, out, config_dir=Path(args.config).parent, resume=not args.no_resume)
    show(out, summary, earlier)
    return 0


def finished(out: Path, *, resume: bool) -> bool:
    """The trainers' own test for a finished run (unlearn.trainer.train, pipelines.train.driver): they then
    return the saved summary without training."""
    return resume and (out / "summary.json").is_file() and (out / "eraser" / "eraser_config.json").is_file()


def show(out: Path, summary: dict, earlier: bool) -> None:
    import sys

    from pipelines.runtime.console import rounded

    if earlier:  # the summary is the earlier run's: its wall time is not this command's
        print(f"finished earlier (wall time {summary.get('wall_s', 0):.0f} s): nothing to redo in {out} "
              "(--no-resume trains again from step 0)", file=sys.stderr)
    print(json.dumps({"output": str(out), **rounded(summary), **({"finished_earlier": True} if earlier else {})},
                     indent=2))

