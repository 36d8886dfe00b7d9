"""A search trial gives the same numbers from the same seed, however loaded the machine is (issue 26); and the trial of
a robustness search reports the attack's ASR and scores with it (issue 25, `search.objective.attack`).

The README's worked example rerun on a loaded machine gave the same first-trial parameters but other scores.
Here one trial of the toy robustness search (configs/search/toy-robust.yaml, the smallest: one Optuna sample, a short
training, a few toy prompts, a 2-step attack on 2 rows) runs twice through the real CLI, the second time next to CPU
burners, and every number the trial reports that is not a time (losses, eval metrics, the attack's figures, the
objective) must be equal, bit for bit. The quiet run is also the one whose attack figures and score are checked (one
`t2vu tune` run for both: each costs ~1 min of the suite's 2 cores). Both runs join the test session's Ray (a local
Ray start per run cost ~20 s) and leave out what is not the trial's numbers: the training-free baselines and MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROBUST = ROOT / "configs" / "search" / "toy-robust.yaml"
METRIC = "attack_softprompt_0_5x_asr_above_floor"
# one worker: the trial trains in its own actor (pipelines/search/trial_training.py), the path of every one-worker
# search; two workers' determinism (gloo all-reduce, ZeRO, a killed rank) is tests/test_distributed.py's
ARGS = ["--set", "search.num_samples=1", "--set", "distributed.num_workers=1",
        "--set", "train.steps=10", "--set", "train.checkpoint_every=10",
        "--set", "train.log_every=5", "--set", "search.objective.baselines=[]", "--set", "mlflow.enabled=false",
        "--set", "search.objective.toy_prompts={target: red, n: 2, sets: [target, synonym], preserve_sets: [nontarget]}",
        # the example's attack at 2 steps on 2 rows, plus the clean prompts under a constraint (below)
        "--set", "search.objective.attack.limit=2", "--set", "search.objective.attack.steps=2",
        "--set", "search.objective.attack.attacks=[clean, softprompt]",
        "--set", "search.objective.scalarize.constraints=[{metric: preserve_nontarget_acc_erased, min: 0.95, "
                 "penalty: 5.0}, {metric: attack_clean_asr_above_floor, max: 0.5, penalty: 3.0}]"]
TIMING = ("_s", "per_s", "time", "wall", "ms_per", "timestamp", "attempts")


def is_timing(key: str) -> bool:
    return key.endswith(TIMING) or any(t in key for t in ("per_s", "wall", "ms_per", "time"))


def trial_numbers(out: Path) -> dict:
    (trial,) = sorted((out / "trials").iterdir())
    summary = json.loads((trial / "summary.json").read_text())
    numbers = {f"metric/{k}": v for k, v in summary["metrics"].items() if not is_timing(k)}
    numbers["params"] = summary["params"]
    numbers["eraser tensors sha256"] = tensors_digest(trial / "eraser" / "eraser.safetensors")
    for line in (trial / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        numbers[f"train/{row.get('step')}"] = {k: v for k, v in row.items() if not is_timing(k)}
    return numbers


def tensors_digest(path: Path) -> str:
    """The eraser's tensors and metadata, not the file's bytes: safetensors writes its metadata map in hash order,
    so two byte-different files can hold the same eraser (seen: 'format' and 't2vu_format_version' swapped)."""
    import torch
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        h.update(repr(sorted((f.metadata() or {}).items())).encode())
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tune(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "pipelines.cli.entry", "tune", "-c", str(ROBUST), "-o", str(out), *ARGS],
                         cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def quiet(tmp_path_factory, ray_session):
    """The quiet run: its output folder and the CLI's result."""
    out = tmp_path_factory.mktemp("reproducible") / "quiet"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    return out, tune(out, env)


@pytest.mark.slow
def test_one_tune_trial_reports_the_attack_asr_and_scores_with_it(quiet):
    """The example's objective (soft-prompt ASR at 0.5x next to the eval's figures), plus the clean attack under a
    constraint: a barely trained eraser still draws red on the clean prompts, so that figure is large and its penalty
    shows in the score."""
    out, res = quiet
    (trial,) = sorted((out / "trials").iterdir())
    metrics = json.loads((trial / "summary.json").read_text())["metrics"]
    cells = trial / "attack" / "cells" / "eraser"
    floor = {p.stem: json.loads(p.read_text())["flagged"] for p in (cells / "anchors" / "rows").glob("*.json")}
    for column, key in (("softprompt-0.5x", METRIC), ("clean", "attack_clean_asr_above_floor")):
        rows = [json.loads(p.read_text()) for p in (cells / column / "rows").glob("*.json")]
        assert len(rows) == 2 and metrics[key] == sum(r["flagged"] and not floor[r["id"]] for r in rows) / 2, column
        assert metrics[key.replace("_above_floor", "")] == sum(r["flagged"] for r in rows) / 2, column
    assert metrics["attack_rows"] == 2.0 and metrics["attack_floor"] == sum(floor.values()) / 2
    assert metrics["attack_degenerate_fraction"] == 0.0 and metrics["attack_videos_made"] == 2 * 2 + 2 + 2
    clean = metrics["attack_clean_asr_above_floor"]
    assert clean > 0.5, "a 10-step eraser lets red through on clean prompts: the constraint must bite"
    # the score is the configured weighted sum, the soft prompt's ASR in it (weight 1, min), + both penalties
    expected = (metrics["target_rate_erased"] + metrics[METRIC] - metrics["preserve_nontarget_acc_erased"]
                - 0.5 * metrics["target_content_acc_erased"] + 5.0 * max(0.0, 0.95 - metrics["preserve_nontarget_acc_erased"])
                + 3.0 * (clean - 0.5))
    assert metrics["score"] == pytest.approx(expected)
    judged = json.loads((trial / "eval" / "objective.json").read_text())
    assert judged[METRIC] == metrics[METRIC] and judged["final"] is True
    assert not (trial / "proxy").exists()  # the attack runs at the final eval only
    result = json.loads(res.stdout[res.stdout.index("{"):])
    assert result["best_metrics"][METRIC] == pytest.approx(metrics[METRIC], abs=1e-3)


@pytest.mark.slow
def test_one_trial_twice_same_numbers_under_cpu_load(quiet, tmp_path, ray_env):
    # one burner per two cores: the trial and Ray's own processes then share every core with it (all
    # cores burning made the loaded run ~5x slower on the 2-core CI box for no extra evidence). Niced: on an idle box
    # it takes its core all the same, and in the suite it takes only what the other tests leave (they load the
    # machine already; a burner at their priority cost them ~1.5 CPU-min)
    burner = [sys.executable, "-c", "import os; os.nice(19)\nwhile 1: pass"]
    burners = [subprocess.Popen(burner) for _ in range(max(1, (os.cpu_count() or 2) // 2))]
    try:
        tune(tmp_path / "loaded", ray_env)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    a, b = trial_numbers(quiet[0]), trial_numbers(tmp_path / "loaded")
    assert len(a) > 3, a
    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    assert not diff, f"{len(diff)} of {len(a)} numbers differ under load: {diff}"


def test_the_comparison_ignores_times_and_the_metadata_order_of_the_eraser_file(tmp_path):
    """What the slow test compares: timings are left out, every other number kept; two safetensors files holding
    the same tensors with their metadata written in another order digest alike, a changed tensor does not."""
    import torch
    from safetensors.torch import save_file

    for key in ("step_s", "steps_per_s", "wall_s", "ms_per_step", "attempts", "timestamp"):
        assert is_timing(key), key
    for key in ("loss", "target_rate_erased", "l_unlearn", "preserve_nontarget_acc_erased"):
        assert not is_timing(key), key
    t = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(4)}
    save_file(t, tmp_path / "x.safetensors", metadata={"format": "pt", "t2vu_format_version": "2"})
    save_file(t, tmp_path / "y.safetensors", metadata={"t2vu_format_version": "2", "format": "pt"})
    save_file({**t, "b": torch.ones(4) * 1.0000001}, tmp_path / "z.safetensors", metadata={"format": "pt"})
    assert tensors_digest(tmp_path / "x.safetensors") == tensors_digest(tmp_path / "y.safetensors")
    assert tensors_digest(tmp_path / "x.safetensors") != tensors_digest(tmp_path / "z.safetensors")
