"""The gpu smoke's 2-worker stages (`benchmarks/gpu_smoke.py`): which run, and the overrides each runs with.

`distributed`: the smoke's training config under Ray Train + DeepSpeed ZeRO-2 on 2 workers; `sharded`: the same with
`distributed.shard_backbone: true` (issue 23: the frozen backbone in FSDP2 shards over the workers).
"""

from __future__ import annotations

import json
from pathlib import Path

STAGE_DIR = {"distributed": "dist", "sharded": "sharded"}  # each stage's output folder under the smoke's workdir


def distributed_overrides(a, out: Path) -> list[str]:
    cuda = a.device.startswith("cuda")
    sets = {
        "distributed.num_workers": 2, "distributed.use_gpu": cuda, "distributed.zero_stage": 2,
        "distributed.resources_per_worker": json.dumps({"CPU": 2, "GPU": 1} if cuda else {"CPU": 1}),
        "distributed.storage_path": str(out / "ray"), "distributed.max_failures": 0,
        # the global batch: 1 concept + 1 preserved row per worker, as in the single-process run
        "train.batch_size": 2, "train.preserve_batch_size": 2,
        "train.device": "cuda" if cuda else "cpu",
    }
    return [f"{k}={v}" for k, v in sets.items()]


def run_dist(a, gpus: int, cuda: bool) -> bool:
    return a.distributed == "on" or (a.distributed == "auto" and (gpus >= 2 or not cuda))


def run_sharded(a, gpus: int, cuda: bool) -> bool:
    """The sharded stage: on with >= 2 GPUs; on a CPU only when asked (--sharded on: a second Ray Train run)."""
    return a.sharded == "on" or (a.sharded == "auto" and cuda and gpus >= 2)


def stage_overrides(a, name: str, workdir: Path) -> list[str]:
    """The 2-worker stages' overrides: `sharded` is `distributed` with the frozen backbone sharded (issue 23)."""
    extra = ["distributed.shard_backbone=true"] if name == "sharded" else []
    return distributed_overrides(a, workdir / STAGE_DIR[name]) + extra
