"""What `run_eval` tells whoever watches it: the seam that keeps tracking out of the eval layer.

The eval stage never talks to a tracking server itself; a caller that wants one (the
orchestration layer: `pipelines.tracking.mlflow_eval.MlflowEvalObserver`) passes an `EvalObserver`
to `eval.runner.run_eval`. Calls come from the driver thread, in this order:

    started(output_dir)        once the rows are planned and eval_config.json is written
    row(result)                each finished row (must not block: generation waits on it)
    finished(summary, results) the final summary, before summary.json is written
    completed(summary_path)    summary.json is on disk: the eval succeeded
    failed()                   instead of completed, when the eval raised after started

`finished` comes before summary.json on purpose: callers treat an existing summary.json
as "stage done", so a tracking failure there must leave the stage to be redone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class EvalObserver(Protocol):
    def started(self, output_dir: Path) -> dict[str, Any]:
        """Returns entries to add to the summary (e.g. the tracking run's id); may raise ConfigError."""
        ...

    def row(self, result: dict) -> None: ...

    def finished(self, summary: dict[str, Any], results: list[dict]) -> None: ...

    def completed(self, summary_path: Path) -> None: ...

    def failed(self) -> None: ...
