"""Eval workers generate from cached prompt embeddings where the cache has them, a method's own texts included
(issue 22): the pipeline then loads no text encoder (T5-XXL: ~9 GB read and held per worker at real size) and the
videos are the ones the text encoder's own encoding gives. Tiny model, in-process worker, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.config import EvalConfig

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "prompts"


def cfg(model: Path, eraser: Path | None, limit: int = 1) -> EvalConfig:
    return EvalConfig.model_validate({
        "model": {"path": str(model), "dtype": "float32", "device": "cpu"},
        "eraser": str(eraser) if eraser else None, "method": {"name": "eraser" if eraser else "negprompt"},
        "prompts": {"path": str(EXAMPLES / "nudity_example.csv"), "limit": limit},
        "preserve": {"path": str(EXAMPLES / "preserve_example.csv"), "limit": 1},
        "generation": {"num_inference_steps": 2, "num_frames": 9, "height": 32, "width": 32, "scheduler": "ddim",
                       "vae_tiling": False, "vae_slicing": False},
        "classifier": {"name": "nudenet", "nudenet": {"frames": 1, "threshold": 0.5}},
        "output": {"grid_rows": 0, "save_gifs": False},
        "runtime": {"scorer": "thread", "progress": False, "use_gpu": False, "num_actors": 0},
    })


def rows(out: Path) -> dict:
    got = {}
    for p in sorted((out / "rows").glob("*.json")):
        r = json.loads(p.read_text())
        energy = (r.get("method") or {}).get("eraser_energy")
        got[p.stem] = ([r.get("psnr"), r.get("ssim"), energy], json.dumps(r.get("records"), sort_keys=True))
    return got


@pytest.mark.slow
def test_cached_embeddings_replace_the_text_encoder_and_give_the_same_videos(tmp_path, monkeypatch):
    """negprompt: the base video encodes the prompt and the empty negative prompt, the method's video the prompt and
    the concept words as its negative prompt; from the cache, every one of them is what the text encoder makes."""
    from eval.planning import plan_eval
    from eval.runner import run_eval
    from eval.workers import open_text_cache
    from tests.test_eval_pool import eraser
    from unlearn.models.registry import resolve_model_path

    model = resolve_model_path("builtin:tiny")
    monkeypatch.setenv("T2VU_CACHE", str(tmp_path / "cache"))  # an empty default cache: nothing cached yet
    plain = run_eval(cfg(model, None), tmp_path / "plain")
    assert [w["text_encoder"] for w in plain["workers"]] == [True]

    c = cfg(model, None)
    plan = plan_eval(c, tmp_path / "x")
    texts = [*(r.prompt for r in plan.rows), *plan.method.texts(), ""]
    assert plan.method.texts() == ["naked body"]  # the concept words: the method's negative prompt
    cache = open_text_cache(str(model), "float32", c.generation.model_dump(mode="json"), str(tmp_path / "cache" / "embeddings"))
    assert cache.fill(texts) == len(texts)
    cached = run_eval(c, tmp_path / "cached")
    assert [w["text_encoder"] for w in cached["workers"]] == [False]  # T5 never loaded
    a, b = rows(tmp_path / "plain"), rows(tmp_path / "cached")
    assert a.keys() == b.keys() and len(a) == 2
    measured = 0
    for k in a:  # the same videos: the paired metrics and the classifier's records
        for x, y in zip(a[k][0], b[k][0]):
            assert (x is None) == (y is None) and (x is None or y == pytest.approx(x, rel=1e-5)), (k, a[k], b[k])
            measured += x is not None
        assert b[k][1] == a[k][1]
    assert measured >= 2

    more = run_eval(cfg(model, eraser(tmp_path, 0), limit=2), tmp_path / "more")  # a prompt the cache lacks: T5 loads
    assert [w["text_encoder"] for w in more["workers"]] == [True]


def test_only_safree_loads_the_text_encoder_where_the_cache_holds_every_text():
    """The base model, an eraser, negprompt and the blocklist encode only whole texts (prompts, a negative prompt, a
    replacement), which the cache holds; SAFREE encodes token-edited prompts itself, so it keeps the encoder (its
    pipeline's own text side still comes from the cache). Without a cache every method loads it."""
    from eval.methods import MethodPlan
    from eval.scoring import ScorerSpec
    from eval.workers import TEXT_FREE_METHODS, WorkerSpec, loads_text_encoder, pool_key

    def spec(method, cache="/cache"):
        return WorkerSpec(model_path="/m", dtype="float32", device="cpu", use_gpu=False, eraser=None,
                          generation={}, scorer=ScorerSpec("toy", {}, "/o"), method=method, text_cache=cache)

    plans = {"eraser": {"eraser": "/e"}, "negprompt": {"negative_prompt": "nudity"},
             "blocklist": {"replacement": ""}, "safree": {"negative_prompt": "nudity"}}
    assert [loads_text_encoder(spec({"name": n, "options": o})) for n, o in plans.items()] == [False, False, False, True]
    assert loads_text_encoder(spec(None)) is False and loads_text_encoder(spec(None, cache=None)) is True
    assert TEXT_FREE_METHODS == ("none", "eraser", "negprompt", "blocklist")
    # the methods' own texts go into the cache with the prompts (eval.text_cache, eval.planning)
    assert [MethodPlan(n, o).texts() for n, o in plans.items()] == [[], ["nudity"], [""], ["nudity"]]
    # one pipeline serves the base model, an eraser and negprompt (a pool swaps them); SAFREE's needs its own
    keys = {n: pool_key(spec({"name": n, "options": o})) for n, o in plans.items()}
    assert keys["eraser"] == keys["negprompt"] == keys["blocklist"] != keys["safree"]
