"""The start-of-run memory check `t2vu train`, `tune` and `run` make on CUDA: the plan of the run about to start
(`pipelines.plan.memory_check`) and, when it will not fit, the table and the fix (`pipelines.plan.fixes`)."""

from __future__ import annotations

import logging
import sys

from pipelines.plan.fixes import find_fix, refusal
from pipelines.plan.memory_check import EXIT_WONT_FIT, make_request, plan_request, render
from pipelines.plan.memory_plan import GIB
from unlearn.config import ConfigError, EraserTrainingConfig


def preflight(method: EraserTrainingConfig, pipeline=None, *, mode: str, config_dir=None, stream=None,
              gpu_memory_gb: float | None = None) -> int | None:
    """Start-of-run check on CUDA: None to go on, EXIT_WONT_FIT after printing why not.
    `gpu_memory_gb`: the card's memory (default: the visible GPU's).

    Silent when the run fits (logged at INFO: `t2vu -v`), and when the plan cannot be made (a config
    error the run itself reports in its own words next, or no GPU visible to compare against)."""
    stream = stream or sys.stderr
    if mode == "train" and method.train.device in ("cpu", "meta"):
        return None
    if mode != "train" and not (pipeline is not None and pipeline.distributed.use_gpu and method.train.device not in ("cpu", "meta")):
        return None
    world = None if mode == "train" else pipeline.distributed.num_workers
    try:
        req = make_request(method, pipeline, config_dir=config_dir, mode=mode, world_size=world,
                           gpu_memory_gb=gpu_memory_gb)
        if req.capacity_bytes is None:  # e.g. a Ray driver without a GPU: nothing to compare against
            return None
        plan, arch = plan_request(req)
    except ConfigError:
        return None
    if plan.fits:
        logging.getLogger(__name__).info("memory plan: peak %.1f GB per GPU of %.1f GB (dominant: %s); details: t2vu plan",
                                         plan.peak_bytes / GIB, req.capacity_bytes / GIB, plan.dominant.name)
        return None
    print(render(plan, req, arch, "this run"), file=stream)
    print(f"error: {refusal(plan, find_fix(req, plan))}", file=stream, flush=True)
    return EXIT_WONT_FIT
