"""Process environment every entry point (the orchestration layer) sets before heavy imports.

Why: with no network, a hub lookup (e.g. a T5 tokenizer by hub id) retries for
~200 s and then silently returns a dummy tokenizer; telemetry of Ray/MLflow
tries to phone home. These defaults make every library fail fast and local.
`setdefault` keeps whatever the user exported explicitly.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # MLflow honours only the string "true" here, not "1".
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_offline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Set the offline/telemetry variables (without overriding user values); return them."""
    env = dict(OFFLINE_ENV)
    if extra:
        env.update(extra)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in env}


def runtime_env_vars() -> dict[str, str]:
    """The variables to forward to Ray workers / jobs (their env is not ours)."""
    keys = list(OFFLINE_ENV) + ["DS_ACCELERATOR", "OMP_NUM_THREADS", "MLFLOW_TRACKING_URI"]
    return {k: os.environ[k] for k in keys if k in os.environ}
