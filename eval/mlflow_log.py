"""MLflow logging of an eval run into an explicit run id (`MlflowClient`, not the fluent API,
which is per-process and would not follow a run across Ray processes).

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
import time
from pathlib import Path
from typing import Any

from unlearn.config import ConfigError

log = logging.getLogger(__name__)


class EvalMlflowLogger:
    def __init__(self, cfg, run_id: str | None, output_dir: str | Path):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
        self.created = False
        try:
            if run_id:
                self.client.get_run(run_id)
            else:
                exp = self.client.get_experiment_by_name(cfg.experiment)
                exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.experiment)
                run_id = self.client.create_run(exp_id, run_name=f"eval-{self.output_dir.name}").info.run_id
                self.created = True
        except MlflowException as exc:
            raise ConfigError(f"mlflow ({cfg.tracking_uri}): {exc}") from None
        self.run_id = run_id
        self._q: queue.Queue = queue.Queue()
        self._logged: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="eval-mlflow", daemon=True)
        self._thread.start()

    @property
    def gif_dir(self) -> str:
        return f"{self.cfg.artifact_dir}/gifs"

    # --- per row, in the background ----------------------------------------------------------------
    def log_row_async(self, result: dict) -> None:
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
    def log_final(self, summary: dict[str, Any], results: list[dict]) -> None:
        from mlflow.entities import Metric, RunTag

        from eval.metrics import numeric_metrics

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
        now = int(time.time() * 1000)
        metrics = [Metric(f"{self.cfg.metric_prefix}{k}", v, now, 0) for k, v in numeric_metrics(summary).items()
                   if k not in ("wall_seconds",)]
        tags = {"eval.classifier": str(summary.get("classifier", "")), "eval.output_dir": str(self.output_dir)}
        for k in ("nudenet_preset", "nudenet_threshold", "nudenet_frames"):
            if k in summary:
                tags[f"eval.{k}"] = str(summary[k])
        if summary.get("eraser"):
            tags["eval.eraser"] = str(summary["eraser"])
        run_tags = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, max(len(metrics), 1), 500):  # MLflow takes <= 1000 entities per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 500], tags=run_tags if i == 0 else [])
        for name in ("results.csv", "eval_config.json", "grid.gif"):
            p = self.output_dir / name
            if p.is_file():
                self.log_file(p)

    def log_file(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path), self.cfg.artifact_dir)

    def close(self, failed: bool = False) -> None:
        self._drain()
        if self.created:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
