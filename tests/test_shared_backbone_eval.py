"""A training worker's proxy eval runs on the training transformer itself: no second backbone.

The eval attaches the checkpoint's eraser to the shared transformer for its rows, with the
training erasers switched off, and leaves the transformer exactly as it found it; the numbers
equal those of an eval that loads its own pipeline from disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from eval.config import load_eval_config
from eval.runner import run_eval
from unlearn.config import LossConfig
from unlearn.eraser import EraserSet, save_eraser
from unlearn.models.families import spec_class
from unlearn.models.registry import resolve_model_path
from unlearn.step import ErasureObjective
from tests.family_cases import perturb

ROOT = Path(__file__).resolve().parent.parent


def test_proxy_eval_reuses_the_training_transformer(tmp_path, monkeypatch):
    model = resolve_model_path("builtin:tiny")
    spec = spec_class("cogvideox").from_pretrained(model)
    training = EraserSet.for_spec(spec, rank=4)
    perturb(training, seed=2)
    obj = ErasureObjective(spec, training, LossConfig(w_localize=1.0))  # hooks + capture processors installed
    checkpoint = EraserSet.for_spec(spec, rank=4)
    perturb(checkpoint, seed=3, scale=0.5)
    eraser = save_eraser(checkpoint, tmp_path / "eraser")

    cfg = load_eval_config(ROOT / "configs" / "eval" / "tiny.yaml").with_overrides(
        {"runtime.scorer": "thread", "runtime.progress": False, "output.save_videos": False, "output.save_gifs": False,
         "output.grid_rows": 0, "prompts.limit": 2, "preserve.limit": 1, "generation.num_inference_steps": 2})
    g = torch.Generator().manual_seed(0)
    x = torch.randn((1, *spec.latent_shape(9, 32, 32)), generator=g)
    t, e = torch.tensor([500]), torch.randn((1, spec.text_len, 32), generator=g)
    before = spec.velocity(x, t, e)
    hooks = [len(m._forward_hooks) for m in spec.eraser_modules(spec.transformer)]
    n_params = sum(p.numel() for p in spec.transformer.parameters())

    seen = {}
    import eval.workers as workers

    real_init = workers.EvalWorker.__init__

    def spy(self, wspec, transformer=None):
        real_init(self, wspec, transformer=transformer)
        seen["same_object"] = self.pipe.transformer is spec.transformer

    monkeypatch.setattr(workers.EvalWorker, "__init__", spy)
    with obj.handle.disabled():
        shared = run_eval(cfg, tmp_path / "shared", eraser=eraser, transformer=spec.transformer)
    monkeypatch.setattr(workers.EvalWorker, "__init__", real_init)
    own = run_eval(cfg, tmp_path / "own", eraser=eraser)

    assert seen["same_object"], "the proxy eval must generate with the training transformer, not a copy"
    assert sum(p.numel() for p in spec.transformer.parameters()) == n_params
    assert [len(m._forward_hooks) for m in spec.eraser_modules(spec.transformer)] == hooks, "eval hooks left behind"
    assert torch.equal(spec.velocity(x, t, e), before), "training model changed by the eval"
    assert len(_numbers(own)) > 5
    assert json.dumps(_numbers(shared), sort_keys=True) == json.dumps(_numbers(own), sort_keys=True)
    obj.detach()


def _numbers(summary: dict) -> dict:
    """The measured values of a summary (timings and paths differ between two runs)."""
    out = {}
    for k, v in summary.items():
        if isinstance(v, dict):
            sub = _numbers(v)
            if sub:
                out[k] = sub
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and "second" not in k and not k.endswith("_s"):
            out[k] = v
    return out
