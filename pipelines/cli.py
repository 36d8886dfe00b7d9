"""`t2vu` — the single command-line entry point.

Each subcommand lives in `pipelines/commands/<name>.py` and exposes
`register(subparsers)`, which adds its parser and sets `func`. Keeping
commands in separate modules keeps `t2vu --help` fast (heavy imports happen
inside each command's function) and lets commands evolve independently.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pipelines.env as env
from pipelines.commands import eval as eval_cmd
from pipelines.commands import make_tiny_model, plan, report, run, submit, toy, train, tune

COMMANDS = [make_tiny_model, train, toy, eval_cmd, tune, report, run, submit, plan]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2vu",
        description="Erase concepts from text-to-video diffusion models (CogVideoX) with eraser adapters.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show library/Ray logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    env.apply_offline_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("diffusers", "transformers", "ray", "deepspeed", "mlflow", "urllib3", "alembic"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    from unlearn.config import ConfigError

    try:
        rc = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
