"""Live MLflow logging from the rank-0 training worker into the trial's child run.

Tracking must never kill training: every failure is a warning and training goes on. What crosses from the
trial driver to the worker is the typed `TrialTracking` (tracking URI + run id), never a dict.
"""

from __future__ import annotations

import logging

from pipelines.tracking import mlflow_utils as mu
from pipelines.tracking.tracker import TrialTracking
from eval.metrics import is_number

LOG = logging.getLogger(__name__)


class MlflowLive:
    """Rank 0 logs the training curve into the trial's child run (explicit run id)."""

    def __init__(self, run: TrialTracking | None):
        if run is not None and not isinstance(run, TrialTracking):  # a caller's bug, not a tracking failure
            raise TypeError(f"MlflowLive takes a pipelines.tracking.tracker.TrialTracking or None, got {run!r}")
        self.client = None
        self.run_id = None
        self.logged_upto = 0
        if run is None:
            return
        try:
            self.client = mu.client(run.tracking_uri)
            self.run_id = run.run_id
            hist = self.client.get_metric_history(self.run_id, "loss")
            self.logged_upto = max((m.step for m in hist), default=0)  # no duplicates after a restart
        except Exception as exc:  # tracking must never kill training
            LOG.warning("MLflow live logging disabled: %s", exc)
            self.client = None

    def log(self, rows: list[dict]) -> None:
        """Training losses; steps at or below `logged_upto` were logged by an earlier attempt."""
        new = [r for r in rows if r["step"] > self.logged_upto]
        if self._send([(k, v, r["step"]) for r in new for k, v in r.items() if k != "step"]) and new:
            self.logged_upto = max(r["step"] for r in new)

    def log_eval(self, step: int, metrics: dict) -> None:
        """Proxy/final objective values, as `objective/<name>` at the training step (the eval stage itself logs `eval/*`)."""
        skip = {"train_step", "steps_per_s"} | set(self._train_keys)
        self._send([(f"objective/{k}", v, step) for k, v in metrics.items() if is_number(v) and k not in skip])

    _train_keys = ("loss", "l_unlearn", "l_preserve", "l_localize", "mask_fraction")

    def _send(self, items: list[tuple[str, float, int]]) -> bool:
        if self.client is None or not items:
            return False
        try:
            mu.log_batch(self.client, self.run_id, items)
            return True
        except Exception as exc:  # tracking must never kill training
            LOG.warning("MLflow logging failed (training continues): %s", exc)
            return False
