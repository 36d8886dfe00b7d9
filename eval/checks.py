"""The stage's verdict on its own numbers: degenerate videos past the allowed fraction fail the run.

Why a module of its own: the per-set counts come from eval.metrics (which leaves degenerate
videos out of the rates) and the rule comes from the config; the runner asks this module
once, after every output is written, so a failed run still leaves results.csv, summary.json
and report.md behind for the user to look at.

    summary.update(degenerate_verdict(cfg.checks, summary))
    raise_if_degenerate(summary)     # DegenerateVideosError (a ConfigError: exit 2 from the CLI)
"""

from __future__ import annotations

import math
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


# --- eraser energy -------------------------------------------------------------------------------
# `eraser_energy_<set>` (eval.metrics): the erasers' output energy over their input's, sum ||E(h)||^2 /
# sum ||h||^2 over the erased video's forwards. Measured on the toy model (20 DDIM steps, CFG 5, 12 rows a
# set): the shipped recipe's eraser 0.35 on red prompts, 0.09 on other colours (red gone, preserve PSNR 24 dB);
# its weights x1.5: 0.44 on other colours (non-target colour right in 75% of videos), x2: 1.26 (17%), x10: 396.
# Weights of |w| 5000 are far past all of these and still under the writer's 1e4 cap (unlearn.eraser).
ENERGY_PRESERVE_MAX = 0.25  # on prompts to keep, an eraser adding over a quarter of the hidden state's energy
ENERGY_FLOOR = 0.01  # below this on the preserve prompts the preserve-vs-target comparison is noise


def eraser_energy_verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """`eraser_energy_ok` and, when not, `eraser_energy_warning` (one line, for the notes and report.md):
    the eraser's output on the preserve prompts is far above what a trained eraser adds (ENERGY_PRESERVE_MAX),
    or above its output on the target prompts (it acts more where it must not than where it should)."""
    t, p = summary.get("eraser_energy_target"), summary.get("eraser_energy_preserve")
    if not isinstance(p, (int, float)):
        return {}
    why = []
    if not math.isfinite(p):
        why.append("its output on the preserve prompts is not finite")
    elif p > ENERGY_PRESERVE_MAX:
        why.append(f"on the preserve prompts its output carries {p:.3g}x the energy of the hidden states it is added "
                   f"to (a trained eraser stays below {ENERGY_PRESERVE_MAX:g})")
    if isinstance(t, (int, float)) and p > t and p > ENERGY_FLOOR:
        why.append(f"on the preserve prompts it adds more ({p:.3g}x) than on the target prompts ({t:.3g}x)")
    if not why:
        return {"eraser_energy_ok": True}
    return {"eraser_energy_ok": False, "eraser_energy_warning": (
        "eraser_energy flag: the eraser rewrites prompts it should leave alone: " + "; ".join(why) + ". Its "
        "weights are likely scaled up or diverged, and the preservation numbers describe a damaged model; "
        "retrain (lower train.lr or loss.eta, raise loss.w_preserve)")}


def energy_line(summary: dict[str, Any]) -> str | None:
    """One line for report.md's checks (None when no eraser was measured)."""
    t, p = summary.get("eraser_energy_target"), summary.get("eraser_energy_preserve")
    if not isinstance(p, (int, float)) and not isinstance(t, (int, float)):
        return None
    f = (lambda v: f"{v:.3g}" if isinstance(v, (int, float)) else "—")
    head = (f"eraser energy (its output over the hidden states', erased videos): target {f(t)}, preserve {f(p)}")
    if summary.get("eraser_energy_ok") is False:
        return f"**{head}: FLAGGED** (eraser_energy_ok false: the eraser_energy flag above)"
    return f"{head}: ok (preserve below {ENERGY_PRESERVE_MAX:g} and below target)"


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
