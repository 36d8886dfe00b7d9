"""A search's evals share one pool of eval actors and never load a text encoder (issue 22).

The search driver fills the text-embedding cache with every eval prompt (and the baselines' own texts) before the
trials (eval.text_cache), so the trials' final evals and the negprompt/blocklist baselines generate from cached
embeddings; their Ray eval actors are one named pool for the whole search (pipelines.search.eval_pool), each loading
the pipeline once, kept for `t2vu run`'s best-trial eval, released when the run ends, also when it fails.
Real Ray (the session's), real Tune trials, the tiny model, CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config.pipeline import PipelineConfig

ROOT = Path(__file__).resolve().parent.parent


def _cfg(**search) -> PipelineConfig:
    from unlearn.config import read_yaml

    data = read_yaml(ROOT / "configs" / "search" / "tiny.yaml")
    data["train"].update({"steps": 2, "checkpoint_every": 2, "log_every": 1, "batch_size": 1, "preserve_batch_size": 1})
    data["distributed"].update({"num_workers": 1})
    data["search"].update({"name": "pool", "num_samples": 2, "max_failures": 0, **search})
    data["search"]["objective"].update({"eval": str(ROOT / "configs" / "eval" / "tiny.yaml"), "limit": 1,
                                        "eval_overrides": {"runtime.num_actors": 1, "output.save_videos": False,
                                                           "generation.num_inference_steps": 2}})
    data["mlflow"] = {"enabled": False}
    return PipelineConfig.model_validate(data)


def test_the_pool_is_off_where_its_actors_would_keep_trials_waiting():
    """The shipped GPU search (8 GPUs, 2 trials x 4 workers) has no GPU to spare for 4 pooled actors: pooling would
    hold the GPUs the next trial waits for; with 4 more GPUs, or one trial at a time, it pools."""
    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.search.eval_pool import pool_name, pool_off_reason
    from pipelines.search.objective import objective_payload, trial_final_eval_config

    cfg = load_pipeline_config(ROOT / "configs" / "search" / "cogvideox-2b-nudity-gpu.yaml", [])
    runtime = trial_final_eval_config(objective_payload(cfg, ROOT / "configs" / "search")).runtime
    assert (runtime.num_actors, runtime.use_gpu) == (4, True)
    why = pool_off_reason(cfg, runtime, {"CPU": 128.0, "GPU": 8.0})
    assert why is not None and "GPU 4" in why and "search.max_concurrent_trials" in why
    assert pool_off_reason(cfg, runtime, {"CPU": 128.0, "GPU": 12.0}) is None
    one = cfg.with_overrides({"search.max_concurrent_trials": 1})
    assert pool_off_reason(one, runtime, {"CPU": 128.0, "GPU": 8.0}) is None
    assert pool_off_reason(cfg, runtime.model_copy(update={"num_actors": 0}), {"GPU": 64.0}) is not None
    assert pool_name("/runs/a") == pool_name("/runs/a/.") != pool_name("/runs/b")


@pytest.mark.slow  # ~1 s of work, but the first diffusers/transformers import of a run: 20-60 s on the shared box
def test_the_fill_encodes_each_eval_prompt_once(tmp_path, monkeypatch):
    """Every prompt of the search's evals (and the negative prompt) lands where the eval workers look; a second
    fill loads no text encoder."""
    from eval.planning import plan_eval
    from eval.text_cache import fill_eval_text_cache
    from eval.workers import text_cache_root
    from pipelines.search.eval_pool import search_evals
    from pipelines.search.objective import objective_payload

    from unlearn.models.registry import resolve_model_path

    model = resolve_model_path("builtin:tiny")  # the session's tiny model, then an empty cache for the embeddings
    monkeypatch.setenv("T2VU_CACHE", str(tmp_path / "cache"))
    cfg = _cfg().with_overrides({"model.path": str(model)})
    evals = search_evals(cfg, objective_payload(cfg, ROOT / "configs" / "search", tmp_path / "out"))
    first = fill_eval_text_cache(evals)
    assert first["encoder_loads"] == 1 and first["encoded"] == first["prompts"] == 3  # 1 + 1 rows, ""
    assert fill_eval_text_cache(evals) == {**first, "encoded": 0, "encoder_loads": 0}
    ecfg, limit = evals[0]
    plan = plan_eval(ecfg, tmp_path / "x", limit=limit)
    assert text_cache_root(str(plan.model_path), "float32", ecfg.generation.model_dump(mode="json"),
                           [r.prompt for r in plan.rows]) == str(tmp_path / "cache" / "embeddings")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_shares_one_pool_loads_no_text_encoder_and_leaves_no_actor_even_when_it_fails(ray_session, tmp_path,
                                                                                           capsys):
    """`t2vu run`: both trials' final evals, the negprompt and blocklist baselines and the best trial's eval all run on
    the search's one pooled actor (one process, one pipeline load), none with a text encoder (every prompt, negative
    prompt and replacement came from the cache), and the pool is gone after the run failed at its last step."""
    from eval.backends import POOL_NAMESPACE
    from pipelines.run.pipeline import run_pipeline
    from pipelines.search.eval_pool import pool_name

    same = {"runtime.num_actors": 1, "output.save_videos": False, "generation.num_inference_steps": 2}
    cfg = _cfg().with_overrides({"search.objective.baselines": ["negprompt", "blocklist"],
                                 "run": {"eval_overrides": same, "limit": 1}})
    out = tmp_path / "run"
    (out / "report.md").mkdir(parents=True)  # the run's report cannot be written: it fails after its final eval
    with pytest.raises(Exception, match="report.md"):
        run_pipeline(cfg, out, config_path=ROOT / "configs" / "search" / "tiny.yaml", quiet=True, verbose=True)

    assert f"eval pool {pool_name(out / 'search')}: 1 actor(s)" in capsys.readouterr().err  # the search driver's
    summaries = [*sorted(out.glob("search/trials/*/eval/summary.json")), *sorted(out.glob("search/baselines/*/summary.json")),
                 out / "eval" / "summary.json"]
    evals = [json.loads(p.read_text()) for p in summaries]
    assert len(evals) == 5 and [e["method"]["name"] for e in evals[2:]] == ["blocklist", "negprompt", "eraser"]
    workers = [w for e in evals for w in e["workers"]]
    # every eval ran on the pool's one actor: one process, its pipeline loaded once for all five
    assert len({w["pid"] for w in workers}) == 1 and [w["pipeline_loads"] for w in workers] == [1] * 5
    assert [w["text_encoder"] for w in workers] == [False] * 5  # prompts and the methods' texts from the cache: no T5
    alive = [a["name"] for a in ray_session.util.list_named_actors(all_namespaces=True)
             if a.get("namespace") == POOL_NAMESPACE and a["name"].startswith(pool_name(out / "search"))]
    assert alive == []  # released although the run failed
