"""`distributed.shard_backbone` end to end: the config refuses what cannot run with it, `t2vu plan` names it
before cutting frames, and `t2vu train --distributed` with it trains the same eraser as without (issue 23).

The step-level equality on every family (and under the real ZeRO-2 engine) is `tests/test_sharded_backbone.py`;
this file is the wiring through the config, the plan and the Ray Train worker.
"""

from __future__ import annotations

import json

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


@pytest.mark.slow
def test_distributed_training_with_a_sharded_backbone_matches_the_replicated_run(ray_session, tmp_path):
    """Two Ray Train + DeepSpeed ZeRO-2 workers, the tiny CogVideoX sharded over them vs replicated: the same
    logged losses and the same eraser; each rank held about half of the backbone (read from its tensors)."""
    from pipelines.train.driver import run_distributed
    from unlearn.eraser import read_eraser

    runs = {}
    for shard in (False, True):
        cfg: PipelineConfig = tiny_pipeline_cfg(tmp_path, steps=4, shard_backbone=shard)
        out = tmp_path / f"shard-{shard}"
        runs[shard] = (run_distributed(cfg, out), out)
    (plain, a), (sharded, b) = runs[False], runs[True]
    assert sharded["shard_backbone"] is True and plain["shard_backbone"] is False
    assert sharded["global_steps"] == plain["global_steps"] == 4

    def losses(out):
        return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]

    assert losses(a) == pytest.approx(losses(b), rel=1e-5, abs=1e-6)
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
