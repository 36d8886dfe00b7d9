"""`t2vu` — the single command-line entry point.

Each subcommand lives in `pipelines/cli/commands/<name>.py` and exposes
`register(subparsers)`, which adds its parser and sets `func`. Keeping
commands in separate modules keeps `t2vu --help` fast (heavy imports happen
inside each command's function) and lets commands evolve independently.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import pipelines.runtime.env as env
from pipelines.cli.commands.common import claim_output
from pipelines.cli.commands import eval as eval_cmd
from pipelines.cli.commands import attack, config, import_eraser, make_tiny_model, plan, report, run, submit, toy, train, tune

COMMANDS = [make_tiny_model, train, toy, eval_cmd, tune, report, run, submit, plan, import_eraser, attack, config]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2vu",
        description="Erase concepts from text-to-video diffusion models (CogVideoX and Wan) with eraser adapters.",
    )
    add_global_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    helps = {a.dest: a.help for a in sub._choices_actions}  # the one-liners `t2vu --help` lists
    for name, subparser in sub.choices.items():
        if subparser.description is None:  # `t2vu CMD --help` opens with the same line, not with nothing
            subparser.description = helps.get(name)
        # Also after the command (`t2vu run --verbose`, which `bash scripts/run.sh --verbose` passes on);
        # SUPPRESS: a subcommand that is not given the flag leaves the top-level value alone.
        add_global_flags(subparser, default=argparse.SUPPRESS)
    return parser


def add_global_flags(parser: argparse.ArgumentParser, default=False) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", default=default, help="show library/Ray logs")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the Python traceback of an error (also: T2VU_DEBUG=1)")


def main(argv: list[str] | None = None) -> int:
    env.apply_offline_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = ["t2vu", *(sys.argv[1:] if argv is None else argv)]  # as typed: results files record it
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("diffusers", "transformers", "ray", "deepspeed", "mlflow", "urllib3", "alembic"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    debug = args.debug or os.environ.get("T2VU_DEBUG", "") not in ("", "0")
    try:
        with claim_output(args):  # the folder the command writes: one writer, and only the command that made it
            rc = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"interrupted: finished steps, rows and trials are kept in place; rerun the same command to resume "
              f"({args.command})", file=sys.stderr)
        return 130
    except expected_errors() as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}  (--debug shows the traceback)", file=sys.stderr)
        return 2
    except Exception as exc:
        # Rust-backed writers (tokenizers, safetensors) report a full disk as a bare Exception "... (os error 28)"
        if debug or not disk_full(exc):
            raise
        print(f"error: {one_line(exc)}  (--debug shows the traceback)", file=sys.stderr)
        return 2
    return int(rc or 0)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can fix from the message alone: one line, exit 2, no traceback.

    Anything else is a bug and keeps its traceback.
    """
    from eval.checks import DegenerateVideosError
    from pipelines.train.checkpoints import CheckpointIntegrityError
    from unlearn.config import ConfigError
    from unlearn.eraser import BrokenEraserError, EraserFileError, EraserMismatchError
    from unlearn.masks import ConceptNotInPromptError
    from unlearn.step import NonFiniteLossError

    from safetensors import SafetensorError  # a weights file that could not be written (disk full) or read

    return (ConfigError, OSError, EraserFileError, EraserMismatchError, BrokenEraserError, ConceptNotInPromptError,
            NonFiniteLossError, CheckpointIntegrityError, DegenerateVideosError, OverflowError, SafetensorError)


def disk_full(exc: BaseException) -> bool:
    """A write refused for lack of space (ENOSPC) or over the file-size limit (EFBIG), from Python or from Rust."""
    seen = 0
    while exc is not None and seen < 10:  # also when a wrapper (an eval row's failure) carries it as its cause
        if getattr(exc, "errno", None) in (27, 28) or any(f"(os error {n})" in str(exc) for n in (27, 28)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def one_line(exc: BaseException) -> str:
    from unlearn.config import ConfigError

    if isinstance(exc, ConfigError):
        return str(exc)  # already written for the user (a validation report may list several keys)
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in msg:
        msg = f"{msg}: {exc.filename}"
    if disk_full(exc):
        # a write stopped part-way: the command removes what it had begun; the fix is space, not the input
        msg += "; free disk space (or raise the file-size limit, ulimit -f) or write to another --output, and rerun"
    return msg if not isinstance(exc, (OSError, OverflowError)) and not disk_full(exc) else f"{type(exc).__name__}: {msg}"


if __name__ == "__main__":
    sys.exit(main())
