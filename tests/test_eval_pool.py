"""One pool of eval actors for a whole search (issue 22): the evals of a search (`T2VU_EVAL_POOL` / make_backend's
pool) load the pipeline once per actor and swap each eval's eraser in, instead of a fresh actor loading transformer +
T5 + VAE per trial; `release_pool` ends the actors. Real Ray (tests/conftest.py `ray_session`), the tiny model, CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval.config import EvalConfig

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "prompts"


def eraser(tmp_path: Path, seed: int) -> Path:
    from unlearn.eraser import EraserMeta, EraserSet, save_eraser
    from unlearn.models.registry import resolve_model_path

    model = resolve_model_path("builtin:tiny")
    tcfg = json.loads((model / "transformer" / "config.json").read_text())
    n = tcfg["num_layers"]
    es = EraserSet(EraserMeta(hidden_size=tcfg["num_attention_heads"] * tcfg["attention_head_dim"], rank=2,
                              num_blocks=n, block_indices=list(range(n)), base_model=str(model)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in es.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return save_eraser(es, tmp_path / f"eraser{seed}")


def cfg(eraser_dir: Path) -> EvalConfig:
    return EvalConfig.model_validate({
        "model": {"path": "builtin:tiny", "dtype": "float32", "device": "cpu"},
        "eraser": str(eraser_dir),
        "prompts": {"path": str(EXAMPLES / "nudity_example.csv"), "limit": 1},
        "preserve": {"path": str(EXAMPLES / "preserve_example.csv"), "limit": 1},
        "generation": {"num_inference_steps": 2, "num_frames": 9, "height": 32, "width": 32, "scheduler": "ddim",
                       "vae_tiling": False, "vae_slicing": False},
        "classifier": {"name": "nudenet", "nudenet": {"frames": 1, "threshold": 0.5}},
        "output": {"grid_rows": 0, "save_gifs": False},
        "runtime": {"scorer": "thread", "progress": False, "use_gpu": False, "num_actors": 1, "cpus_per_actor": 1,
                    "ray_timeout_s": 300},
    })


def erased_psnr(summary_dir: Path) -> list[float]:
    rows = [json.loads(p.read_text()) for p in sorted((summary_dir / "rows").glob("*.json"))]
    return sorted(float(r.get("psnr", 0.0)) for r in rows)


@pytest.mark.slow
def test_evals_of_one_search_load_the_pipeline_once_per_actor(ray_session, tmp_path, monkeypatch):
    from eval.backends import POOL_ENV, release_pool
    from eval.runner import run_eval

    erasers = [eraser(tmp_path, s) for s in (0, 1)]
    monkeypatch.setenv(POOL_ENV, "test-pool")
    try:
        summaries = [run_eval(cfg(e), tmp_path / f"eval{i}") for i, e in enumerate(erasers)]
        loads = [w["pipeline_loads"] for s in summaries for w in s["workers"]]
        pids = {w["pid"] for s in summaries for w in s["workers"]}
        assert loads == [1, 1] and len(pids) == 1  # one actor, one pipeline load, two evals
        assert all(s["rows_evaluated"] == 2 for s in summaries)
        # each eval generated with its own eraser: the erased videos differ between erasers
        assert len({tuple(erased_psnr(tmp_path / f"eval{i}")) for i in range(2)}) == 2
        again = run_eval(cfg(erasers[0]), tmp_path / "eval0-again")  # back to the first eraser: its videos again
        assert erased_psnr(tmp_path / "eval0-again") == pytest.approx(erased_psnr(tmp_path / "eval0"))
        assert [w["pipeline_loads"] for w in again["workers"]] == [1]
    finally:
        assert release_pool("test-pool") == 1
    monkeypatch.delenv(POOL_ENV)
    fresh = run_eval(cfg(erasers[0]), tmp_path / "unpooled")  # no pool: a fresh actor, killed at the end
    assert [w["pipeline_loads"] for w in fresh["workers"]] == [1] and fresh["workers"][0]["pid"] not in pids


def _spec(**kw):
    from eval.scoring import ScorerSpec
    from eval.workers import WorkerSpec

    base = dict(model_path="/m/tiny", dtype="float32", device="cpu", use_gpu=False, eraser=None,
                generation={"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 2},
                scorer=ScorerSpec("toy", {}, "/out/a"))
    return WorkerSpec(**{**base, **kw})


def test_pool_key_shares_a_pipeline_across_erasers_and_outputs_but_not_across_models_or_generation():
    """What a pooled actor may swap per eval (eraser, method, scorer and its output folder) is not in the key;
    what its loaded pipeline depends on (model, dtype, device, generation settings) is."""
    from eval.backends import release_pool
    from eval.scoring import ScorerSpec
    from eval.workers import pool_key

    k = pool_key(_spec())
    assert pool_key(_spec(eraser="/runs/a/eraser")) == k
    assert pool_key(_spec(eraser="/runs/b/eraser", scorer=ScorerSpec("toy", {}, "/out/b"))) == k
    assert pool_key(_spec(method={"name": "eraser", "options": {"eraser": "/runs/c"}})) == k
    assert pool_key(_spec(model_path="/m/other")) != k
    assert pool_key(_spec(dtype="bfloat16")) != k
    assert pool_key(_spec(generation={"num_frames": 9, "height": 32, "width": 32, "num_inference_steps": 4})) != k
    import ray

    was_running = ray.is_initialized()
    assert release_pool("t2vu-test-no-such-pool") == 0  # no actor of that pool: nothing ended, Ray or not
    assert ray.is_initialized() == was_running  # and no Ray started just to look
