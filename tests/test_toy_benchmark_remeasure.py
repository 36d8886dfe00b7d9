"""Re-measure: the committed small toy benchmark is what the code measures today.

`benchmarks/results/toy_benchmark_small.json` was written by `t2vu toy benchmark ... --results-file`
on the shipped recipe at a reduced size (its `argv`: few videos per set, fewer steps, a smaller
trajectory pool). This test runs exactly that command again (only `--output` and `--results-file`
point into tmp) and compares the figures, so a change that moves them - in the recipe, the trainer,
the sampler, the eval or the detector - fails here instead of silently outdating the docs. When the
change is intended: rerun the command in the file's `command`, then `python benchmarks/render_results.py`.

Tolerance: every rate is a count over the set (k / n), compared exactly, as are the targets met and
the steps. The continuous figures (PSNR, SSIM, the final training losses) are compared to 1e-6
relative: at one torch thread two runs on one machine are bit-identical (checked when the file was
written), but another CPU or BLAS build may sum in another order and move the last bits; a real change
moves them by far more.
"""

from __future__ import annotations

import math

import pytest

from pipelines.cli.entry import main
from pipelines.runtime.results_file import RESULTS_DIR, read_results

FLOAT_KEYS = ("psnr_nontarget", "ssim_nontarget", "final_losses")
REL_TOL = 1e-6


def _retarget(argv: list[str], **paths: str) -> list[str]:
    """argv with the values of --output / --results-file replaced (both must be there)."""
    out, flags = list(argv), {"output": "--output", "results_file": "--results-file"}
    for key, path in paths.items():
        i = out.index(flags[key])
        out[i + 1] = path
    return out


def _differences(committed, measured, where: str = "figures") -> list[str]:
    if isinstance(committed, dict) and isinstance(measured, dict):
        if committed.keys() != measured.keys():
            return [f"{where}: keys {sorted(committed)} != {sorted(measured)}"]
        return [d for k in committed for d in _differences(committed[k], measured[k], f"{where}.{k}")]
    if isinstance(committed, list) and isinstance(measured, list) and len(committed) == len(measured):
        return [d for i, (a, b) in enumerate(zip(committed, measured)) for d in _differences(a, b, f"{where}[{i}]")]
    if (any(k in where for k in FLOAT_KEYS) and isinstance(committed, float) and isinstance(measured, float)
            and math.isclose(committed, measured, rel_tol=REL_TOL)):
        return []
    return [] if committed == measured else [f"{where}: committed {committed!r}, measured now {measured!r}"]


@pytest.mark.slow  # ~1 min on one core: the full tier (CI) runs it
def test_the_committed_small_toy_benchmark_is_what_the_code_measures_today(tmp_path):
    committed = read_results(RESULTS_DIR / "toy_benchmark_small.json")
    argv = committed["argv"]
    assert argv[:3] == ["t2vu", "toy", "benchmark"] and "--variants" in argv
    out = tmp_path / "small.json"
    assert main(_retarget(argv[1:], output=str(tmp_path / "bench"), results_file=str(out))) == 0
    measured = read_results(out)
    assert measured["command"] != committed["command"]  # the paths moved, nothing else
    assert _retarget(measured["argv"], output="X", results_file="Y") == _retarget(argv, output="X", results_file="Y")
    problems = _differences(committed["figures"], measured["figures"])
    assert not problems, ("the small toy benchmark moved; if intended, rerun `" + committed["command"] +
                          "` and `python benchmarks/render_results.py`:\n" + "\n".join(problems))
    # the erasure is really exercised at this size (a run where nothing happens would pin nothing)
    d = measured["figures"]["default"]
    assert d["target_rate_base"] == 1.0 and d["target_rate_erased"] < 0.5, d


def test_the_comparison_tolerates_only_float_noise():
    a = {"default": {"target_rate_erased": 0.125, "psnr_nontarget": 24.0, "final_losses": {"loss": 1.0}}}
    b = {"default": {"target_rate_erased": 0.125, "psnr_nontarget": 24.0 * (1 + 1e-9), "final_losses": {"loss": 1.0}}}
    assert _differences(a, b) == []
    c = {"default": {"target_rate_erased": 0.25, "psnr_nontarget": 24.1, "final_losses": {"loss": 1.0}}}
    assert len(_differences(a, c)) == 2
