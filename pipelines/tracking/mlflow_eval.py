"""The eval stage's MLflow tracking: `MlflowEvalObserver` (an `eval.observer.EvalObserver`) and
`run_tracked_eval`, the eval stage with the observer its config asks for.

Logs into an explicit run id (`MlflowClient`, not the fluent API, which is per-process and
would not follow a run across Ray processes):

- While rows finish, a background thread logs each row's GIF previews (the generator never
  waits on the tracking server).
- At the end: every numeric summary entry as a metric (`<prefix><key>`, e.g.
  `eval/nudity_rate_erased`), tags naming the classifier, preset and threshold, and the
  artifacts `results.csv`, `summary.json`, `grid.gif`, `eval_config.json` under
  `<artifact_dir>/`; GIFs of resumed rows missing from the run are logged then too.

Without `mlflow.run_id` a new run is created in `mlflow.experiment` and finished at the end;
a given run is left as it was (its owner — e.g. a Tune trial — ends it).
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import IO, Any

from pipelines.tracking import mlflow_utils as mu
from unlearn.config import ConfigError

log = logging.getLogger(__name__)


def run_tracked_eval(cfg, output_dir: str | Path, prompts: str | Path | None = None, limit: int | None = None,
                     *, eraser: str | Path | None = None, mlflow_run_id: str | None = None,
                     progress: bool | None = None, progress_file: IO[str] | None = None, transformer=None) -> dict:
    """`eval.runner.run_eval`, logged to MLflow when `cfg.mlflow.tracking_uri` is set.

    mlflow_run_id overrides `cfg.mlflow.run_id` (the run to log into; None: a new run in
    `cfg.mlflow.experiment`, finished at the end). Every other argument is run_eval's.
    """
    from eval.runner import run_eval as run

    observer = MlflowEvalObserver(cfg.mlflow, mlflow_run_id or cfg.mlflow.run_id) if cfg.mlflow.tracking_uri else None
    return run(cfg, output_dir, prompts, limit, eraser=eraser, progress=progress, progress_file=progress_file,
               observer=observer, transformer=transformer)


class MlflowEvalObserver:
    """cfg: `eval.config.EvalMlflowConfig`; run_id: the run to log into (None: create one)."""

    def __init__(self, cfg, run_id: str | None):
        mu.check_reachable(cfg.tracking_uri)  # before the eval makes its folder: one line, in seconds
        self.cfg = cfg
        self.run_id = run_id
        self.created = False
        self.output_dir = Path(".")
        self.client = None
        self._q: queue.Queue = queue.Queue()
        self._logged: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="eval-mlflow", daemon=True)

    @property
    def gif_dir(self) -> str:
        return f"{self.cfg.artifact_dir}/gifs"

    def started(self, output_dir: Path) -> dict[str, Any]:
        from mlflow.exceptions import MlflowException

        self.output_dir = Path(output_dir)
        self.client = mu.client(self.cfg.tracking_uri)
        try:
            if self.run_id:
                self.client.get_run(self.run_id)
            else:
                exp_id = mu.get_or_create_experiment(self.client, self.cfg.experiment)
                self.run_id = self.client.create_run(exp_id, run_name=f"eval-{self.output_dir.name}").info.run_id
                self.created = True
        except MlflowException as exc:
            raise ConfigError(f"mlflow ({self.cfg.tracking_uri}): {' '.join(str(exc).split())}") from None
        self._thread.start()
        return {"mlflow_run_id": self.run_id}

    # --- per row, in the background ----------------------------------------------------------------
    def row(self, result: dict) -> None:
        self._q.put(result)

    def _row_files(self, result: dict) -> list[tuple[Path, str]]:
        out = []
        for which in ("base", "erased"):
            files = (result.get("files") or {}).get(which) or {}
            if self.cfg.log_gifs and files.get("gif"):
                out.append((self.output_dir / files["gif"], self.gif_dir))
            if self.cfg.log_videos and files.get("video"):
                out.append((self.output_dir / files["video"], f"{self.cfg.artifact_dir}/videos"))
        return out

    def _log_row(self, result: dict) -> None:
        for path, dest in self._row_files(result):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), dest)
                self._logged.add(f"{dest}/{path.name}")

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                self._log_row(item)
            except Exception as exc:  # noqa: BLE001 - previews must not fail the eval
                log.warning("MLflow: could not log previews of row %s: %s", item.get("id"), exc)
            finally:
                self._q.task_done()

    def _drain(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()

    # --- at the end ----------------------------------------------------------------------------
    def finished(self, summary: dict[str, Any], results: list[dict]) -> None:
        from eval.metrics import numeric_metrics
        from eval.temporal import curve_steps

        self._drain()
        # GIFs of rows finished by an earlier (interrupted) run that this run may not hold yet.
        missing = [(p, d) for r in results for p, d in self._row_files(r)
                   if f"{d}/{p.name}" not in self._logged and p.is_file()]
        if missing:
            try:
                have = {f.path for f in self.client.list_artifacts(self.run_id, self.gif_dir)}
            except Exception:  # noqa: BLE001
                have = set()
            for path, dest in missing:
                if f"{dest}/{path.name}" not in have:
                    self.client.log_artifact(self.run_id, str(path), dest)
        metrics = [(f"{self.cfg.metric_prefix}{k}", v, 0) for k, v in numeric_metrics(summary).items()
                   if k not in ("wall_seconds",)]
        # the per-frame concept curves (eval.temporal) as steps: step = frame index, one line per set and side
        metrics += [m for set_name, sides in (summary.get("frame_curves") or {}).items() for side, stats in sides.items()
                    for m in curve_steps(stats, f"{self.cfg.metric_prefix}frame_curve/{set_name}/{side}/")]
        tags = {"eval.classifier": str(summary.get("classifier", "")), "eval.output_dir": str(self.output_dir)}
        for k in ("nudenet_preset", "nudenet_threshold", "nudenet_frames"):
            if k in summary:
                tags[f"eval.{k}"] = str(summary[k])
        if summary.get("eraser"):
            tags["eval.eraser"] = str(summary["eraser"])
        mu.log_batch(self.client, self.run_id, metrics, tags)
        for name in ("results.csv", "eval_config.json", "grid.gif", "report.md", "report.html"):
            p = self.output_dir / name
            if p.is_file():
                self._log_file(p)

    def completed(self, summary_path: Path) -> None:
        self._log_file(summary_path)
        self._close(failed=False)

    def failed(self) -> None:
        self._close(failed=True)

    def _log_file(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), self.cfg.artifact_dir)

    def _close(self, failed: bool) -> None:
        self._drain()
        if self.created:
            mu.finish(self.client, self.run_id, "FAILED" if failed else "FINISHED")
