"""Eval workers generate from cached prompt embeddings where the cache has them (issue 22): the pipeline then loads no
text encoder (T5-XXL: ~9 GB read and held per worker at real size) and the videos are the ones the text encoder's own
encoding gives. Tiny model, in-process worker, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.config import EvalConfig

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "prompts"


def cfg(model: Path, eraser: Path, limit: int = 1) -> EvalConfig:
    return EvalConfig.model_validate({
        "model": {"path": str(model), "dtype": "float32", "device": "cpu"},
        "eraser": str(eraser),
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
    from eval.planning import plan_eval
    from eval.runner import run_eval
    from eval.workers import open_text_cache
    from tests.test_eval_pool import eraser
    from unlearn.models.registry import resolve_model_path

    model = resolve_model_path("builtin:tiny")
    er = eraser(tmp_path, 0)
    monkeypatch.setenv("T2VU_CACHE", str(tmp_path / "cache"))  # an empty default cache: nothing cached yet
    plain = run_eval(cfg(model, er), tmp_path / "plain")
    assert [w["text_encoder"] for w in plain["workers"]] == [True]

    c = cfg(model, er)
    prompts = [r.prompt for r in plan_eval(c, tmp_path / "x").rows]
    cache = open_text_cache(str(model), "float32", c.generation.model_dump(mode="json"), str(tmp_path / "cache" / "embeddings"))
    assert cache.fill([*prompts, ""]) == len(prompts) + 1
    cached = run_eval(c, tmp_path / "cached")
    assert [w["text_encoder"] for w in cached["workers"]] == [False]  # T5 never loaded
    a, b = rows(tmp_path / "plain"), rows(tmp_path / "cached")
    assert a.keys() == b.keys() and len(a) == 2
    measured = 0
    for k in a:  # the same videos: the paired metrics, the eraser's energy and the classifier's records
        for x, y in zip(a[k][0], b[k][0]):
            assert (x is None) == (y is None) and (x is None or y == pytest.approx(x, rel=1e-5)), (k, a[k], b[k])
            measured += x is not None
        assert b[k][1] == a[k][1]
    assert measured >= 2

    more = run_eval(cfg(model, er, limit=2), tmp_path / "more")  # a prompt the cache lacks: the text encoder loads
    assert [w["text_encoder"] for w in more["workers"]] == [True]


def test_only_methods_without_a_text_side_of_their_own_skip_the_text_encoder():
    """The base model and an eraser need nothing but each prompt's embedding; negprompt, SAFREE and the blocklist
    change the text side themselves, so they keep the encoder even when the cache holds every prompt."""
    from eval.scoring import ScorerSpec
    from eval.workers import WorkerSpec, uses_text_cache

    def spec(method):
        return WorkerSpec(model_path="/m", dtype="float32", device="cpu", use_gpu=False, eraser=None,
                          generation={}, scorer=ScorerSpec("toy", {}, "/o"), method=method, text_cache="/cache")

    assert uses_text_cache(spec(None)) == "/cache"  # the base model
    assert uses_text_cache(spec({"name": "eraser", "options": {"eraser": "/e"}})) == "/cache"
    for name in ("negprompt", "safree", "blocklist"):
        assert uses_text_cache(spec({"name": name, "options": {}})) is None, name
    no_cache = WorkerSpec(model_path="/m", dtype="float32", device="cpu", use_gpu=False, eraser=None, generation={},
                          scorer=ScorerSpec("toy", {}, "/o"))
    assert uses_text_cache(no_cache) is None
