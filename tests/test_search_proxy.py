"""Proxy evaluations run only where a scheduler reads them (issue 22): ASHA prunes on them; multi-objective
Optuna (the shipped GPU search) and random run FIFO, which never acts on intermediate results, so their
trials skip proxies (no T5 + VAE reload on rank 0 while the other ranks wait) and the banner says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config.pipeline import PipelineConfig, load_pipeline_config

ROOT = Path(__file__).resolve().parent.parent
SEARCH_2B = ROOT / "configs" / "search" / "cogvideox-2b-nudity-gpu.yaml"


def test_shipped_gpu_search_runs_no_proxy_evals():
    from pipelines.plan.memory_check import make_request, plan_request
    from pipelines.search.objective import objective_payload

    cfg = load_pipeline_config(SEARCH_2B)
    assert cfg.search.objective.proxy.every == 100 and cfg.search.is_multi_objective()  # configured, but unread
    payload = objective_payload(cfg, SEARCH_2B.parent)
    assert payload.proxy_every is None  # the training worker schedules no proxy eval
    note = cfg.search.proxy_skip_note()
    assert note.startswith("proxy evals skipped: search.objective.proxy.every=100") and "multi-objective Optuna" in note
    plan, _ = plan_request(make_request(cfg.method(), cfg, config_dir=SEARCH_2B.parent, gpu_memory_gb=80))
    assert "proxy eval weights" not in plan.summary()["terms"] and "final eval weights" in plan.summary()["terms"]

    asha = cfg.with_overrides({"search.algorithm": "asha"})  # the scheduler that reads them: proxies stay
    assert objective_payload(asha, SEARCH_2B.parent).proxy_every == 100 and asha.search.proxy_skip_note() is None
    plan, _ = plan_request(make_request(asha.method(), asha, config_dir=SEARCH_2B.parent, gpu_memory_gb=80))
    assert "proxy eval weights" in plan.summary()["terms"]


@pytest.mark.parametrize("algorithm,multi,every", [("optuna", True, None), ("optuna", False, None),
                                                    ("random", True, None), ("asha", True, 7)])
def test_proxy_every_follows_the_scheduler(algorithm, multi, every):
    cfg = load_pipeline_config(SEARCH_2B).with_overrides(
        {"search.algorithm": algorithm, "search.multi_objective": multi, "search.objective.proxy.every": 7})
    assert cfg.search.proxy_every() == every
    assert (cfg.search.proxy_skip_note() is None) == (every is not None)
    # ASHA without proxy.every evaluates at its rungs (grace period); nothing configured: no note
    bare = cfg.with_overrides({"search.objective.proxy.every": None})
    assert bare.search.proxy_every() == (bare.search.asha.grace_period if algorithm == "asha" else None)
    assert bare.search.proxy_skip_note() is None


def _tiny_search(tmp_path: Path, name: str, algorithm: str) -> PipelineConfig:
    """configs/search/tiny.yaml shrunk to one trial of one worker, 4 steps, a proxy eval configured every 2."""
    from unlearn.config import read_yaml

    data = read_yaml(ROOT / "configs" / "search" / "tiny.yaml")
    data["train"].update({"steps": 4, "checkpoint_every": 4, "log_every": 2, "batch_size": 1, "preserve_batch_size": 1})
    data["distributed"].update({"num_workers": 1})
    data["search"].update({"name": name, "algorithm": algorithm, "num_samples": 1, "asha": {"grace_period": 2}})
    data["search"]["objective"].update({"eval": str(ROOT / "configs" / "eval" / "tiny.yaml"), "limit": 1,
                                        "proxy": {"every": 2, "limit": 1}})
    data["mlflow"] = {"enabled": False}
    return PipelineConfig.model_validate(data)


def _reported(out: Path, name: str) -> list[dict]:
    """Every result the trial reported to Tune (Ray's own record of the trial)."""
    rows = [json.loads(line) for p in (out / "ray" / name).glob("*/result.json") for line in p.read_text().splitlines()
            if line.strip()]
    assert rows, f"no Tune results under {out / 'ray' / name}"
    return rows


# The multi-objective Optuna half (proxies configured, none run, the banner says so) is asserted on the search
# tests/test_tune.py runs anyway (test_optuna_search_logs_parent_and_child_runs_and_writes_a_report): one search less.
@pytest.mark.slow
def test_an_asha_search_runs_its_proxies_on_the_pool_while_training_goes_on(ray_session, tmp_path, capsys):
    """ASHA reads proxies, so they run; with a search eval pool they run there as a Ray task while the trial trains
    on (pipelines.search.proxy_pool): the step-2 proxy ran on the pool's actor (the final eval's process, one
    pipeline load) and was reported at the next checkpoint, step 4, as of step 2 (ASHA's time attribute). The
    in-worker path (no pool) runs in the GPU smoke rehearsal (tests/test_gpu_smoke_script.py: its search stage)."""
    from pipelines.search.eval_pool import pool_name
    from pipelines.search.tune import run_search

    name = "proxy-asha"
    cfg = _tiny_search(tmp_path, name, "asha").with_overrides(
        {"search.objective.eval_overrides": {"runtime.num_actors": 1, "output.save_videos": False}})
    out = tmp_path / "search"
    result = run_search(cfg, out, config_path=ROOT / "configs" / "search" / "tiny.yaml", write_report=False)
    assert [t.status for t in result.trials] == ["completed"]
    trial = Path(result.trials[0].trial_dir)
    err = capsys.readouterr().err
    assert f"eval pool {pool_name(out)}: 1 actor(s)" in err and "proxy evals skipped" not in err
    proxies = sorted(trial.glob("proxy/step_*/objective.json"))
    assert [p.parent.name for p in proxies] == ["step_000002"]
    assert json.loads(proxies[0].read_text())["final"] is False
    assert (trial / "proxy" / "step_000002" / "eraser").is_dir()  # copied out of the checkpoint folder
    workers = [w for p in (trial / "proxy" / "step_000002", trial / "eval")
               for w in json.loads((p / "summary.json").read_text())["workers"]]
    assert len({w["pid"] for w in workers}) == 1 and [w["pipeline_loads"] for w in workers] == [1, 1]
    reported = [r for r in _reported(out, name) if r.get("eval_kind") == "proxy"]
    assert [(r["proxy_step"], r["train_step"]) for r in reported] == [(2, 4)]  # judged at 2, reported at 4
    assert (trial / "eval" / "objective.json").exists()  # the final eval always runs
