"""Argparse helpers every `t2vu` command shares: the --config / --output / --set trio and
the default output folder (`runs/<command>-<config stem>-<time>`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_common(p: argparse.ArgumentParser, default_config: str | None = None) -> None:
    p.add_argument("--config", "-c", required=default_config is None, default=default_config, help="YAML config")
    p.add_argument("--output", "-o", default=None, help="output folder (default: a new folder under runs/)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=10 (YAML-parsed value)",
    )


def default_output(kind: str, config: str) -> Path:
    return Path("runs") / f"{kind}-{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def output_dir(args: argparse.Namespace, kind: str) -> Path:
    """`--output`, else a new folder for this command and config under runs/ (refused if it is a file)."""
    from unlearn.config import ConfigError

    out = Path(args.output) if args.output else default_output(kind, args.config)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise ConfigError(f"--output {out}: {p} is a file, not a folder; pass a folder path (new or existing)")
    return out
