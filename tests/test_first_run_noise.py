"""What a first run prints besides its results: no DeepSpeed accelerator warning on a machine without a GPU,
floats rounded for reading (files keep them whole), and a rerun of finished work that says it finished earlier
instead of passing the old wall time off as this run's."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.runtime.console import display, rounded
from pipelines.runtime.env import accelerator_env

ROOT = Path(__file__).resolve().parent.parent


def test_accelerator_is_cpu_only_without_device_nodes(tmp_path):
    assert accelerator_env((str(tmp_path / "nvidia*"),)) == ({"DS_ACCELERATOR": "cpu"}
                                                              if sys.platform.startswith("linux") else {})
    (tmp_path / "nvidia0").touch()
    assert accelerator_env((str(tmp_path / "nvidia*"),)) == {}


@pytest.mark.skipif(not accelerator_env(), reason="this machine has an accelerator: DeepSpeed detects it")
def test_no_deepspeed_accelerator_warning_and_the_detected_value_stays_here():
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    code = ("import pipelines, deepspeed; from pipelines.runtime.env import runtime_env_vars; "
            "print('forwarded', runtime_env_vars().get('DS_ACCELERATOR'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Setting accelerator to CPU" not in r.stdout + r.stderr
    # detected on this machine, so never sent to Ray workers elsewhere (a GPU-less head would put GPUs on the CPU)
    assert r.stdout.strip().splitlines()[-1] == "forwarded None"


def test_floats_are_rounded_for_display_only():
    assert display(4.2928810235639485) == "4.29" and display(0.0010519726230559959) == "0.00105" and display(8) == "8"
    assert rounded({"a": [0.009111499413847923, 3], "b": {"c": 23.667}, "d": "x"}) == {
        "a": [0.009111, 3], "b": {"c": 23.67}, "d": "x"}


def test_run_summary_of_a_finished_run_says_finished_earlier():
    from pipelines.run.report import print_summary

    summary = {"best_trial": "57ed5ecf", "best_params": {"loss.eta": 4.2928810235639485}, "output": "/r",
               "search_report": "/r/search/report.md", "eval_dir": "/r/eval", "wall_s": 294.2, "final_eval": {}}
    now, again = io.StringIO(), io.StringIO()
    print_summary(summary, out=now)
    print_summary(summary, out=again, earlier=True)
    assert "wall time    294 s" in now.getvalue() and "loss.eta=4.29\n" in now.getvalue()
    assert "finished earlier (wall time 294 s)" in again.getvalue() and "wall time    294" not in again.getvalue()


def test_train_rerun_says_finished_earlier_and_prints_rounded_floats(tmp_path, capsys):
    from pipelines.cli.entry import main

    argv = ["train", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(tmp_path / "t"), "--set", "train.steps=2"]
    assert main(argv) == 0
    first = capsys.readouterr()
    printed = json.loads(first.out)
    assert "finished earlier" not in first.err and "finished_earlier" not in printed
    assert "step/s" not in first.err and "train:" not in first.err  # stderr is no terminal here: no step bar
    full = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert any(len(repr(v)) > 12 for v in full["final"].values())  # the file keeps full precision
    assert all(len(f"{v:g}".lstrip("-0.").replace(".", "").split("e")[0]) <= 4 for v in printed["final"].values())

    assert main(argv) == 0
    again = capsys.readouterr()
    assert f"finished earlier (wall time {full['wall_s']:.0f} s): nothing to redo" in again.err
    assert json.loads(again.out)["finished_earlier"] is True


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_start_up_lines_only_with_verbose(monkeypatch, verbose):
    """ray.init sets its driver logger's level itself ("Started a local Ray instance", the token notice):
    ensure_ray asks for ERROR unless `t2vu -v` put the root logger at INFO."""
    import logging

    import ray

    from pipelines.runtime import ray_session

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    root, before = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.INFO if verbose else logging.WARNING)  # setLevel: isEnabledFor caches per level
    try:
        assert ray_session.ensure_ray(num_cpus=1) is True
    finally:
        root.setLevel(before)
    assert seen["logging_level"] == (logging.INFO if verbose else logging.ERROR)
    assert seen["log_to_driver"] is verbose


def test_progress_bars_draw_on_terminals_only(tmp_path):
    from pipelines.runtime.console import on_terminal

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    closed = open(tmp_path / "log", "w")
    closed.close()
    assert on_terminal(Terminal()) and not on_terminal(io.StringIO()) and not on_terminal(closed)
    assert not on_terminal(object())


def test_tune_prints_rounded_metrics(tmp_path, capsys, monkeypatch):
    """`t2vu tune`'s JSON is for reading too: the best trial's metrics to 4 significant digits (the search's
    files keep them whole)."""
    from types import SimpleNamespace

    import pipelines.search.tune as search_tune
    from pipelines.cli.entry import main

    best = SimpleNamespace(trial_id="57ed5ecf", metrics={"target_rate_erased": 0.041666666666666664, "score": -1.4375})
    fake = SimpleNamespace(output_dir=tmp_path / "s", trials=[best], best=best, metric_names=["target_rate_erased"],
                           score_name="score", best_eraser=None, baseline={"target_rate_base": 0.9583333333333334},
                           report=None, tracking_uri=None)
    monkeypatch.setattr(search_tune, "run_search", lambda *a, **k: fake)
    assert main(["tune", "-c", str(ROOT / "configs" / "toy.yaml"), "-o", str(tmp_path / "s"),
                 "--set", "mlflow.enabled=false"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best_metrics"] == {"target_rate_erased": 0.04167, "score": -1.438}
    assert out["baseline"] == {"target_rate_base": 0.9583}
