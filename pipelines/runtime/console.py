"""Keep the console readable: stage banners and progress on the terminal, library noise in a log.

Ray, DeepSpeed, Tune, MLflow and PyTorch write warnings, tables and worker output straight
to file descriptors 1 and 2 (some from C++ and from child processes), which Python-level
logging settings cannot silence. `quiet_console(log)` points fd 1/2 at a log file for the
duration and keeps a private handle on the real terminal; `terminal()` is where banners
, progress bars (`progress_stream()`) and summaries go; everything else — Python
logging of Ray/MLflow/Optuna, warnings, C++ logs, child processes — lands in the log.
With --verbose nothing is redirected.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

_TERMINAL = None


def terminal():
    """The stream user-facing output should use (the real terminal while redirected)."""
    return _TERMINAL or sys.stdout


def progress_stream():
    """Where progress bars should draw: the terminal while redirected, else stderr (tqdm's default)."""
    return _TERMINAL or sys.stderr


def display(v) -> str:
    """A value as the console shows it: floats to 3 significant digits (`loss.eta=4.29`, not
    4.2928810235639485); summary.json and the other files keep full precision."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def rounded(obj, digits: int = 4):
    """`obj` (JSON-like) with every float to `digits` significant digits: the JSON a command prints for a
    person to read; the same numbers at full precision are in the files it names."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def on_terminal(stream) -> bool:
    """Whether a progress bar should draw on `stream`: it redraws in place on a terminal, while in a log or a
    pipe each redraw would be a line of its own."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def say(msg: str) -> None:
    """A line for the person at the terminal (stdout unless redirected): banners, summaries."""
    t = terminal()
    t.write(msg + "\n")
    t.flush()


def progress(msg: str) -> None:
    """A progress line (a search's trials, stages): on the terminal even while library output is redirected,
    and on stderr otherwise, so a command's stdout stays its result."""
    print(msg, file=progress_stream(), flush=True)


class StageConsole:
    """A multi-stage command's banners (`== [n/N] title - note  (t+Ns)`) and indented notes; quiet: none."""

    def __init__(self, quiet: bool = False, total: int = 0):
        self.quiet = quiet
        self.total = total  # N of the banners, where the command knows it only once its config is read
        self.t0 = time.time()

    def stage(self, n: int, title: str, note: str = "") -> None:
        if not self.quiet:
            say(f"\n== [{n}/{self.total}] {title} {('- ' + note) if note else ''}  (t+{time.time() - self.t0:.0f}s)")

    def say(self, msg: str) -> None:
        if not self.quiet:
            say(f"   {msg}")


@contextlib.contextmanager
def quiet_console(log_path: str | Path, enabled: bool = True):
    global _TERMINAL
    if not enabled or _TERMINAL is not None:
        yield None
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    term = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        _TERMINAL = term
        # sys.stdout/sys.stderr need not be fds 1/2 (pytest capture, notebooks, IDEs replace them):
        # point the Python-level streams at the log too, or Tune's tables would still reach them.
        old_streams = sys.stdout, sys.stderr
        sys.stdout = open(os.dup(log.fileno()), "w", buffering=1)
        sys.stderr = open(os.dup(log.fileno()), "w", buffering=1)
        try:
            with _quiet_libraries():
                yield log_path
        finally:
            sys.stdout.close()
            sys.stderr.close()
            sys.stdout, sys.stderr = old_streams
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            _TERMINAL = None
            term.close()


_NOISY_LOGGERS = ("optuna", "ray", "mlflow", "deepspeed", "diffusers", "transformers", "alembic", "urllib3")


@contextlib.contextmanager
def _quiet_libraries():
    """Warnings off, library loggers at ERROR, HF progress bars off — and all of it restored
    afterwards, so an in-process caller (a notebook, a test) gets its settings back."""
    import importlib
    import logging
    import warnings

    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    bars = []
    for mod in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            hf = importlib.import_module(mod)
        except ImportError:  # pragma: no cover - both are dependencies
            continue
        bars.append((hf, hf.is_progress_bar_enabled()))
        hf.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _NOISY_LOGGERS:  # also the HF libraries' root loggers (their set_verbosity)
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            for hf, enabled in bars:
                if enabled:
                    hf.enable_progress_bar()
