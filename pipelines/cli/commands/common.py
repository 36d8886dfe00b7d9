"""Argparse helpers every `t2vu` command shares: the --config / --output / --set trio, the default
output folder (`runs/<command>-<config stem>-<time>`), and the folder a command writes (`Writes`), which
`pipelines.cli.entry` holds for the command's whole run (`claim_output`)."""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Writes:
    """The folder a command writes: `claim_output` locks it and checks it is this command's (run_folder.claim).

    dest: the argparse attribute naming it; flag: how messages name it; tool_outputs: it holds a tool's
    product (a model, an eraser) whose --overwrite replaces only the tool's own files (replace_outputs);
    adds_to: it is another command's run the command adds files to (`t2vu report`): only its lock is taken.
    """
    command: str
    dest: str = "output"
    flag: str = "--output"
    tool_outputs: bool = False
    adds_to: bool = False


def add_common(p: argparse.ArgumentParser, default_config: str | None = None, *, command: str) -> None:
    p.add_argument("--config", "-c", required=default_config is None, default=default_config, help="YAML config")
    p.add_argument("--output", "-o", default=None, help="output folder (default: a new folder under runs/)")
    add_set(p)
    p.set_defaults(writes=Writes(command))


def add_set(p: argparse.ArgumentParser, help: str = "override a config value, e.g. --set train.steps=10 "
            "(YAML-parsed value)") -> None:
    """The one `--set KEY=VALUE` flag (repeatable): unlearn.config.apply_overrides reads what it collects."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


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


def claim_output(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Hold the folder the command declares (`Writes`) for its whole run; nothing for commands that write none.

    Taken by the CLI process only: Ray Train / Tune workers and the stages a command runs in its own folder
    write under it without claiming anything.
    """
    spec: Writes | None = getattr(args, "writes", None)
    if spec is None:
        return contextlib.nullcontext()
    from pipelines.runtime.run_folder import claim, join

    if spec.adds_to:
        return join(getattr(args, spec.dest), spec.command, argv=getattr(args, "argv", None))
    if spec.dest == "output" and getattr(args, "output", None) is None:
        args.output = str(default_output(spec.command, args.config))  # the folder output_dir() then returns
    return claim(getattr(args, spec.dest), spec.command, argv=getattr(args, "argv", None), flag=spec.flag,
                 tool_outputs=spec.tool_outputs)


def start_search(args: argparse.Namespace, kind: str, store: str = ""):
    """The shared start of `t2vu tune` and `t2vu run`: the pipeline config, the memory preflight (mode tune),
    the output folder, and a check that its MLflow store (under `out/store`) lies in no other run's folder.
    Returns (cfg, out), or (None, rc) when the preflight stops the run with exit code rc."""
    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.plan.preflight import preflight
    from pipelines.runtime.run_folder import check_tracking_store
    from unlearn.config import ConfigError

    cfg = load_pipeline_config(args.config, args.overrides)
    if cfg.search is None:  # before the output folder exists (t2vu run wrote its log there first)
        raise ConfigError(f"the config has no `search` section; t2vu {kind} needs one (see configs/toy.yaml)")
    if (rc := preflight(cfg.method(), cfg, mode="tune", config_dir=Path(args.config).parent)) is not None:
        return None, rc
    out = output_dir(args, kind)
    if cfg.mlflow.enabled:
        check_tracking_store(cfg.mlflow.resolve_uri(out / store if store else out), out)
    return cfg, out
