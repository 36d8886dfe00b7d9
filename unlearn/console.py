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
from pathlib import Path

_TERMINAL = None


def terminal():
    """The stream user-facing output should use (the real terminal while redirected)."""
    return _TERMINAL or sys.stdout


def progress_stream():
    """Where progress bars should draw: the terminal while redirected, else stderr (tqdm's default)."""
    return _TERMINAL or sys.stderr


def say(msg: str) -> None:
    t = terminal()
    t.write(msg + "\n")
    t.flush()


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
        _quiet_libraries()
        try:
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


def _quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("optuna", "ray", "mlflow", "deepspeed", "diffusers", "transformers", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import diffusers.utils.logging as dl

        dl.disable_progress_bar()
        dl.set_verbosity_error()
    except Exception:  # pragma: no cover - optional
        pass
    try:
        import transformers.utils.logging as tl

        tl.disable_progress_bar()
        tl.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass
