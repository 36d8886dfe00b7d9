"""Orchestration: Ray Train + DeepSpeed trainers, Ray Tune searches, Ray Jobs submission, the `t2vu` CLI."""

import pipelines.runtime.env as _env

_env.apply_offline_env()
