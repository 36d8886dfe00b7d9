"""Trajectory pools are sampled once per model and sampler setting (issue 22): the second trial or run with the
same settings reads them from the on-disk cache (no sampler call), a changed sampler setting misses, and a
damaged entry is refused in one line, never trained on (unlearn/trajectory_cache.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unlearn.config import ConfigError
from unlearn.embedding_cache import CacheEntryError
from unlearn.session import TrainingSession

ROOT = Path(__file__).resolve().parent.parent


def session(cache: Path, *overrides: str) -> TrainingSession:
    from pipelines.config.pipeline import load_pipeline_config

    sets = ["train.xt_source=trajectory", "train.trajectory.num_inference_steps=2", "train.trajectory.pool_size=1",
            "train.device=cpu", f"train.cache_dir={cache}", *overrides]
    return TrainingSession(load_pipeline_config(ROOT / "configs" / "tiny.yaml", sets).method())


@pytest.mark.slow  # five tiny sessions: ~45 s on 2 shared cores
def test_a_second_session_reads_the_pool_and_a_changed_sampler_setting_misses(tmp_path):
    first = session(tmp_path)
    prompts = list(first.source.pool)
    assert first.source.sampled == len(prompts) > 1  # every prompt sampled once
    second = session(tmp_path, "loss.eta=5.0", "train.lr=3e-3")  # another trial: eraser/loss settings only
    assert second.source.sampled == 0
    for p in prompts:  # the pool the sampler drew, bit for bit
        for a, b in zip(first.source.pool[p], second.source.pool[p]):
            assert a.dtype == b.dtype and torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(first.source.draw(prompts, g1)[0], second.source.draw(prompts, g2)[0])
    for change in ("train.trajectory.guidance_scale=2.0", "train.trajectory.num_inference_steps=3", "train.seed=1"):
        assert session(tmp_path, change).source.sampled == len(prompts), change


def test_a_damaged_entry_is_refused_naming_the_file(tmp_path):
    first = session(tmp_path)
    entries = sorted((tmp_path / "trajectories").rglob("*.safetensors"))
    assert len(entries) == first.source.sampled
    data = bytearray(entries[0].read_bytes())
    data[-8:] = bytes(8)  # the last values of the stored times: the checksum no longer matches
    entries[0].write_bytes(bytes(data))
    with pytest.raises(CacheEntryError, match=r"trajectory cache entry .*safetensors .*checksum.*Delete it") as err:
        session(tmp_path)
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
