"""A search's MLflow parent run never stays RUNNING after the command has ended (issue 26).

The parent run is opened early (before the trials) and ended FINISHED only at the very end of the search; a
failure in between (Tune itself, a baseline, collecting the results, the report) or a Ctrl-C left it RUNNING for
ever in the MLflow UI. `closes_search_parent` wraps the whole search: on any exception the parent run named in
the output folder (mlflow_utils.PARENT_ID_FILE) ends FAILED, or KILLED on Ctrl-C, with the error as its
`t2vu.error` tag; the exception then goes on as before. A rerun of the same command reopens the same parent.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

LOG = logging.getLogger(__name__)


def close_parent(tracking_uri: str, out: Path, exc: BaseException) -> str | None:
    """End the RUNNING parent run of the search in `out` as `exc` says; returns the status set (None: none)."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking.mlflow_utils import PARENT_ID_FILE, finish

    id_file = Path(out) / PARENT_ID_FILE
    if not id_file.is_file():
        return None  # the failure came before the parent run was opened
    run_id = id_file.read_text().strip()
    c = MlflowClient(tracking_uri)
    if c.get_run(run_id).info.status != "RUNNING":
        return None
    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    c.set_tag(run_id, "t2vu.error", (" ".join(str(exc).split()) or type(exc).__name__)[:4000])
    finish(c, run_id, status)
    return status


@contextlib.contextmanager
def closes_search_parent(cfg, out: str | Path):
    """cfg: `pipelines.config.pipeline.PipelineConfig` of the search writing to `out`."""
    try:
        yield
    except BaseException as exc:
        if cfg.mlflow.enabled:
            try:
                close_parent(cfg.mlflow.resolve_uri(Path(out).resolve()), Path(out).resolve(), exc)
            except Exception as err:  # the store itself may be what failed: the original error matters more
                LOG.warning("Could not end the MLflow parent run in %s: %s", out, err)
        raise
