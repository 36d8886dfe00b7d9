"""`t2vu train --config C [--output DIR] [--distributed] [--set key=value ...]`."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.commands.common import add_common, output_dir


def load_config_with_overrides(path: str, overrides: list[str], loader):
    from unlearn.config import apply_overrides, read_yaml

    return loader(apply_overrides(read_yaml(path), overrides), path)


def register(sub) -> None:
    p = sub.add_parser("train", help="train an eraser (one process, or Ray Train + DeepSpeed with --distributed)")
    add_common(p)
    p.add_argument("--distributed", action="store_true", help="run under Ray Train + DeepSpeed (pipelines.distributed)")
    p.add_argument("--no-resume", action="store_true", help="start from step 0 even if a checkpoint exists")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.distributed:
        return _run_distributed(args)
    from unlearn.config import MethodConfig, validate
    from unlearn.trainer import train

    cfg = load_config_with_overrides(
        args.config, args.overrides, lambda d, src: validate(MethodConfig, _method_part(d), src)
    )
    from pipelines.memory_check import preflight
    from pipelines.run_folder import pin_config

    if (rc := preflight(cfg, mode="train", config_dir=Path(args.config).parent)) is not None:
        return rc  # will not fit on this GPU (t2vu plan); nothing loaded or written
    out = output_dir(args, "train")
    # A folder made with another config is refused before anything is written or loaded (as run/tune do):
    # otherwise a finished folder would report its old summary and keep its old eraser.
    pin_config(out / "config.yaml", cfg.model_dump(mode="json"), out)
    summary = train(cfg, out, config_dir=Path(args.config).parent, resume=not args.no_resume)
    print(json.dumps({"output": str(out), **summary}, indent=2))
    return 0


def _run_distributed(args) -> int:
    import sys

    from pipelines.config import load_pipeline_config
    from pipelines.distributed import run_distributed

    from pipelines.memory_check import preflight

    cfg = load_pipeline_config(args.config, args.overrides)
    if (rc := preflight(cfg.method(), cfg, mode="distributed", config_dir=Path(args.config).parent)) is not None:
        return rc
    out = output_dir(args, "train")
    d = cfg.distributed
    print(f"Training {cfg.train.steps} steps on {d.num_workers} {'GPU' if d.use_gpu else 'CPU'} worker(s), "
          f"DeepSpeed ZeRO-{d.zero_stage} -> {out} (worker logs: t2vu -v train ...)", file=sys.stderr, flush=True)
    summary = run_distributed(cfg, out, config_dir=Path(args.config).parent, resume=not args.no_resume)
    print(json.dumps({"output": str(out), **summary}, indent=2))
    return 0


def _method_part(data: dict) -> dict:
    """A full pipeline config may carry more sections; training reads the method ones."""
    keys = ("model", "eraser", "concept", "loss", "train")
    return {k: v for k, v in data.items() if k in keys}
