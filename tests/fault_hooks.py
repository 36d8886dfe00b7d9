"""Step hooks the distributed tests install into the training loop (`unlearn.loop.StepHook`, the
`step_hook` of `pipelines.train.driver.run_distributed`). Imported by the Ray Train workers (the driver's cwd,
the repo root, is on their sys.path), so it stays free of pytest and test fixtures."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def kill_worker_once(step: int, rank: int, *, at_rank: int, at_step: int, marker: str) -> None:
    """A real, abrupt worker death at (rank, step), once (the marker file remembers it).

    Waits until the last reported checkpoint is committed first: the controller registers
    reports asynchronously, and one still in flight when the worker dies is lost.
    """
    if rank != at_rank or step != at_step or os.path.exists(marker):
        return
    import ray.train

    ray.train.get_all_reported_checkpoints()
    Path(marker).write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)
