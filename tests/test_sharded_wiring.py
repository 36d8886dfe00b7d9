"""`distributed.shard_backbone` end to end: the config refuses what cannot run with it, `t2vu plan` names it
before cutting frames, and `t2vu train --distributed` with it trains the same eraser as without (issue 23).

The step-level equality on every family (and under the real ZeRO-2 engine) is `tests/test_sharded_backbone.py`;
this file is the wiring through the config, the plan and the Ray Train worker, and the resume of a killed sharded run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.cli.entry import main
from pipelines.config.pipeline import PipelineConfig, load_pipeline_config
from tests.test_distributed import ROOT, tiny_pipeline_cfg
from unlearn.config import ConfigError


def test_sharding_is_refused_with_zero3_and_with_rank0_proxy_evals(tmp_path):
    with pytest.raises(ConfigError, match=r"shard_backbone needs distributed.zero_stage: 2"):
        load_pipeline_config(ROOT / "configs" / "tiny.yaml",
                             ["distributed.shard_backbone=true", "distributed.zero_stage=3"])
    # a proxy eval runs the backbone on rank 0 alone: with every forward a collective the others would hang
    with pytest.raises(ConfigError, match=r"proxy evals run on rank 0 alone: set search.objective.proxy.every: 0"):
        load_pipeline_config(ROOT / "configs" / "search" / "tiny.yaml",
                             ["distributed.shard_backbone=true", "search.algorithm=asha"])
    cfg = load_pipeline_config(ROOT / "configs" / "search" / "tiny.yaml", ["distributed.shard_backbone=true"])
    assert cfg.distributed.shard_backbone and cfg.search.proxy_every() is None  # optuna/FIFO: no proxies, allowed


def test_plan_names_sharding_before_cutting_frames_and_counts_it(capsys):
    a14b = str(ROOT / "configs" / "wan" / "wan2.2-t2v-a14b-nudity.yaml")
    args = ["plan", "-c", a14b, "--gpu-memory", "80", "--world-size", "4", "--mode", "distributed"]
    assert main(args) == 3  # 126 GB per GPU: does not fit
    out = capsys.readouterr()
    fix = json.loads(out.out.strip().splitlines()[-1])["fix"]
    assert fix["fits"] and fix["setting"].startswith("--set distributed.shard_backbone=true"), fix
    assert fix["shrinks"] == "backbone weights" and fix["term_gb"] == pytest.approx(53.23, abs=0.01)
    assert fix["term_gb_after"] == pytest.approx(53.23 / 4, abs=0.01)
    assert any("backbone sharded over 4 GPUs" in c for c in fix["costs"])

    main(args + ["--set", "distributed.shard_backbone=true"])
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["terms"]["backbone weights"] == pytest.approx(53.229 / 4, abs=0.01)
    assert 0 < plan["terms"]["gathered backbone blocks"] < 2.0  # two A14B blocks (one per expert) whole at once
    assert plan["peak_gb_per_gpu"] < 126.06 - 53.229 * 3 / 4 + 2.0


def _losses(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def sharded_runs(ray_session, tmp_path_factory):
    """The three 2-worker Ray Train + DeepSpeed ZeRO-2 runs the slow tests below share (each costs a worker
    group start): the tiny CogVideoX sharded, replicated, and sharded with rank 1 SIGKILLed after step 3
    (checkpoints every 2 steps, 4 steps in all: the restarted group resumes from step 2). x_t come from
    trajectories: the sharded run, first, samples the pools through its shards (the worker's lockstep,
    unlearn.xt_sources) into a fresh trajectory cache; the other two read them from it."""
    from pipelines.train.driver import run_distributed
    from tests.fault_hooks import kill_worker_once
    from unlearn.loop import StepHook

    tmp = tmp_path_factory.mktemp("sharded-runs")
    pools = tmp / "cache" / "trajectories"
    runs = {}
    for name, shard in (("sharded", True), ("replicated", False), ("killed", True)):
        cfg: PipelineConfig = tiny_pipeline_cfg(tmp, steps=4, shard_backbone=shard)
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={
            "checkpoint_every": 2, "xt_source": "trajectory", "cache_dir": str(tmp / "cache"),
            "trajectory": cfg.train.trajectory.model_copy(update={"num_inference_steps": 2, "pool_size": 2})})})
        if name == "sharded":
            assert not pools.exists()
        hook = None
        if name == "killed":
            hook = StepHook(kill_worker_once, {"at_rank": 1, "at_step": 3, "marker": str(tmp / "killed.txt")})
        out = tmp / name
        runs[name] = (run_distributed(cfg, out, step_hook=hook), out)
        if name == "sharded":
            runs["pools_sampled_in_shards"] = len(list(pools.glob("*/*.safetensors")))
    runs["marker"] = tmp / "killed.txt"
    return runs


@pytest.mark.slow
def test_distributed_training_with_a_sharded_backbone_matches_the_replicated_run(sharded_runs):
    """Two Ray Train + DeepSpeed ZeRO-2 workers, the tiny CogVideoX sharded over them vs replicated: the same
    logged losses and the same eraser; each rank held about half of the backbone (read from its tensors)."""
    from unlearn.eraser import read_eraser

    (plain, a), (sharded, b) = sharded_runs["replicated"], sharded_runs["sharded"]
    assert sharded["shard_backbone"] is True and plain["shard_backbone"] is False
    # each worker read only its rows of the backbone (unlearn.sharded_load), and sampled its prompts' pools
    # through the shards: the whole cache (tiny.yaml: 3 concept + 4 preserve prompts + the empty one)
    assert sharded["backbone_loaded_in_shards"] is True and plain["backbone_loaded_in_shards"] is False
    assert sharded_runs["pools_sampled_in_shards"] == 8
    assert sharded["global_steps"] == plain["global_steps"] == 4

    assert _losses(a) == pytest.approx(_losses(b), rel=1e-5, abs=1e-6)
    ea, eb = read_eraser(a / "eraser").state_dict(), read_eraser(b / "eraser").state_dict()
    assert ea.keys() == eb.keys()
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")

    from diffusers import CogVideoXTransformer3DModel

    from unlearn.models.registry import resolve_model_path

    whole = sum(p.numel() * p.element_size() for p in CogVideoXTransformer3DModel.from_pretrained(
        resolve_model_path("builtin:tiny"), subfolder="transformer").parameters())
    # rank 0's local shards (FSDP pads each weight to a multiple of 2 rows) plus the few root weights kept whole
    assert whole * 0.45 < sharded["backbone_resident_bytes"] < whole * 0.6, (sharded["backbone_resident_bytes"], whole)


@pytest.mark.slow
def test_a_killed_sharded_run_resumes_bit_identically(sharded_runs):
    """A sharded run whose rank 1 was SIGKILLed after step 3 restarts its worker group, resumes from the
    step-2 checkpoint (its own backbone shards loaded again, the eraser and optimizer state from the
    checkpoint) and ends with exactly the uninterrupted sharded run's eraser and curve: bit for bit."""
    from unlearn.eraser import read_eraser

    (whole, a), (killed, b) = sharded_runs["sharded"], sharded_runs["killed"]
    assert sharded_runs["marker"].exists(), "the fault was never injected"
    assert killed["attempts"] == [0, 2] and killed["resumed_from"] == 2, killed
    assert killed["global_steps"] == whole["global_steps"] == 4 and killed["shard_backbone"] is True
    assert [r["step"] for r in map(json.loads, (b / "metrics.jsonl").read_text().splitlines())] == [2, 4]
    assert _losses(a) == _losses(b)  # exact
    ea, eb = read_eraser(a / "eraser").state_dict(), read_eraser(b / "eraser").state_dict()
    assert ea.keys() == eb.keys() and any(v.abs().max() > 0 for k, v in ea.items() if ".up." in k)
    for k in ea:
        assert torch.equal(ea[k], eb[k]), (k, (ea[k] - eb[k]).abs().max())


def test_gpu_smoke_runs_a_sharded_stage_on_two_gpus_and_budgets_it():
    """benchmarks/gpu_smoke.py: the `sharded` stage (the 2-worker run with distributed.shard_backbone) runs with >= 2
    GPUs, is skipped with 1 GPU and on a CPU unless asked, and has its own line in the budget printed first."""
    import argparse
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_smoke import GEOMETRY, TRAIN_CONFIG, train_overrides
    from smoke_budget import render, size_to_fit
    from smoke_distributed import run_sharded, stage_overrides

    from unlearn.models.architectures import resolve_architecture

    a = argparse.Namespace(preset="cogvideox-2b", device="cuda", steps=4, eval_steps=4, mask_layers=None, search=False,
                           mfu=0.4, peak_tflops=989.0, proxy_every=2, sharded="auto", distributed="auto")
    assert run_sharded(a, 2, True) and not run_sharded(a, 1, True) and not run_sharded(a, 0, False)
    assert run_sharded(argparse.Namespace(sharded="on"), 0, False)  # a CPU rehearsal when asked
    single = train_overrides(a, Path("/nonexistent"), Path("/tmp/cache"))
    dist, sharded = (single + stage_overrides(a, n, Path("/tmp/w")) for n in ("distributed", "sharded"))
    assert "distributed.shard_backbone=true" in sharded and "distributed.shard_backbone=true" not in dist
    b = size_to_fit(a, resolve_architecture("/nonexistent", "cogvideox-2b"), TRAIN_CONFIG, single, dist,
                    GEOMETRY["cogvideox-2b"], lambda m: None, sharded=sharded)
    st = b["stages"]
    assert st["sharded"]["tflop"] == st["distributed"]["tflop"] > 0 and st["sharded"]["startup_s"] > 0
    assert any(line.startswith("budget sharded: ") for line in render(b))
