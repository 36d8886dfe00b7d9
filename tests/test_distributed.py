"""Ray Train + DeepSpeed trainer: configs (fast) and real 2-worker gloo runs (slow).

The slow tests use real Ray (the session's `ray_session`), real DeepSpeed with the CPU
accelerator and gloo, and the tiny CogVideoX. The first DeepSpeed use on a fresh machine
JIT-compiles its shm comm op (~30 s, cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.config.pipeline import PipelineConfig, load_pipeline_config
from pipelines.config.distributed import check_distributed, deepspeed_config
from unlearn.config import ConfigError, config_digest, read_yaml

ROOT = Path(__file__).resolve().parent.parent


def tiny_pipeline_cfg(tmp_path: Path, *, stage: int = 2, steps: int = 12, **dist) -> PipelineConfig:
    data = read_yaml(ROOT / "configs" / "tiny.yaml")
    data["train"].update({"steps": steps, "checkpoint_every": 4, "log_every": 2, "batch_size": 2,
                          "preserve_batch_size": 2, "cache_dir": str(tmp_path.parent / "emb-cache")})
    data["distributed"] = {"num_workers": 2, "zero_stage": stage, "max_failures": 1, **dist}
    return PipelineConfig.model_validate(data)


# --- fast -----------------------------------------------------------------------------------------------

def test_deepspeed_config_takes_batch_and_clipping_from_train(tmp_path):
    cfg = tiny_pipeline_cfg(tmp_path)
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == 1 and ds["train_batch_size"] == 2  # global 2 over 2 workers
    assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == cfg.train.grad_clip
    assert "optimizer" not in ds and not any(k.startswith("_") for k in ds)
    ds3 = deepspeed_config(tiny_pipeline_cfg(tmp_path, stage=3, deepspeed_overrides={"zero_optimization": {"reduce_bucket_size": 1000}}))
    assert ds3["zero_optimization"]["stage"] == 3
    assert ds3["zero_optimization"]["stage3_param_persistence_threshold"] == 0  # eraser tensors really partitioned
    assert ds3["zero_optimization"]["reduce_bucket_size"] == 1000  # overrides merge into the file


def test_fp16_is_refused_in_model_dtype_and_deepspeed_config(tmp_path):
    """fp16 training needs loss scaling, which no trainer path here has (issue 22): one line naming the fix."""
    from pydantic import ValidationError

    from unlearn.config import ModelConfig

    with pytest.raises(ValidationError, match=r"float16 trains without loss scaling.*model.dtype: bfloat16"):
        ModelConfig(dtype="float16")
    cfg = tiny_pipeline_cfg(tmp_path, deepspeed_overrides={"fp16": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"'fp16' is enabled.*model.dtype: bfloat16"):
        deepspeed_config(cfg)
    assert "fp16" in deepspeed_config(tiny_pipeline_cfg(tmp_path, deepspeed_overrides={"fp16": {"enabled": False}}))


def test_shipped_deepspeed_files_are_valid_json_without_optimizer():
    for name in ("zero2.json", "zero3.json"):
        ds = json.loads((ROOT / "configs" / "deepspeed" / name).read_text())
        assert ds["zero_optimization"]["stage"] == int(name[4])
        assert "optimizer" not in ds  # client torch AdamW (DeepSpeed's CPU Adam JIT-compiles ~50 s)


def test_global_batch_must_split_evenly(tmp_path):
    cfg = tiny_pipeline_cfg(tmp_path, num_workers=2).with_overrides({"train.batch_size": 3})
    with pytest.raises(ConfigError, match="divisible by distributed.num_workers=2"):
        check_distributed(cfg)
    with pytest.raises(ConfigError, match="NCCL needs GPUs"):
        check_distributed(tiny_pipeline_cfg(tmp_path, backend="nccl"))
    with pytest.raises(ConfigError, match="distributed.zero_stage"):
        load_pipeline_config(ROOT / "configs" / "tiny.yaml", ["distributed.zero_stage=1"])


def test_worker_share_of_the_batch_keeps_the_method_digest(tmp_path):
    from pipelines.train.worker import worker_method_config

    cfg = tiny_pipeline_cfg(tmp_path)
    w = worker_method_config(cfg, 2)
    assert (w.train.batch_size, w.train.preserve_batch_size) == (1, 1)
    assert config_digest(w) != config_digest(cfg.method())  # which is why the worker restores the method digest


# --- slow: real Ray + DeepSpeed ---------------------------------------------------------------------------

def _state(eraser_dir: Path) -> dict[str, torch.Tensor]:
    from unlearn.eraser import read_eraser

    return read_eraser(eraser_dir).state_dict()


@pytest.mark.slow
def test_zero2_and_killed_zero3_runs_give_the_same_loadable_eraser(ray_session, tmp_path):
    """ZeRO-2 (uninterrupted) vs ZeRO-3 with a worker SIGKILLed mid-run.

    The ZeRO-3 run must restart its worker group, resume from the step-4 checkpoint (not step 0),
    finish with exactly `steps` optimizer steps, and end with the same eraser as ZeRO-2: batches
    are a function of (seed, step, rank) and the optimizer state comes back from the checkpoint.
    """
    from diffusers import CogVideoXPipeline

    from pipelines.train.driver import run_distributed
    from unlearn.eraser import load_eraser, read_eraser
    from unlearn.models.registry import resolve_model_path

    cfg2 = tiny_pipeline_cfg(tmp_path, stage=2)
    s2 = run_distributed(cfg2, tmp_path / "zero2")
    assert s2["attempts"] == [0] and s2["global_steps"] == 12 and s2["zero_stage"] == 2 and s2["world_size"] == 2

    cfg3 = tiny_pipeline_cfg(tmp_path, stage=3)
    marker = tmp_path / "killed.txt"
    from tests.fault_hooks import kill_worker_once
    from unlearn.loop import StepHook

    kill = StepHook(kill_worker_once, {"at_rank": 1, "at_step": 6, "marker": str(marker)})
    s3 = run_distributed(cfg3, tmp_path / "zero3", step_hook=kill)
    assert marker.exists(), "the fault was never injected"
    assert s3["attempts"] == [0, 4], s3  # resumed from the step-4 checkpoint, not from 0
    assert s3["resumed_from"] == 4 and s3["global_steps"] == 12 and s3["zero_stage"] == 3
    assert s3["params_partitioned"] is True  # ZeRO-3 really sharded the eraser; the file was gathered

    for out in (tmp_path / "zero2", tmp_path / "zero3"):
        steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
        assert steps == [2, 4, 6, 8, 10, 12]  # the resumed run has no duplicate or missing steps
        assert (out / "eraser" / "eraser.safetensors").is_file() and (out / "summary.json").is_file()

    a, b = _state(tmp_path / "zero2" / "eraser"), _state(tmp_path / "zero3" / "eraser")
    assert a.keys() == b.keys()
    assert any(v.abs().max() > 0 for k, v in a.items() if ".up." in k)  # it trained (up starts at zero)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3, msg=lambda m: f"{k}: {m}")

    # Interchangeable with single-process erasers: same files, same digest, loads in two lines.
    meta = read_eraser(tmp_path / "zero3" / "eraser").meta
    assert meta.config_digest == config_digest(cfg3.method())
    pipe = CogVideoXPipeline.from_pretrained(resolve_model_path("builtin:tiny"))
    handle = load_eraser(pipe, tmp_path / "zero3" / "eraser")
    out = pipe("a naked body", num_frames=9, height=32, width=32, num_inference_steps=2,
               max_sequence_length=pipe.transformer.config.max_text_seq_length, output_type="np",
               generator=torch.Generator().manual_seed(0)).frames
    assert torch.isfinite(torch.as_tensor(out)).all()
    handle.remove()

    # A finished output is not trained again (CLI path); another config into it is refused.
    from pipelines.cli.entry import main

    out2 = tmp_path / "zero2"
    assert main(["train", "--distributed", "--config", str(out2 / "config.yaml"), "--output", str(out2)]) == 0
    assert json.loads((out2 / "summary.json").read_text()) == s2
    assert main(["train", "--distributed", "--config", str(out2 / "config.yaml"), "--output", str(out2),
                 "--set", "loss.eta=5"]) == 2


def test_ensure_ray_inside_a_ray_job_adds_only_missing_env_vars(monkeypatch):
    """Ray refuses a driver runtime env that repeats env var keys of the job's (t2vu submit)."""
    import ray

    from pipelines.runtime import ray_session
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}}))
    monkeypatch.setenv("T2VU_CACHE", "/shared/cache")
    assert ray_session.ensure_ray() is True
    env = calls[0]["runtime_env"]["env_vars"]
    assert "OMP_NUM_THREADS" not in env and env["T2VU_CACHE"] == "/shared/cache" and env["HF_HUB_OFFLINE"] == "1"
    assert calls[0]["address"] == "127.0.0.1:6379"


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_single_process_and_distributed_loops_write_one_layout_and_resume_each_other(ray_session, tmp_path, monkeypatch,
                                                                                     caplog):
    """One loop (unlearn.loop) with two engines and two stores: `t2vu train` (torch AdamW, <out>/checkpoint)
    and `--distributed` with 1 worker (DeepSpeed ZeRO-2, Ray Train checkpoints) write the same files, train the
    same curve, and a distributed checkpoint resumes the single-process run (weights, step, curve; the
    optimizer state starts fresh because the engine differs)."""
    from pipelines.train.driver import run_distributed
    from unlearn.checkpoint import read_metrics
    from unlearn.session import TrainingSession
    from unlearn.trainer import train

    cfg = tiny_pipeline_cfg(tmp_path, num_workers=1, steps=8)  # checkpoints at 4 and 8, a log line every 2 steps
    run_distributed(cfg, tmp_path / "dist")
    (dist_ck,) = (tmp_path / "dist" / "ray").rglob("checkpoint_000004")

    real_batch = TrainingSession.batch

    def dying_batch(self, step):
        if step == 6:
            raise KeyboardInterrupt("simulated kill")
        return real_batch(self, step)

    monkeypatch.setattr(TrainingSession, "batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg.method(), tmp_path / "local", progress=False)
    monkeypatch.setattr(TrainingSession, "batch", real_batch)
    local_ck = tmp_path / "local" / "checkpoint"

    # one layout: the same files outside engine/, which holds each engine's own optimizer files
    common = {"state.json", "metrics.jsonl", "eraser/eraser.safetensors", "eraser/eraser_config.json",
              "manifest-rank0.json"}
    local_files, dist_files = _files(local_ck), _files(dist_ck)
    assert local_files - common == {"engine/optimizer.pt"}
    assert dist_files & common == common and "engine/ds/mp_rank_00_model_states.pt" in dist_files
    assert all(f.startswith("engine/") for f in dist_files - common), dist_files  # DeepSpeed's shards and scripts
    s_local, s_dist = (json.loads((d / "state.json").read_text()) for d in (local_ck, dist_ck))
    assert s_local.keys() == s_dist.keys() and s_local["format"] == s_dist["format"] == 2
    assert (s_local["step"], s_local["engine"], s_local["world_size"]) == (4, "torch", 1)
    assert (s_dist["step"], s_dist["engine"], s_dist["zero_stage"]) == (4, "deepspeed", 2)
    # the same method, batches and initial eraser: the two engines train the same curve
    rows_local, rows_dist = read_metrics(local_ck / "metrics.jsonl"), read_metrics(dist_ck / "metrics.jsonl")
    assert [r["step"] for r in rows_local] == [r["step"] for r in rows_dist] == [2, 4]
    for a, b in zip(rows_local, rows_dist):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-6) for k in a), (a, b)

    # the distributed checkpoint, put where the single-process run keeps its own, resumes it
    import shutil

    shutil.copytree(local_ck, tmp_path / "single" / "checkpoint")  # kept for the other direction, below
    shutil.rmtree(local_ck)
    shutil.copytree(dist_ck, local_ck)
    with caplog.at_level("WARNING", logger="unlearn.loop"):
        resumed = train(cfg.method(), tmp_path / "local", progress=False)
    assert resumed["resumed_from"] == 4 and resumed["attempts"] == [0, 4]
    assert "optimizer state reset" in caplog.text
    assert [r["step"] for r in read_metrics(tmp_path / "local" / "metrics.jsonl")] == [2, 4, 6, 8]
    assert read_metrics(tmp_path / "local" / "metrics.jsonl")[:2] == rows_dist  # the curve came with the checkpoint
    assert (tmp_path / "local" / "eraser" / "eraser.safetensors").is_file() and not local_ck.exists()

    # and the other way: `--distributed` on a stopped `t2vu train` folder continues its checkpoint (step 4),
    # it does not silently start again from step 0
    with caplog.at_level("WARNING", logger="unlearn.loop"):
        onward = run_distributed(cfg, tmp_path / "single")
    assert onward["resumed_from"] == 4 and onward["attempts"] == [0, 4], onward
    assert [r["step"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl")] == [2, 4, 6, 8]
    assert read_metrics(tmp_path / "single" / "metrics.jsonl")[:2] == rows_local


def test_a_checkpoint_of_the_earlier_layout_is_refused_in_one_line(tmp_path):
    """Before the one loop, `t2vu train` wrote checkpoint/{eraser/, optimizer.pt, state.json {"step"}} and the
    distributed loop ds/ + state.json without a format: both are refused (exit 2, one line), never half-read."""
    from pipelines.train.checkpoints import check_resumable
    from unlearn.checkpoint import LegacyCheckpointError, read_state

    old = tmp_path / "out" / "checkpoint"
    old.mkdir(parents=True)
    (old / "state.json").write_text('{"step": 4}')
    with pytest.raises(LegacyCheckpointError, match=r"earlier t2vu layout \(format 1.*--no-resume"):
        read_state(old)
    ray_run = tmp_path / "ray" / "train"
    (ray_run / "checkpoint_000004").mkdir(parents=True)
    (ray_run / "checkpoint_000004" / "state.json").write_text('{"step": 4, "world_size": 2}')
    with pytest.raises(ConfigError, match="earlier t2vu layout"):
        check_resumable(ray_run)
    check_resumable(tmp_path / "nothing-here")  # a new run: nothing to check


def test_what_crosses_to_trials_and_workers_is_typed_frozen_and_pickles(tmp_path):
    """Ray ships the search's TrialContext to each trial and the LoopConfig (with the trial's ObjectivePayload and a
    StepHook) to each worker: frozen dataclasses that survive pickling unchanged (no untyped dicts)."""
    import dataclasses
    import pickle

    from pipelines.search.objective import objective_payload
    from pipelines.search.trial import TrialContext
    from pipelines.tracking.tracker import SearchTracking, TrialTracking
    from pipelines.train.worker import LoopConfig
    from tests.fault_hooks import kill_worker_once
    from unlearn.loop import StepHook

    search = load_pipeline_config(ROOT / "configs" / "search" / "tiny.yaml").with_overrides({"search.algorithm": "asha"})
    objective = objective_payload(search, ROOT / "configs" / "search")
    ctx = TrialContext(base=search, output_dir=str(tmp_path), config_dir=str(ROOT / "configs" / "search"),
                       train_storage=str(tmp_path / "ray"), objective=objective,
                       mlflow=SearchTracking("sqlite:///x.db", "1", "parent1"))  # the search's MLflow ids, typed
    bound = objective.for_trial(tmp_path / "trials" / "t1", TrialTracking("sqlite:///x.db", "run1"))
    lc = LoopConfig(config=search, config_dir=None, ds_config=deepspeed_config(search), threads=1, checkpoint_every=4,
                    objective=bound, step_hook=StepHook(kill_worker_once, {"at_rank": 1, "at_step": 6, "marker": "m"}))
    for value in (ctx, bound, lc):
        again = pickle.loads(pickle.dumps(value))
        assert again == value and type(again) is type(value)
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.objective = None if hasattr(value, "objective") else value.out_dir
    assert lc.plan().eval_every == objective.proxy_every == search.search.proxy_every()
    assert bound.out_dir.endswith("t1") and objective.out_dir is None  # binding a trial copies, never mutates
