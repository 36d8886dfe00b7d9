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

    kill = {"function": kill_worker_once, "kwargs": {"at_rank": 1, "at_step": 6, "marker": str(marker)}}
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
