"""Results files: `benchmarks/results/<name>.json`, each written by the command that measured it.

Every number the docs state about a benchmark is rendered from one of these files
(`python benchmarks/render_results.py`), and `tests/test_results_docs.py` fails when a rendered
table and its file disagree. One JSON object per file:

    format      1
    name        the file's stem ("toy_benchmark")
    command     the command line that measured and wrote it, shell-quoted ("t2vu toy benchmark ...")
    argv        the same as a list (what a re-measuring test runs again)
    git_sha     HEAD of the checkout that ran it ("unknown" outside a git checkout)
    git_dirty   true when tracked or untracked (not ignored) files differed from HEAD
    date        when it was written, UTC, ISO 8601 to the second ("2026-12-06T20:31:05Z")
    machine     {"cpu_count", "torch", "torch_threads", "python", "platform"}
    figures     the measured numbers (JSON; NaN is written as null)
    settings    optional: the effective settings the figures depend on
    timings     optional: wall times (not figures: they vary from run to run)

Written atomically (`unlearn.fsutil`), so a killed run leaves the previous file in place.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from unlearn.fsutil import atomic_write_text, json_default

FORMAT = 1
REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "benchmarks" / "results"
REQUIRED = ("command", "git_sha", "date", "machine", "figures")  # what every results file has (the rest: ours)


def git_state(repo: str | Path = REPO) -> tuple[str, bool]:
    """(HEAD sha, dirty) of the checkout at `repo`; ("unknown", False) without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def machine() -> dict[str, Any]:
    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch": None, "torch_threads": None,
                           "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return out


def default_argv() -> list[str]:
    """This process's command line as a user types it: `t2vu ...`, `python benchmarks/x.py ...`."""
    prog = Path(sys.argv[0])
    if prog.name in ("t2vu", "t2vu.exe"):
        head = ["t2vu"]
    else:
        try:
            head = ["python", str(prog.resolve().relative_to(REPO))]
        except ValueError:
            head = ["python", str(prog)]
    return head + sys.argv[1:]


def _clean(o: Any) -> Any:
    """NaN/inf -> None (strict JSON), tuples -> lists, recursively."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def make_record(name: str, figures: dict, *, argv: list[str] | None = None, settings: dict | None = None,
                timings: dict | None = None) -> dict:
    argv = [str(a) for a in (argv if argv is not None else default_argv())]
    sha, dirty = git_state()
    rec = {
        "format": FORMAT, "name": name, "command": shlex.join(argv), "argv": argv,
        "git_sha": sha, "git_dirty": dirty,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(), "figures": figures,
    }
    if settings is not None:
        rec["settings"] = settings
    if timings is not None:
        rec["timings"] = timings
    return json.loads(json.dumps(_clean(rec), default=json_default))


def write_results(path: str | Path, figures: dict, *, argv: list[str] | None = None, settings: dict | None = None,
                  timings: dict | None = None) -> dict:
    """Write the results file `path` (its stem is the name) atomically; returns the record."""
    path = Path(path)
    if path.suffix != ".json":
        from unlearn.errors import ConfigError  # a ValueError, as before: one line from the CLI, not a traceback

        raise ConfigError(f"--results-file {path}: must end in .json (benchmarks/results/<name>.json)")
    rec = make_record(path.stem, figures, argv=argv, settings=settings, timings=timings)
    atomic_write_text(path, json.dumps(rec, indent=2, allow_nan=False) + "\n")
    return rec


def read_results(path: str | Path) -> dict:
    """A results file, checked for the fields every file has."""
    path = Path(path)
    rec = json.loads(path.read_text())
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise ValueError(f"results file {path}: missing {', '.join(missing)}")
    return rec
