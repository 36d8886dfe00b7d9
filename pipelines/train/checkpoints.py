"""The Ray Train checkpoint store of the one training loop, and exporting a run's final checkpoint.

`RayCheckpointStore` (`unlearn.loop.CheckpointStore`): the last checkpoint is `ray.train.get_checkpoint()`;
saving writes this rank's part into a temporary folder and reports it (`ray.train.report`, every rank:
Ray merges the ranks' folders into one checkpoint). The layout is the single-process trainer's
(`unlearn.checkpoint`): one ZeRO shard per rank under engine/, rank 0 adds eraser/ (gathered under
ZeRO-3), state.json and metrics.jsonl, every rank its manifest.

Every report carries a checkpoint: a Ray Train report is a barrier through the controller (~1 s on a
busy 2-core box), so the training curve goes to metrics.jsonl and MLflow instead, and Ray only sees
checkpoint / evaluation points.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from unlearn import checkpoint as ck
from unlearn.checkpoint import CheckpointIntegrityError, verify_manifest, write_manifest  # noqa: F401 - re-exported
from unlearn.fsutil import atomic_write_text


class RayCheckpointStore:
    def __init__(self, fallback: str | None = None):
        # a folder to start from while the Ray run has no checkpoint of its own (a stopped `t2vu train` run
        # continued with --distributed); read in place on shared storage, as Ray's own would be
        self.fallback = Path(fallback) if fallback else None

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield self.fallback
            return
        with ckpt.as_directory() as d:
            yield Path(d)

    def start(self, history: list[dict]) -> None:
        pass  # the curve travels in each checkpoint's metrics.jsonl (and to MLflow from rank 0)

    def log(self, row: dict) -> None:
        pass

    def save(self, step: int, write: Callable[[Path], dict]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory(prefix="t2vu-ckpt-") as tmp:
            metrics = write(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_{step:06d}")


def check_resumable(run_dir: Path) -> None:
    """Refuse, before any worker starts, a Ray Train run whose last checkpoint has an earlier layout
    (a worker would fail on it `max_failures` times over, each time with a traceback)."""
    folders = sorted(Path(run_dir).glob("checkpoint_*"))
    if folders:
        ck.read_state(folders[-1])


def export_result(result, out: Path) -> dict:
    """Copy the final eraser + training curve out of the last reported checkpoint into `out`."""
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {result.path} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = ck.export(Path(d), out)
    atomic_write_text(out / "checkpoint_path.txt", str(result.checkpoint.path) + "\n")
    return state
