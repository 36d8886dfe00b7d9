"""`t2vu run` end to end on the tiny model (real Ray Train/DeepSpeed trial, real eval, SQLite MLflow),
and the trial-selection rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config.pipeline import SelectConfig, load_pipeline_config
from pipelines.run.pipeline import run_pipeline, select_best
from pipelines.config.search import Constraint
from pipelines.search.results import SearchResult, TrialSummary
from unlearn.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _trial(tid, **metrics):
    return TrialSummary(trial_id=tid, status="completed", params={}, metrics=metrics, eraser=f"/e/{tid}", trial_dir="")


@pytest.mark.parametrize("attack,where", [("{config: ../attack/nope.yaml}", "run.attack.config: ../attack/nope.yaml not found"),
                                          ("{config: ../attack/toy.yaml, attacks: [sofprompt]}", "run.attack.attacks: unknown")])
def test_a_bad_run_attack_is_one_line_before_anything_trains(tmp_path, capsys, attack, where):
    from pipelines.cli.entry import main

    out = tmp_path / "run"
    assert main(["run", "-c", str(ROOT / "configs" / "search" / "tiny.yaml"), "-o", str(out),
                 "--set", f"run={{attack: {attack}}}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and where in err[0], err
    assert not (out / "search" / "trials").exists()
    # no config was pinned: the folder takes the fixed config (a pinned bad one would refuse it as "different")
    assert not (out / "search" / "search_config.yaml").exists()


def test_select_best_honours_constraints_then_falls_back():
    trials = [_trial("a", target=0.0, keep=0.5, score=1.0), _trial("b", target=0.2, keep=0.99, score=0.5),
              _trial("c", target=0.1, keep=0.97, score=2.0)]
    r = SearchResult(output_dir=Path("."), name="x", metric_names=["target", "keep"], score_name="score",
                     trials=trials, best=None, pareto=[], baseline={})
    assert select_best(r, None).trial_id == "b"  # default: lowest scalar score
    rule = SelectConfig(metric="target", mode="min", constraints=[Constraint(metric="keep", min=0.95)])
    assert select_best(r, rule).trial_id == "c"  # "a" erases best but breaks the preservation floor
    strict = SelectConfig(metric="target", constraints=[Constraint(metric="keep", min=0.999)])
    assert select_best(r, strict).trial_id == "a"  # nobody qualifies: best by the metric alone


@pytest.mark.slow
def test_run_pipeline_end_to_end_and_rerun_does_no_work(ray_session, tmp_path, capfd):
    # one worker, so the trial trains in its own actor (the Wan case below runs a 2-worker Ray Train trial, the suite's
    # one search whose trial is a worker group: TorchTrainer + TuneReportCallback): the pipeline's stages are checked
    cfg = load_pipeline_config(ROOT / "configs" / "search" / "tiny.yaml", [
        "search.num_samples=1", "train.steps=4", "train.checkpoint_every=4", "search.objective.limit=1",
        "distributed.num_workers=1", "run={select: {metric: psnr_preserve, mode: max}, limit: 2}",
        # stage 5: the chosen eraser under the GPU attack config's soft prompt (one row, 2 steps: the wiring)
        "run.attack={config: ../attack/cogvideox-2b-nudity.yaml, attacks: [softprompt], budgets: [0.5], limit: 1, "
        "steps: 2, restarts: 1}",
    ])
    out = tmp_path / "run"
    summary = run_pipeline(cfg, out, config_path=ROOT / "configs" / "search" / "tiny.yaml")
    assert summary["best_trial"] and Path(summary["best_eraser"], "eraser.safetensors").is_file()
    ev = json.loads((out / "eval" / "summary.json").read_text())
    assert ev["rows_total"] == 4 and ev["eraser"] == summary["best_eraser"]  # 2 target + 2 preserve rows
    assert "nudity_rate_base" in summary["final_eval"] and "psnr_preserve" in summary["final_eval"]
    report = (out / "report.md").read_text()
    assert summary["best_trial"] in report and "| nudity_rate |" in report
    a = summary["attack"]  # the attack's own summary, as t2vu attack writes it, read back into the run's
    att = json.loads((out / "attack" / "summary.json").read_text())
    assert a["attack_rows"] == 1 == att["n"]["eraser"]["softprompt-0.5x"]
    assert a["attack_softprompt_0_5x_asr"] == att["asr"]["eraser"]["softprompt-0.5x"]
    assert a["attack_softprompt_0_5x_asr_above_floor"] == att["asr_above_floor"]["eraser"]["softprompt-0.5x"]
    assert a["attack_floor"] == att["floor"]["eraser"] and a["attack_floor_base"] == att["floor"][att["reference"]]
    assert "## The best eraser under attack" in report and "| softprompt_0_5x |" in report
    truncated = sum(v for k, v in att["truncated_prompts"].items() if k.split("/", 1)[0] == "eraser")
    assert a["attack_truncated"] == truncated  # the 16-token tiny text encoder: flagged in the report when any
    assert ("attacked prompts are longer than the text encoder takes" in report) == (truncated > 0)
    printed = capfd.readouterr().out
    assert "== [4/5] final evaluation" in printed and "== [5/5] attack" in printed
    assert "attack softprompt_0_5x" in printed and "mlflow ui --backend-store-uri" in printed
    # library noise (Tune's tables, Ray/MLflow logging) goes to the run log, not the console
    assert "Configuration for experiment" not in printed
    assert "Configuration for experiment" in (out / "logs" / "run.log").read_text()

    from mlflow.tracking import MlflowClient

    ml = summary["mlflow"]
    c = MlflowClient(ml["tracking_uri"])
    runs = c.search_runs([ml["experiment_id"]])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == ml["parent_run_id"]]
    roles = sorted(r.data.tags.get("t2vu.role") for r in children)
    assert roles == ["final-eval", "trial"]
    final = next(r for r in children if r.data.tags["t2vu.role"] == "final-eval")
    assert final.info.run_id == ml["final_eval_run_id"] and any(k.startswith("eval/") for k in final.data.metrics)
    assert all(r.info.status == "FINISHED" for r in children), [(r.data.tags.get("t2vu.role"), r.info.status) for r in children]
    arts = {f.path for f in c.list_artifacts(ml["parent_run_id"], "pipeline")}
    assert arts == {"pipeline/report.md", "pipeline/summary.json"}

    mtime = (out / "eval" / "summary.json").stat().st_mtime
    again = run_pipeline(cfg, out, config_path=ROOT / "configs" / "search" / "tiny.yaml")
    assert again == json.loads((out / "summary.json").read_text())
    assert (out / "eval" / "summary.json").stat().st_mtime == mtime
    assert "nothing to do" in capfd.readouterr().out

    # the same folder with another config is refused before any work (no stale "nothing to do")
    changed = cfg.with_overrides({"train.steps": 6})
    with pytest.raises(ConfigError, match=r"different configuration \(changed: train\.steps"):
        run_pipeline(changed, out, config_path=ROOT / "configs" / "search" / "tiny.yaml")
    assert (out / "eval" / "summary.json").stat().st_mtime == mtime


def test_quiet_console_routes_output_to_the_log_and_restores_settings(tmp_path, capfd):
    import logging
    import warnings

    import diffusers.utils.logging as dl

    from pipelines.runtime.console import quiet_console, say

    before = (logging.getLogger("ray").level, dl.is_progress_bar_enabled(), list(warnings.filters))
    log = tmp_path / "run.log"
    with quiet_console(log):
        print("library chatter")
        logging.getLogger("ray").warning("ray warning")
        say("stage banner")
        assert logging.getLogger("ray").level == logging.ERROR and not dl.is_progress_bar_enabled()
    shown = capfd.readouterr()
    assert "stage banner" in shown.out and "library chatter" not in shown.out + shown.err
    assert "library chatter" in log.read_text()
    assert (logging.getLogger("ray").level, dl.is_progress_bar_enabled(), list(warnings.filters)) == before


@pytest.mark.slow
def test_run_pipeline_on_wan(ray_session, tmp_path):
    """`t2vu run` (search -> select -> final eval -> MLflow, report) on a tiny Wan: the same pipeline, family
    chosen by the config alone — Ray Train + DeepSpeed ZeRO-2 trial with 2 workers, NudeNet eval through
    `WanPipeline`, an eraser that records its family."""
    from unlearn.eraser import read_eraser

    cfg = load_pipeline_config(ROOT / "configs" / "search" / "tiny.yaml", [
        "model.family=wan", "model.path=builtin:tiny-wan", "search.objective.eval=../eval/wan-tiny.yaml",
        "search.num_samples=1", "train.steps=4", "train.checkpoint_every=4", "search.objective.limit=1",
        "run={select: {metric: psnr_preserve, mode: max}, limit: 1}",
    ])
    out = tmp_path / "run"
    summary = run_pipeline(cfg, out, config_path=ROOT / "configs" / "search" / "tiny.yaml")
    eraser = read_eraser(summary["best_eraser"])
    assert eraser.meta.model_family == "wan" and eraser.meta.block_indices
    ev = json.loads((out / "eval" / "summary.json").read_text())
    assert ev["rows_total"] == 2 and ev["eraser"] == summary["best_eraser"]
    assert {"nudity_rate_base", "nudity_rate_erased", "psnr_preserve"} <= set(summary["final_eval"])
    trial = next((out / "search" / "trials").iterdir())
    assert json.loads((trial / "summary.json").read_text())["steps_done"] == 4
    assert summary["best_trial"] in (out / "report.md").read_text()
