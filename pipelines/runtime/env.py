"""Process environment every entry point (the orchestration layer) sets before heavy imports.

Why: with no network, a hub lookup (e.g. a T5 tokenizer by hub id) retries for
~200 s and then silently returns a dummy tokenizer; telemetry of Ray/MLflow
tries to phone home. These defaults make every library fail fast and local.
`setdefault` keeps whatever the user exported explicitly.
"""

from __future__ import annotations

import glob
import os
import sys

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


# Device nodes of the accelerators DeepSpeed can use here (NVIDIA, AMD ROCm, Habana/other accel, Ascend).
ACCELERATOR_NODES = ("/dev/nvidia*", "/dev/kfd", "/dev/accel*", "/dev/davinci*")
_DETECTED: set[str] = set()  # variables set from this machine's hardware: never forwarded to other machines


def accelerator_env(nodes: tuple[str, ...] = ACCELERATOR_NODES) -> dict[str, str]:
    """DS_ACCELERATOR=cpu on a Linux machine with no accelerator device node, else nothing.

    Why: DeepSpeed picks its accelerator when imported and, finding none, prints "[WARNING]
    [real_accelerator.py] Setting accelerator to CPU ..." to stdout in every process that imports it (the
    CLI, each Ray worker). Saying cpu up front is what it would choose anyway, without the warning."""
    if not sys.platform.startswith("linux") or any(glob.glob(p) for p in nodes):
        return {}
    return {"DS_ACCELERATOR": "cpu"}


def apply_offline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Set the offline/telemetry variables and this machine's DeepSpeed accelerator (without overriding
    user values); return them."""
    env = dict(OFFLINE_ENV)
    if extra:
        env.update(extra)
    for key, value in accelerator_env().items():
        if key not in os.environ:
            os.environ[key] = value
            _DETECTED.add(key)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in env}


def runtime_env_vars() -> dict[str, str]:
    """The variables to forward to Ray workers / jobs (their env is not ours). DS_ACCELERATOR only when the
    user set it: a value detected here (a GPU-less head node) would put GPU workers on the CPU."""
    keys = list(OFFLINE_ENV) + ["DS_ACCELERATOR", "OMP_NUM_THREADS", "MLFLOW_TRACKING_URI"]
    return {k: os.environ[k] for k in keys if k in os.environ and k not in _DETECTED}
