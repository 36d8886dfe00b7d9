"""The GPU path on a CPU machine: `meta` stands in for `cuda` (any CPU tensor that meets it raises).

Each test here failed before its fix: the trainer ignored `train.device`; trajectory sampling
made its noise, timesteps and embeddings on the CPU; every rank sampled the same pool.
"""

from __future__ import annotations

import pytest
import torch

from unlearn.config import ConfigError, EraserTrainingConfig
from unlearn.devices import resolve_device
from unlearn.session import TrainingSession
from unlearn.xt_sources import shard_prompts

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # tests/conftest.py: built once per session


def cfg_for(model_dir, tmp_path, loss: dict | None = None, **train) -> EraserTrainingConfig:
    return EraserTrainingConfig.model_validate({
        "model": {"path": str(model_dir), "num_frames": 9, "height": 32, "width": 32},
        "eraser": {"rank": 4},
        "concept": {"target": "naked", "prompts": ["a naked body", "a naked person on a beach", "a naked woman standing"],
                    "reference": "anchors", "anchors": ["clothed"], "preserve": ["a person", "a face", "a dog"]},
        "loss": {"eta": 3.0, "w_localize": 1.0, "mask_threshold": 0.3, **(loss or {})},
        "train": {"steps": 2, "batch_size": 2, "preserve_batch_size": 2, "cache_dir": str(tmp_path / "cache"),
                  "trajectory": {"num_inference_steps": 2, "pool_size": 2}, **train},
    })


def test_resolve_device():
    assert resolve_device("auto") == torch.device("cpu")  # this machine has no GPU
    assert resolve_device("meta") == torch.device("meta")
    assert resolve_device("cpu", assigned="cuda:1") == torch.device("cpu")
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        resolve_device("cuda")


def test_session_honours_train_device_without_a_device_argument(model_dir, tmp_path):
    """`t2vu train` builds `TrainingSession(cfg, ...)`: the config's device must reach the model."""
    s = TrainingSession(cfg_for(model_dir, tmp_path, device="meta"))
    assert s.device == torch.device("meta")
    assert all(p.device.type == "meta" for p in s.spec.transformer.parameters())
    assert all(p.device.type == "meta" for p in s.eraser_set.parameters())


@pytest.mark.parametrize("xt_source", ["noise", "trajectory"])
def test_fused_step_runs_on_a_non_cpu_device(model_dir, tmp_path, xt_source):
    s = TrainingSession(cfg_for(model_dir, tmp_path, device="meta", xt_source=xt_source))
    batch = s.batch(0)
    assert all(v.device.type == "meta" for v in batch.__dict__.values())
    losses = s.objective(batch)
    assert losses["loss"].device.type == "meta" and "l_localize" in losses
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in s.trainable_parameters())


@pytest.mark.parametrize("start", ["concept", "reference"])
def test_adversarial_step_runs_on_a_non_cpu_device(model_dir, tmp_path, start):
    """loss.adv_steps (the inner attack: its perturbation, radius, row-to-anchor index) and loss.w_anchor_preserve
    (the anchor rows and their targets) make tensors of their own: all on the model's device."""
    loss = {"adv_steps": 2, "adv_from": start, "adv_target": "own-negative", "w_anchor_preserve": 1.0}
    s = TrainingSession(cfg_for(model_dir, tmp_path, loss=loss, device="meta"))
    losses = s.objective(s.batch(0))
    assert {"l_adv", "l_anchor_preserve"} <= set(losses)
    assert all(v.device.type == "meta" for v in losses.values())
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in s.trainable_parameters())


def test_a_tensor_left_on_the_cpu_is_caught(model_dir, tmp_path):
    s = TrainingSession(cfg_for(model_dir, tmp_path, device="meta"))
    batch = s.batch(0)
    batch.emb_c = batch.emb_c.new_empty(batch.emb_c.shape, device="cpu")  # the kind of bug meta must catch
    with pytest.raises(RuntimeError, match="meta|device"):
        s.objective(batch)


def test_trajectory_pool_is_sharded_over_ranks_and_independent_of_the_sharding(model_dir, tmp_path):
    cfg = cfg_for(model_dir, tmp_path, xt_source="trajectory")
    whole = TrainingSession(cfg)
    ranks = [TrainingSession(cfg, rank=r, world_size=2) for r in range(2)]
    pools = [set(r.source.pool) for r in ranks]
    assert pools[0].isdisjoint(pools[1]) and pools[0] | pools[1] == set(whole.source.pool)
    for r in ranks:
        assert {it.prompt for it in r.data.items} | set(r.data.preserve) == set(r.source.pool)
        for p, (states, times) in r.source.pool.items():
            ref_states, ref_times = whole.source.pool[p]
            assert torch.equal(states, ref_states) and torch.equal(times, ref_times), p
        items, pres = r.data.sample(torch.Generator().manual_seed(0), 4, 4)
        assert all(it.prompt in r.source.pool for it in items) and all(q in r.source.pool for q in pres)
    assert whole.source.nbytes() == sum(r.source.nbytes() for r in ranks)


def test_trajectory_pool_is_stored_in_the_model_dtype(model_dir, tmp_path):
    cfg = cfg_for(model_dir, tmp_path, xt_source="trajectory")
    cfg.model.dtype = "bfloat16"
    s = TrainingSession(cfg)
    states, _ = next(iter(s.source.pool.values()))
    assert states.dtype == torch.bfloat16 and states.device.type == "cpu"


def test_shard_prompts_gives_every_rank_work():
    assert shard_prompts(["a", "b", "c"], 0, 2) == ["a", "c"] and shard_prompts(["a", "b", "c"], 1, 2) == ["b"]
    assert shard_prompts(["a"], 3, 4) == ["a"]
