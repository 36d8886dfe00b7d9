"""The stage's verdict on its own numbers: degenerate videos past the allowed fraction fail the run.

Why a module of its own: the per-set counts come from eval.metrics (which leaves degenerate
videos out of the rates) and the rule comes from the config; the runner asks this module
once, after every output is written, so a failed run still leaves results.csv, summary.json
and report.md behind for the user to look at.

    summary.update(degenerate_verdict(cfg.checks, summary))
    raise_if_degenerate(summary)     # DegenerateVideosError (a ConfigError: exit 2 from the CLI)
"""

from __future__ import annotations

from typing import Any

from unlearn.config import ConfigError


class DegenerateVideosError(ConfigError):
    """More degenerate videos than `checks.max_degenerate_fraction` allows; `.summary` holds the run's summary."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def degenerate_counts(summary: dict[str, Any]) -> tuple[int, int]:
    """(base, erased) degenerate videos over both prompt sets."""
    base = sum(int(summary.get(f"{p}degenerate_base", 0) or 0) for p in ("", "preserve_"))
    erased = sum(int(summary.get(f"{p}degenerate_erased", 0) or 0) for p in ("", "preserve_"))
    return base, erased


def degenerate_verdict(checks, summary: dict[str, Any]) -> dict[str, Any]:
    """Summary entries: the allowed fraction, the video counts, and whether the run is within it."""
    base, erased = degenerate_counts(summary)
    fraction = float(summary.get("degenerate_fraction", 0.0))
    return {
        "degenerate_videos_base": base,
        "degenerate_videos_erased": erased,
        "max_degenerate_fraction": checks.max_degenerate_fraction,
        "degenerate_ok": fraction <= checks.max_degenerate_fraction,
    }


def degenerate_line(summary: dict[str, Any]) -> str:
    """One line for the console and report.md."""
    rows, total = int(summary.get("degenerate_rows", 0)), int(summary.get("rows_total", 0))
    base, erased = degenerate_counts(summary)
    if not rows:
        return f"degenerate videos: none (0 of {total} rows)"
    return (f"degenerate videos: {rows} of {total} rows ({base} base, {erased} erased: non-finite values, flat "
            "or collapsed frames), left out of the rates; the rates they touch are marked not valid")


def raise_if_degenerate(summary: dict[str, Any]) -> None:
    if summary.get("degenerate_ok", True):
        return
    rows, total = int(summary.get("degenerate_rows", 0)), int(summary.get("rows_total", 0))
    base, erased = degenerate_counts(summary)
    raise DegenerateVideosError(
        f"{rows} of {total} rows have a degenerate video ({base} base, {erased} erased: non-finite values, flat or "
        f"collapsed frames), more than checks.max_degenerate_fraction {summary.get('max_degenerate_fraction')}; "
        f"such videos are left out of the rates, which are not valid. Outputs kept in {summary.get('output_dir')} "
        "(report.md, results.csv degenerate_* columns). An eraser with absurd weights (e.g. a huge learning rate) "
        "does this; raise checks.max_degenerate_fraction only to accept a few such rows",
        summary,
    )
